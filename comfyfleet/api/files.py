"""Files and catalog: job outputs (owner or admin), input uploads, the workflow catalog.

Output files are looked up by (job, name) in the job store, never by a path from the request, and
the stored path must lie inside `store.outputs_dir` (a row pointing elsewhere is refused and
logged), so a download cannot escape the store.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import tempfile
import zipfile
from typing import Annotated

from fastapi import APIRouter, File, Path, Request, UploadFile
from fastapi.responses import FileResponse, StreamingResponse

from comfyfleet import jobs
from comfyfleet.api.deps import CurrentUser, CurrentUserOrQuery, Gateway, GatewayDep
from comfyfleet.api.errors import ERROR_RESPONSES, ApiError
from comfyfleet.api.images import (
    CONTENT_TYPES,
    INPUT_NAME_PATTERN,
    INPUTS_PATH,
    is_stored,
    store_image,
)
from comfyfleet.api.schemas import InputOut, WorkflowOut
from comfyfleet.catalog import UnknownWorkflowError, Workflow
from comfyfleet.store.models import Job, Output

log = logging.getLogger(__name__)
router = APIRouter(responses=ERROR_RESPONSES)
_FILE = {200: {"content": {"application/octet-stream": {}}, "description": "The file."}}


def output_path(outputs_dir: pathlib.Path, output: Output) -> pathlib.Path:
    """The file of an output row, guaranteed inside the output store (else NotFound-ish)."""
    root = pathlib.Path(outputs_dir).resolve()
    path = pathlib.Path(output.path)
    if not path.is_absolute():
        path = root / path
    path = path.resolve()
    if not path.is_relative_to(root):
        log.error(
            "output %s of job %s points outside the store: %s", output.name, output.job_id, path
        )
        raise ApiError(404, "not_found", f"output {output.name!r} is not in the output store")
    if not path.is_file():
        raise ApiError(404, "not_found", f"output {output.name!r} is missing from the store")
    return path


@router.get(
    "/api/v2/tasks/{job_id}/outputs/{name}",
    tags=["tasks"],
    response_class=FileResponse,
    responses=_FILE,
)
def download_output(
    job_id: str, name: str, gateway: GatewayDep, principal: CurrentUserOrQuery
) -> FileResponse:
    """One output file of a job (its owner or an admin)."""
    job = jobs.get(gateway.db, job_id, principal=principal)
    found = output_file(gateway, job, name, filename=True)
    if found is None:
        raise ApiError(404, "not_found", f"job {job_id} has no output {name!r}", field="name")
    return found


def output_file(
    gateway: Gateway, job: Job, name: str, *, filename: bool = False
) -> FileResponse | None:
    """The job's output `name` as a response (None if it has none of that name); `filename`:
    sent as an attachment under its name."""
    for output in job.outputs:
        if output.name == name:
            path = output_path(gateway.settings.store.outputs_dir, output)
            return FileResponse(path, media_type=output.content_type,
                                filename=output.name if filename else None)  # fmt: skip
    return None


def input_file(gateway: Gateway, name: str) -> FileResponse | None:
    """The uploaded input `name` (a content-hash name) as a response (None if there is none)."""
    if not is_stored(gateway.inputs, name):
        return None
    path = gateway.inputs.root / name
    return FileResponse(path, media_type=CONTENT_TYPES.get(path.suffix, "application/octet-stream"))


@router.get("/api/v2/tasks/{job_id}/download", tags=["tasks"], responses=_FILE)
def download_task(job_id: str, gateway: GatewayDep, principal: CurrentUserOrQuery) -> object:
    """The old service's download: the output file, or a zip when the job made several."""
    job = jobs.get(gateway.db, job_id, principal=principal)
    if not job.outputs:
        raise ApiError(404, "not_found", f"job {job_id} has no outputs (it is {job.status})")
    root = gateway.settings.store.outputs_dir
    if len(job.outputs) == 1:
        output = job.outputs[0]
        return FileResponse(
            output_path(root, output), media_type=output.content_type, filename=output.name
        )
    spool = tempfile.SpooledTemporaryFile(max_size=32 * 1024 * 1024)
    with zipfile.ZipFile(spool, "w", zipfile.ZIP_STORED) as archive:
        for output in job.outputs:
            archive.write(output_path(root, output), arcname=output.name)
    spool.seek(0)

    def chunks():  # type: ignore[no-untyped-def]
        try:
            while block := spool.read(1 << 20):
                yield block
        finally:
            spool.close()

    return StreamingResponse(
        chunks(),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{job_id}.zip"'},
    )


@router.post("/api/v2/inputs", tags=["inputs"], response_model=InputOut, status_code=201)
async def upload_input(
    gateway: GatewayDep,
    principal: CurrentUser,
    request: Request,
    file: Annotated[UploadFile, File(description="An image (PNG, JPEG, WEBP, GIF, BMP).")],
) -> InputOut:
    """Upload an input image; pass the returned `ref` as the image parameter of a task."""
    data = await file.read()
    stored = await asyncio.to_thread(store_image, gateway.inputs, data, field="file")
    suffix = stored.path.suffix
    return InputOut(
        ref=stored.ref,
        url=f"{str(request.base_url).rstrip('/')}{INPUTS_PATH}{stored.name}",
        sha256=stored.sha256,
        size=len(data),
        content_type=CONTENT_TYPES[suffix],
    )


@router.get("/api/v2/inputs/{name}", tags=["inputs"], response_class=FileResponse, responses=_FILE)
def get_input(
    name: Annotated[str, Path(pattern=INPUT_NAME_PATTERN)],
    gateway: GatewayDep,
    principal: CurrentUserOrQuery,
) -> FileResponse:
    """An uploaded input image (by its content-hash name)."""
    found = input_file(gateway, name)
    if found is None:
        raise ApiError(404, "not_found", f"no uploaded input {name!r}", field="name")
    return found


def workflow_out(workflow: Workflow) -> WorkflowOut:
    return WorkflowOut(
        id=workflow.id,
        capability=workflow.capability,
        title=workflow.title,
        description=workflow.description or "",
        parameters=workflow.json_schema(),
        models=workflow.required_models,
    )


@router.get("/api/v2/workflows", tags=["workflows"], response_model=list[WorkflowOut])
def list_workflows(gateway: GatewayDep, principal: CurrentUser) -> list[WorkflowOut]:
    """The catalog: each workflow with the JSON schema of its parameters."""
    return [workflow_out(w) for w in sorted(gateway.catalog, key=lambda w: w.id)]


@router.get("/api/v2/workflows/{workflow_id}", tags=["workflows"], response_model=WorkflowOut)
def get_workflow(workflow_id: str, gateway: GatewayDep, principal: CurrentUser) -> WorkflowOut:
    """One workflow and its parameter schema."""
    try:
        return workflow_out(gateway.catalog.get(workflow_id))
    except UnknownWorkflowError as exc:
        raise ApiError(404, "not_found", str(exc), field="workflow_id") from None
