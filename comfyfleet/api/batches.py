"""Batch routes: `POST /api/v2/batches` (one job per item, all validated before any is queued)
and `GET /api/v2/batches/{batch_id}` (its jobs and how many are in each status).

The same batches as the batch flow's (flows/batch.py) and `POST /api/v2/tasks/batch` (one job per
prompt): jobs that share a `batch_id`. `comfyfleet batch submit|show` calls these.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from comfyfleet import jobs
from comfyfleet.api.deps import CurrentUser, GatewayDep
from comfyfleet.api.errors import ERROR_RESPONSES, ApiError
from comfyfleet.api.schemas import (
    MAX_BATCH_ITEMS,
    BatchCreate,
    BatchOut,
    BatchStatusOut,
    JobOut,
)
from comfyfleet.api.tasks import (
    SUBMIT_RESPONSES,
    find_workflow,
    output_url_for,
    queue_batch,
    resolve_images,
)
from comfyfleet.catalog import ParamError
from comfyfleet.store import TERMINAL_JOB_STATUSES, list_jobs

router = APIRouter(tags=["batches"], responses=ERROR_RESPONSES)

BatchId = Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


@router.post(
    "/api/v2/batches",
    status_code=202,
    response_model=BatchOut,
    responses={429: SUBMIT_RESPONSES[429]},
)
async def create_batch(
    body: BatchCreate, gateway: GatewayDep, principal: CurrentUser, request: Request
) -> BatchOut:
    """One job of `workflow` per item; a bad item is a 422 naming it (`items[3].steps`) and
    queues nothing."""
    workflow = await asyncio.to_thread(
        find_workflow, gateway, body.workflow, capability=None, field="workflow"
    )
    params = [{**body.defaults, **item} for item in body.items]
    for index, item in enumerate(params):
        try:
            workflow.validate(resolve_images(gateway, workflow, item))
        except ParamError as exc:
            field = f"items[{index}]" + (f".{exc.param}" if exc.param else "")
            raise ApiError(422, "invalid_parameter", f"{field}: {exc}", field=field) from None
    return await queue_batch(gateway, principal, request, workflow, params, body)


@router.get("/api/v2/batches/{batch_id}", response_model=BatchStatusOut)
def show_batch(
    batch_id: BatchId, gateway: GatewayDep, principal: CurrentUser, request: Request
) -> BatchStatusOut:
    """The batch's jobs (yours; an admin sees anyone's), oldest first, with counts per status."""
    owner_id = None if principal.is_admin else principal.user_id

    def run(session: Any) -> list[JobOut]:
        rows = list_jobs(
            session, batch_id=batch_id, owner_id=owner_id, limit=MAX_BATCH_ITEMS,
            with_details=True, oldest_first=True,
        )  # fmt: skip
        url = output_url_for(request)
        return [JobOut.model_validate(jobs.as_json(j, output_url=url)) for j in rows]

    found = gateway.db.run(run, readonly=True)
    if not found:
        raise ApiError(404, "not_found", f"batch_id: no batch {batch_id!r}", field="batch_id")
    counts = Counter(j.status for j in found)
    return BatchStatusOut(
        batch_id=batch_id,
        total=len(found),
        counts=dict(sorted(counts.items())),
        done=all(j.status in TERMINAL_JOB_STATUSES for j in found),
        jobs=found,
    )
