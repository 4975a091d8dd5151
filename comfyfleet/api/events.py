"""`GET /api/v2/tasks/{id}/events`: a job's life as Server-Sent Events.

A (re)connecting client first gets the current state (`status` with the full job JSON), then:
- `progress` `{value, max, node}`: live step progress from the Prefect events of the job
  (`comfy.progress` on `comfy.job.<id>`), and from the job row when that moves on its own;
- `status` (job JSON) whenever status or node changes (read from the job store);
- `preview` `{job_id, image}` (a `data:image/jpeg;base64,…` URL, at most 256 px): the latest
  sampler preview while the job runs (comfyfleet.jobs.previews; read from the output store at
  each poll, so at most 2 a second);
- other `comfy.*` events the flows emit for the job, passed through by name;
- at the end: `outputs` `{outputs: [...]}` (completed) or `error` `{error}` (failed), then
  `end` `{status}`, and the stream closes.
Event ids count up within a stream; keep-alive comments are sent while nothing happens.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent

from comfyfleet import jobs
from comfyfleet.api.deps import CurrentUserOrQuery, GatewayDep
from comfyfleet.api.errors import ERROR_RESPONSES
from comfyfleet.api.progress import JobEvent
from comfyfleet.api.tasks import output_url_for
from comfyfleet.jobs.previews import read_preview
from comfyfleet.store import TERMINAL_JOB_STATUSES
from comfyfleet.store.models import Job

router = APIRouter(tags=["tasks"], responses=ERROR_RESPONSES)
POLL_S = 0.5


def visible_job(job_id: str, gateway: GatewayDep, principal: CurrentUserOrQuery) -> Job:
    """The job if the caller may see it (404 otherwise), checked before the stream starts."""
    return jobs.get(gateway.db, job_id, principal=principal)


class _Stream:
    def __init__(self) -> None:
        self.n = 0

    def event(self, kind: str, data: Any) -> ServerSentEvent:
        self.n += 1
        return ServerSentEvent(event=kind, data=data, id=str(self.n))


def _progress(job: Job) -> tuple[Any, Any, str | None]:
    return job.progress_value, job.progress_max, job.node


def _newer(progress: tuple[Any, Any, Any], last: tuple[Any, Any, Any]) -> bool:
    """Whether the job row's progress is ahead of what the stream has sent (events are faster,
    so the row usually lags behind them)."""
    value, maximum, _ = progress
    if not maximum:
        return False
    if maximum != last[1]:
        return True
    return isinstance(last[0], int) and value > last[0]


async def follow_job(
    gateway: Any, job: Job, request: Request, *, poll_s: float = POLL_S
) -> AsyncIterator[ServerSentEvent]:
    """The event sequence of one stream (see the module doc)."""
    stream = _Stream()
    url = output_url_for(request)
    async with gateway.hub.subscribe(job.id) as queue:
        job = await asyncio.to_thread(jobs.get, gateway.db, job.id)
        yield stream.event("status", jobs.as_json(job, output_url=url))
        last_status, last_node = job.status, job.node
        last_progress = _progress(job)
        last_preview: int | None = None
        outputs_dir = gateway.settings.store.outputs_dir
        loop = asyncio.get_running_loop()
        next_poll = loop.time() + poll_s
        while job.status not in TERMINAL_JOB_STATUSES:
            timeout = max(next_poll - loop.time(), 0.0)
            try:
                item: JobEvent | None = await asyncio.wait_for(queue.get(), timeout)
            except TimeoutError:
                item = None
            if item is not None:
                if item.kind == "progress":
                    value, maximum = item.payload.get("value"), item.payload.get("max")
                    node = item.payload.get("node")
                    last_progress = (value, maximum, node)
                    yield stream.event("progress", {"value": value, "max": maximum, "node": node})
                else:
                    yield stream.event(item.kind, item.payload)
                continue
            next_poll = loop.time() + poll_s
            if await request.is_disconnected():
                return
            job = await asyncio.to_thread(jobs.get, gateway.db, job.id)
            if job.status != last_status or job.node != last_node:
                last_status, last_node = job.status, job.node
                yield stream.event("status", jobs.as_json(job, output_url=url))
            if job.status == "running":
                preview = await asyncio.to_thread(
                    read_preview, job.id, outputs_dir=outputs_dir, newer_than=last_preview
                )
                if preview is not None:
                    last_preview = preview.seq
                    yield stream.event("preview", {"job_id": job.id, "image": preview.data_url()})
            progress = _progress(job)
            if _newer(progress, last_progress):
                last_progress = progress
                yield stream.event(
                    "progress", {"value": progress[0], "max": progress[1], "node": progress[2]}
                )
        data = jobs.as_json(job, output_url=url)
        if job.status == "completed":
            yield stream.event("outputs", {"outputs": data["outputs"]})
        elif job.status == "failed":
            yield stream.event("error", {"error": job.error})
        yield stream.event("end", {"status": job.status})


@router.get(
    "/api/v2/tasks/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "status, progress, preview, outputs, error, end events",
        }
    },
)
async def task_events(
    job: Annotated[Job, Depends(visible_job)], gateway: GatewayDep, request: Request
) -> AsyncIterator[ServerSentEvent]:
    """Follow a job live (Server-Sent Events); reconnecting gets the current state first."""
    async for event in follow_job(gateway, job, request):
        yield event
