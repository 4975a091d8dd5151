"""Submit, look at and cancel jobs: the one entry point every caller uses.

The REST gateway, the Gradio UI, the CLI, batch flows and the routed `<flow>/fleet` deployments
all come through here. A request is validated against its workflow contract before anything is
written (a `ParamError` names the parameter and what is allowed; an unknown workflow raises
`UnknownWorkflowError`), quotas are checked in the same transaction that writes the `queued` job,
and the dispatcher (comfyfleet.fleet.dispatcher) takes it from there.

Calls are synchronous (SQLAlchemy); async callers run them with `asyncio.to_thread`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from comfyfleet import bell
from comfyfleet.auth import Principal
from comfyfleet.catalog import Catalog, ParamError, Workflow
from comfyfleet.jobs.inputs import REF_PREFIX, InputError, InputStore
from comfyfleet.settings import Settings, get_settings
from comfyfleet.store import (
    TERMINAL_JOB_STATUSES,
    Database,
    NotFound,
    check_quota,
    create_job,
    get_job,
    job_to_dict,
    list_jobs,
    request_cancel,
)
from comfyfleet.store.models import Job

Priority = Literal["high", "normal", "low"]

# The bundled workflow each generation type runs unless the request names another.
DEFAULT_WORKFLOWS = {
    "text_to_image": "sd15-basic",
    "text_to_image_sdxl": "sdxl-basic",
    "image_to_video": "svd-basic",
    "image_to_image": "sd15-img2img",
}


class JobRequest(BaseModel):
    """What a caller asks for."""

    model_config = ConfigDict(extra="forbid")

    workflow: str = Field(description="Catalog workflow id, e.g. sd15-basic.")
    params: dict[str, Any] = Field(default_factory=dict)
    priority: Priority = "normal"
    webhook_url: str | None = Field(default=None, max_length=2000)
    pinned_node: str | None = Field(default=None, description="Run only on this node.")
    batch_id: str | None = None
    parent_run: str | None = Field(
        default=None, description="The Prefect flow run queuing it (routed and batch runs)."
    )


def load_catalog(settings: Settings | None = None) -> Catalog:
    """The workflow catalog as configured: workflow_dirs, fleet defaults and the model map."""
    settings = settings or get_settings()
    return Catalog.load(
        settings.workflow_dirs,
        fleet_defaults=settings.defaults,
        model_map=settings.models,
        ceilings=settings.limits.ceilings(),
    )


_catalog: tuple[tuple[Any, ...], Catalog] | None = None


def _sources_signature(sources: list[Path]) -> tuple[Any, ...]:
    """What the catalog was read from, as (path, mtime, size) of every file: cheap to compute."""
    seen = []
    for source in sources:
        paths = sorted(Path(source).rglob("*")) if Path(source).is_dir() else [Path(source)]
        for path in paths:
            try:
                st = path.stat()
            except OSError:
                continue
            seen.append((str(path), st.st_mtime_ns, st.st_size))
    return tuple(seen)


def load_workflow(workflow: str) -> Workflow:
    """The workflow from the catalog, read once per process and again when a file changes
    (reading every contract costs ~20 ms: too much to do for every attempt)."""
    global _catalog
    settings = get_settings()
    signature = _sources_signature([Path(p) for p in settings.workflow_dirs])
    if _catalog is None or _catalog[0] != signature:
        _catalog = (signature, load_catalog(settings))
    return _catalog[1].get(workflow)


def submit(
    db: Database, request: JobRequest, *, principal: Principal, catalog: Catalog | None = None,
    inputs: InputStore | None = None,
) -> Job:  # fmt: skip
    """Validate and queue a job; returns it (`queued`). Nothing is written if validation fails.

    `catalog` and `inputs` default to the process settings' workflow catalog and input store."""
    catalog = catalog or load_catalog()
    workflow = catalog.get(request.workflow)
    params = workflow.validate(request.params)
    _check_inputs(workflow, params, inputs or InputStore(get_settings().store.inputs_dir))

    def write(session: Any) -> Job:
        user, client = charged(session, principal)
        return create_job(
            session,
            workflow=workflow.id,
            capability=workflow.capability,
            params=params,
            request=dict(request.params),
            owner=user,
            client=client,
            priority=request.priority,
            pinned_node=request.pinned_node,
            webhook_url=request.webhook_url,
            batch_id=request.batch_id,
            parent_run=request.parent_run,
        )

    job = db.run(write)
    bell.ring(bell.bell_dir(str(db.url)), bell.DISPATCH)
    return job


def charged(session: Any, principal: Principal) -> tuple[Any, Any]:
    """The caller's user and client in this transaction, once their quotas allow one more job
    (QuotaExceeded otherwise): call it in the transaction that writes the job."""
    user = session.merge(principal.user, load=False)
    client = session.merge(principal.client, load=False) if principal.client is not None else None
    check_quota(session, user=user, client=client)
    return user, client


def _check_inputs(workflow: Workflow, params: dict[str, Any], store: InputStore) -> None:
    """Stored inputs a job names (`comfyfleet/<sha256>.<ext>`) must exist before it is queued;
    a node that loads one image gets a one-frame image; an upscale's result stays within the
    fleet's `limits.max_output_pixels` (input pixels x `scale_by`^2)."""
    for name, spec in workflow.parameters.items():
        value = params.get(name)
        if spec.type == "image" and isinstance(value, str) and value.startswith(REF_PREFIX):
            try:
                stored = store.resolve(value)
            except InputError:
                raise ParamError(
                    param=name,
                    workflow=workflow.id,
                    message=f"unknown input {value!r}: upload the image first",
                ) from None
            check_image(workflow, name, params, stored.path)


def check_image(workflow: Workflow, name: str, params: dict[str, Any], image: Path | bytes) -> None:
    """The image for parameter `name` suits the workflow: one frame where the graph loads one
    image, and an upscale of it within `limits.max_output_pixels` (ParamError otherwise)."""
    frames, size = _image_facts(image)
    if frames > 1 and workflow.loads_single_image(name):
        raise ParamError(
            param=name,
            workflow=workflow.id,
            message=f"an animated image of {frames} frames; this workflow loads one "
            "image: send a single frame (PNG, JPEG, or a one-frame GIF/WEBP)",
        )
    _check_output_pixels(workflow, params, size)


def _image_facts(image: Path | bytes) -> tuple[int, tuple[int, int] | None]:
    """(frames, (width, height)) of an image; (1, None) when Pillow cannot tell."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as img:
            return int(getattr(img, "n_frames", 1)), img.size
    except Exception:  # the gateway checked the file when it was stored
        return 1, None


def _check_output_pixels(
    workflow: Workflow, params: dict[str, Any], size: tuple[int, int] | None
) -> None:
    limit = workflow.ceilings.get("output_pixels")
    if size is None or limit is None:
        return
    for name, spec in workflow.parameters.items():
        if spec.type == "float" and any(t.input == "scale_by" for t in spec.targets):
            scale = float(params.get(name) or 1.0)
            pixels = size[0] * size[1] * scale * scale
            if pixels > limit:
                raise ParamError(
                    param=name,
                    workflow=workflow.id,
                    message=f"{size[0]}x{size[1]} x {scale:g} gives {pixels / 1e6:.1f} Mpx; "
                    f"this fleet allows at most {limit / 1e6:.1f} Mpx per output "
                    "(limits.max_output_pixels)",
                )


def get(db: Database, job_id: str, *, principal: Principal | None = None) -> Job:
    """The job with its attempts and outputs; users see their own jobs only, admins all."""
    owner_id = None if principal is None or principal.is_admin else principal.user_id
    job = db.run(
        lambda s: get_job(s, job_id=job_id, owner_id=owner_id, with_details=True), readonly=True
    )
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def list_for(
    db: Database, *, principal: Principal, all_users: bool = False, **filters: Any
) -> list[Job]:
    """A user's jobs, newest first (admins may ask for everyone's with `all_users`).

    `filters`: status, capability, workflow, batch_id, since, until, limit, offset."""
    owner_id = None if all_users and principal.is_admin else principal.user_id
    return db.run(lambda s: list_jobs(s, owner_id=owner_id, **filters), readonly=True)


def cancel(db: Database, job_id: str, *, principal: Principal | None = None) -> Job:
    """Cancel a job: a queued one never runs; a running one is interrupted on its node."""
    get(db, job_id, principal=principal)  # existence and ownership
    db.run(lambda s: request_cancel(s, job_id=job_id))
    bell.ring(bell.bell_dir(str(db.url)), bell.WORK)  # the shift holding it stops it
    return get(db, job_id, principal=principal)


def wait(
    db: Database, job_id: str, *, timeout: float, principal: Principal | None = None,
    poll_s: float = 0.25,
) -> Job:  # fmt: skip
    """Block until the job ends or `timeout` passes; returns the job as it is then."""
    deadline = time.monotonic() + timeout
    while True:
        job = get(db, job_id, principal=principal)
        if job.status in TERMINAL_JOB_STATUSES or time.monotonic() >= deadline:
            return job
        time.sleep(poll_s)


def as_json(job: Job, *, output_url: Any = None) -> dict[str, Any]:
    """The REST job JSON (CONVENTIONS.md)."""
    return job_to_dict(job, output_url=output_url)
