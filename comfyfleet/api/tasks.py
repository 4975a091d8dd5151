"""Task routes: submit (async 202 or `?wait=true`), the old service's paths, list, show, cancel.

Every submission goes through `comfyfleet.jobs.submit` (the same path as the UI and the CLI):
the parameters are checked against the workflow contract before anything is written, and a bad
one is a 422 naming it. The old service's bodies are kept: flat parameters
(`{"prompt", "width", …, "workflow_name": "sdxl_basic"}`), `duration` × `fps` = frames for
image-to-video, `image_path` for its input image.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response

from comfyfleet import jobs
from comfyfleet.api.deps import CurrentUser, Gateway, GatewayDep
from comfyfleet.api.errors import ERROR_RESPONSES, ApiError, ErrorBody
from comfyfleet.api.images import inline_image, resolve_image
from comfyfleet.api.schemas import (
    BatchOut,
    BatchRequest,
    ComfyErrorBody,
    JobOut,
    JobPage,
    SubmittedJob,
    TaskRequest,
)
from comfyfleet.auth import Principal
from comfyfleet.catalog import ParamError, UnknownWorkflowError, Workflow
from comfyfleet.fleet import state as fleet_state
from comfyfleet.jobs.graphs import submit_graph
from comfyfleet.jobs.webhooks import deliver_job_event, ensure_secret, scope_of, validate_url
from comfyfleet.store import TERMINAL_JOB_STATUSES, count_jobs, list_jobs
from comfyfleet.store.models import Job

router = APIRouter(tags=["tasks"], responses=ERROR_RESPONSES)

SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": SubmittedJob, "description": "`?wait=true` and the job ended in time."},
    429: {"model": ErrorBody, "description": "A quota refuses new jobs now."},
}
LEGACY_WORKFLOWS = {
    "sd_basic": "sd15-basic",
    "sd15_basic": "sd15-basic",
    "sdxl_basic": "sdxl-basic",
    "image_to_video_basic": "svd-basic",
    "svd_basic": "svd-basic",
}


MAX_WAIT_S = 600.0

WaitQuery = Annotated[bool, Query(description="Block until the job ends (or `timeout`).")]
TimeoutQuery = Annotated[float, Query(gt=0, le=MAX_WAIT_S, description="Seconds to wait.")]


def output_url_for(request: Request) -> Callable[[str, str], str]:
    base = str(request.base_url).rstrip("/")

    def url(job_id: str, name: str) -> str:
        return f"{base}/api/v2/tasks/{job_id}/outputs/{quote(name)}"

    return url


def job_out(job: Job, request: Request) -> JobOut:
    return JobOut.model_validate(jobs.as_json(job, output_url=output_url_for(request)))


def find_workflow(
    gateway: Gateway, name: str | None, *, capability: str | None, field: str
) -> Workflow:
    if capability is not None and not name:
        name = jobs.DEFAULT_WORKFLOWS[capability]
    assert name is not None
    name = LEGACY_WORKFLOWS.get(name, name)
    try:
        workflow = gateway.catalog.get(name)
    except UnknownWorkflowError as exc:
        alt = name.replace("_", "-")
        if alt == name or alt not in gateway.catalog:
            raise ApiError(
                422, "unknown_workflow", f"{field}: {exc}", field=field, detail={"known": exc.known}
            ) from None
        workflow = gateway.catalog.get(alt)
    if capability is not None and workflow.capability != capability:
        raise ApiError(
            422,
            "wrong_capability",
            f"{field}: {workflow.id!r} is a {workflow.capability} workflow; this endpoint runs "
            f"{capability} (use POST /api/v2/tasks for any workflow)",
            field=field,
        )
    return workflow


def resolve_images(gateway: Gateway, workflow: Workflow, params: dict[str, Any]) -> dict:
    """Image parameters → input refs; an image given inline is checked against the workflow
    (one frame where it loads one, the output-pixel ceiling) before anything is stored."""
    out = dict(params)
    for name, spec in workflow.parameters.items():
        if spec.type == "image" and out.get(name) is not None:
            if isinstance(out[name], str) and (data := inline_image(out[name], field=name)):
                jobs.check_image(workflow, name, params, data)
            out[name] = resolve_image(gateway.inputs, out[name], field=name)
    return out


async def queue_batch(
    gateway: Gateway, principal: Principal, request: Request, workflow: Workflow,
    items: list[dict[str, Any]], body: Any,
) -> BatchOut:  # fmt: skip
    """Queue one job per (validated) parameter set under one new batch id; `body` gives the
    priority, webhook and pinned node they share."""
    batch_id = uuid.uuid4().hex
    out = []
    for params in items:
        job, secret = await asyncio.to_thread(
            submit_job, gateway, principal, workflow, params, priority=body.priority,
            webhook_url=body.webhook_url, pinned_node=body.pinned_node, batch_id=batch_id,
        )  # fmt: skip
        data = jobs.as_json(job, output_url=output_url_for(request))
        out.append(SubmittedJob(**data, task_id=job.id, webhook_secret=secret))
    return BatchOut(batch_id=batch_id, jobs=out)


def submit_job(
    gateway: Gateway,
    principal: Principal,
    workflow: Workflow,
    params: dict[str, Any],
    *,
    priority: str = "normal",
    webhook_url: str | None = None,
    pinned_node: str | None = None,
    batch_id: str | None = None,
) -> tuple[Job, str | None]:
    """Validate, store input images, queue; (job, webhook secret if created now)."""
    if webhook_url is not None:
        validate_url(webhook_url, policy=gateway.webhook_policy())
    params = resolve_images(gateway, workflow, params)
    request = jobs.JobRequest(
        workflow=workflow.id,
        params=params,
        priority=priority,
        webhook_url=webhook_url,
        pinned_node=pinned_node,
        batch_id=batch_id,
    )
    job = jobs.submit(gateway.db, request, principal=principal, catalog=gateway.catalog)
    secret = ensure_secret(gateway.db, scope=scope_of(job)) if webhook_url else None
    return job, secret


def submit_graph_job(
    gateway: Gateway, principal: Principal, graph: dict[str, Any], *, priority: str = "normal",
    webhook_url: str | None = None,
) -> tuple[Job, str | None]:  # fmt: skip
    """Check and queue a raw graph; (job, webhook secret if created now)."""
    if webhook_url is not None:
        validate_url(webhook_url, policy=gateway.webhook_policy())
    job, _ = submit_graph(
        gateway.db, graph, principal=principal, settings=gateway.settings, inputs=gateway.inputs,
        inventories=fleet_state.healthy_inventories(gateway.settings), priority=priority,
        webhook_url=webhook_url,
    )  # fmt: skip
    secret = ensure_secret(gateway.db, scope=scope_of(job)) if webhook_url else None
    return job, secret


async def respond(
    gateway: Gateway,
    request: Request,
    response: Response,
    principal: Principal,
    job: Job,
    secret: str | None,
    *,
    wait: bool,
    timeout: float,
) -> SubmittedJob:
    response.headers["Location"] = f"/api/v2/tasks/{job.id}"
    if wait:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while job.status not in TERMINAL_JOB_STATUSES and loop.time() < deadline:
            await asyncio.sleep(min(0.25, max(deadline - loop.time(), 0.01)))
            job = await asyncio.to_thread(jobs.get, gateway.db, job.id, principal=principal)
    # The job as accepted, or as the last look saw it: nothing more to read back.
    response.status_code = 200 if job.status in TERMINAL_JOB_STATUSES and wait else 202
    body = jobs.as_json(job, output_url=output_url_for(request))
    return SubmittedJob(**body, task_id=job.id, webhook_secret=secret)


@router.post(
    "/api/v2/tasks",
    status_code=202,
    response_model=SubmittedJob,
    responses={
        **SUBMIT_RESPONSES,
        400: {
            "model": ComfyErrorBody,
            "description": "A raw graph refused, in ComfyUI's shape (its POST /prompt).",
        },
    },
)
async def submit_task(
    body: TaskRequest,
    gateway: GatewayDep,
    principal: CurrentUser,
    request: Request,
    response: Response,
    wait: WaitQuery = False,
    timeout: TimeoutQuery = 60.0,
) -> SubmittedJob:
    """Any catalog workflow with its parameters, or a raw ComfyUI graph (`graph`: needs the
    `raw_graphs` permission; refused with ComfyUI's own 400 when no healthy node can run it).
    202 + the job (poll it, or follow its events)."""
    if body.graph is not None:
        job, secret = await asyncio.to_thread(
            submit_graph_job, gateway, principal, body.graph, priority=body.priority,
            webhook_url=body.webhook_url,
        )  # fmt: skip
        return await respond(
            gateway, request, response, principal, job, secret, wait=wait, timeout=timeout
        )
    assert body.workflow is not None
    workflow = await asyncio.to_thread(
        find_workflow, gateway, body.workflow, capability=None, field="workflow"
    )
    job, secret = await asyncio.to_thread(
        submit_job,
        gateway,
        principal,
        workflow,
        body.params,
        priority=body.priority,
        webhook_url=body.webhook_url,
        pinned_node=body.pinned_node,
        batch_id=body.batch_id,
    )
    return await respond(
        gateway, request, response, principal, job, secret, wait=wait, timeout=timeout
    )


@router.post(
    "/api/v2/tasks/batch",
    status_code=202,
    response_model=BatchOut,
    responses={429: SUBMIT_RESPONSES[429]},
)
async def submit_batch(
    body: BatchRequest, gateway: GatewayDep, principal: CurrentUser, request: Request
) -> BatchOut:
    """One job per prompt, same workflow and parameters, grouped under a batch id."""
    workflow = find_workflow(gateway, body.workflow, capability=None, field="workflow")
    if "prompt" not in workflow.parameters:
        raise ApiError(
            422, "invalid_request", f"workflow: {workflow.id!r} takes no prompt", field="workflow"
        )
    for i, prompt in enumerate(body.prompts):  # validate all before queueing any
        try:
            workflow.validate(resolve_images(gateway, workflow, {**body.params, "prompt": prompt}))
        except ParamError as exc:
            raise ApiError(
                422,
                "invalid_parameter",
                f"prompts[{i}]: {exc}",
                field=f"prompts[{i}]" if exc.param == "prompt" else exc.param,
            ) from None
    items = [{**body.params, "prompt": prompt} for prompt in body.prompts]
    return await queue_batch(gateway, principal, request, workflow, items, body)


@router.get("/api/v2/tasks", response_model=JobPage)
def list_tasks(
    gateway: GatewayDep,
    principal: CurrentUser,
    request: Request,
    status: Annotated[
        str | None, Query(pattern="^(queued|dispatched|running|completed|failed|cancelled)$")
    ] = None,
    workflow: Annotated[str | None, Query(max_length=128)] = None,
    capability: Annotated[str | None, Query(max_length=64)] = None,
    batch_id: Annotated[str | None, Query(max_length=64)] = None,
    all: Annotated[bool, Query(description="Admins: everyone's jobs.")] = False,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> JobPage:
    """Your jobs, newest first (admins may ask for everyone's with `all=true`)."""
    owner_id = None if (all and principal.is_admin) else principal.user_id
    filters = dict(
        owner_id=owner_id,
        status=status,
        workflow=workflow,
        capability=capability,
        batch_id=batch_id,
    )

    def run(session: Any) -> JobPage:
        rows = list_jobs(session, limit=limit, offset=offset, with_details=True, **filters)
        total = count_jobs(session, **filters)
        url = output_url_for(request)
        items = [JobOut.model_validate(jobs.as_json(j, output_url=url)) for j in rows]
        return JobPage(items=items, total=total, limit=limit, offset=offset)

    return gateway.db.run(run, readonly=True)


@router.get("/api/v2/tasks/{job_id}", response_model=JobOut)
def get_task(job_id: str, gateway: GatewayDep, principal: CurrentUser, request: Request) -> JobOut:
    """A job: status, progress, node, attempts, outputs (yours, or any for admins); while it is
    queued, its position in the backlog and the fleet's free slots."""
    out = job_out(jobs.get(gateway.db, job_id, principal=principal), request)
    if out.status == "queued" and gateway.queue is not None:
        queue = gateway.queue.snapshot()
        out.position, out.free_slots = queue.position(out.id), queue.free_slots
    return out


@router.delete(
    "/api/v2/tasks/{job_id}",
    response_model=JobOut,
    responses={409: {"model": ErrorBody, "description": "The job has ended."}},
)
async def cancel_task(
    job_id: str, gateway: GatewayDep, principal: CurrentUser, request: Request
) -> JobOut:
    """Cancel a job: a queued one never runs; a running one is interrupted on its node."""
    job = await asyncio.to_thread(jobs.get, gateway.db, job_id, principal=principal)
    if job.status in ("completed", "failed"):
        raise ApiError(409, "conflict", f"job {job_id} has already {job.status}", field="job_id")
    job = await asyncio.to_thread(jobs.cancel, gateway.db, job_id, principal=principal)
    if job.status == "cancelled" and job.webhook_url:
        policy = await asyncio.to_thread(gateway.webhook_policy)
        gateway.spawn(
            deliver_job_event(
                job.id,
                db=gateway.db,
                schedule=gateway.webhook_schedule,
                base_url=str(request.base_url),
                policy=policy,
            )
        )
    return job_out(job, request)
