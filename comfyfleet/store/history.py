"""Job history for people: the REST job JSON, and CSV/JSON exports with the list filters.

`job_to_dict` is the REST job JSON of CONVENTIONS.md (`{id, workflow, capability, status,
priority, progress: {value, max, node_id}, node, attempts, outputs, error, created_at,
started_at, finished_at, gpu_seconds, owner}`); output URLs come from the gateway's
`output_url(job_id, name)`. `export_jobs` writes one flat row per job (params as JSON text in
CSV), newest first, with the same filters as `jobs.list_jobs`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import inspect
from sqlalchemy.orm import Session

from comfyfleet.store.errors import InvalidInput
from comfyfleet.store.jobs import list_jobs
from comfyfleet.store.models import Attempt, Job, Output, priority_name

EXPORT_FIELDS = (
    "id",
    "workflow",
    "capability",
    "status",
    "priority",
    "owner",
    "client_id",
    "batch_id",
    "node",
    "created_at",
    "dispatched_at",
    "started_at",
    "finished_at",
    "gpu_seconds",
    "attempts",
    "node_faults",
    "error",
    "params",
)

OutputUrl = Callable[[str, str], str]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _loaded(job: Job, name: str) -> bool:
    return name not in inspect(job).unloaded


def attempt_to_dict(attempt: Attempt) -> dict[str, Any]:
    return {
        "id": attempt.id,
        "number": attempt.number,
        "node": attempt.node,
        "status": attempt.status,
        "reason": attempt.reason,
        "flow_run_id": attempt.flow_run_id,
        "created_at": _iso(attempt.created_at),
        "started_at": _iso(attempt.started_at),
        "finished_at": _iso(attempt.finished_at),
        "gpu_seconds": attempt.gpu_seconds,
    }


def output_to_dict(output: Output, *, url: str | None = None) -> dict[str, Any]:
    return {
        "name": output.name,
        "url": url,
        "sha256": output.sha256,
        "size": output.size,
        "content_type": output.content_type,
        "node": output.node,
        "prompt_id": output.prompt_id,
    }


def job_to_dict(job: Job, *, output_url: OutputUrl | None = None) -> dict[str, Any]:
    """The REST job JSON. Attempts/outputs are included when loaded (`with_details=True`)."""
    owner = job.owner.username if _loaded(job, "owner") and job.owner is not None else None
    return {
        "id": job.id,
        "workflow": job.workflow,
        "capability": job.capability,
        "status": job.status,
        "priority": priority_name(job.priority),
        "progress": {"value": job.progress_value, "max": job.progress_max, "node_id": job.node},
        "node": job.node,
        "attempts": [attempt_to_dict(a) for a in job.attempts] if _loaded(job, "attempts") else [],
        "outputs": [
            output_to_dict(o, url=output_url(job.id, o.name) if output_url else None)
            for o in job.outputs
        ]
        if _loaded(job, "outputs")
        else [],
        "error": job.error,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "gpu_seconds": job.gpu_seconds,
        "owner": owner,
        "params": job.params,
        "batch_id": job.batch_id,
        "cancel_requested": job.cancel_requested,
    }


def job_record(job: Job) -> dict[str, Any]:
    """One flat export row (`EXPORT_FIELDS`)."""
    return {
        "id": job.id,
        "workflow": job.workflow,
        "capability": job.capability,
        "status": job.status,
        "priority": priority_name(job.priority),
        "owner": job.owner.username if _loaded(job, "owner") and job.owner else job.owner_id,
        "client_id": job.client_id,
        "batch_id": job.batch_id,
        "node": job.node,
        "created_at": _iso(job.created_at),
        "dispatched_at": _iso(job.dispatched_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "gpu_seconds": round(job.gpu_seconds, 3),
        "attempts": len(job.attempts) if _loaded(job, "attempts") else None,
        "node_faults": job.node_faults,
        "error": job.error,
        "params": job.params,
    }


def iter_jobs(session: Session, *, page_size: int = 500, **filters: Any) -> Iterator[Job]:
    """All jobs matching `jobs.list_jobs` filters, newest first, read a page at a time."""
    offset = 0
    while True:
        page = list_jobs(session, limit=page_size, offset=offset, with_details=True, **filters)
        yield from page
        if len(page) < page_size:
            return
        offset += page_size


def export_jobs(session: Session, *, fmt: Literal["csv", "json"], **filters: Any) -> str:
    """The job history as CSV (header `EXPORT_FIELDS`) or a JSON array of the same records."""
    records = (job_record(job) for job in iter_jobs(session, **filters))
    if fmt == "json":
        return json.dumps(list(records), indent=1, ensure_ascii=False)
    if fmt != "csv":
        raise InvalidInput(f"format {fmt!r}: expected csv or json")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=EXPORT_FIELDS, lineterminator="\n")
    writer.writeheader()
    for record in records:
        record["params"] = json.dumps(record["params"], sort_keys=True, ensure_ascii=False)
        writer.writerow(record)
    return buffer.getvalue()
