"""Entry runs that hold no GPU: submit jobs to the backlog and follow them to the end.

The routed deployments `<flow>/fleet` and the batch flow run in the `comfyfleet-control` pool.
They do not pick a node: they write jobs (owned by the `prefect` service user, or the user named)
through `comfyfleet.jobs`, the dispatcher places each on a node as one frees up, and the entry run
follows the jobs and reports them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import acreate_progress_artifact, aupdate_progress_artifact
from prefect.runtime import flow_run

from comfyfleet import jobs
from comfyfleet.auth import Principal
from comfyfleet.jobs import attempts
from comfyfleet.settings import get_settings
from comfyfleet.store import TERMINAL_JOB_STATUSES
from comfyfleet.store.users import ensure_service_user, require_user

POLL_S = 0.5


def _db() -> Any:
    return attempts.database(get_settings().database.url)


def principal_for(username: str | None) -> Principal:
    """The named user (who must exist), or the `prefect` service user."""
    db = _db()
    if username:
        return Principal(user=db.run(lambda s: require_user(s, username=username), readonly=True))
    return Principal(user=db.run(ensure_service_user))


@task(name="submit-jobs")
def submit_jobs(
    workflow: str, items: list[dict[str, Any]], *, priority: str, username: str | None,
    batch_id: str | None = None,
) -> list[str]:  # fmt: skip
    """Queue one job per parameter set; returns their ids (all validated before any is written)."""
    catalog = jobs.load_catalog()
    wf = catalog.get(workflow)
    for index, params in enumerate(items):
        try:
            wf.validate(params)
        except ValueError as exc:
            raise ValueError(f"item {index + 1}: {exc}") from exc
    principal = principal_for(username)
    parent = flow_run.id  # each job's task run is shown inside this run (flows/_tasks.py)
    return [
        jobs.submit(
            _db(),
            jobs.JobRequest(workflow=workflow, params=params, priority=priority, batch_id=batch_id,
                            parent_run=str(parent) if parent else None),
            principal=principal, catalog=catalog,
        ).id
        for params in items
    ]  # fmt: skip


@task(name="follow-jobs")
async def follow_jobs(
    job_ids: list[str], *, timeout_s: float | None = None
) -> list[dict[str, Any]]:
    """Wait until every job ended; a progress artifact counts them. Returns their REST JSON."""
    db = _db()
    artifact = await acreate_progress_artifact(
        progress=0.0, description=f"{len(job_ids)} job(s) through the fleet"
    )
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    done: dict[str, Any] = {}
    while len(done) < len(job_ids):
        for job_id in job_ids:
            if job_id not in done:
                job = await asyncio.to_thread(jobs.get, db, job_id)
                if job.status in TERMINAL_JOB_STATUSES:
                    done[job_id] = jobs.as_json(job)
        await aupdate_progress_artifact(artifact, progress=100.0 * len(done) / len(job_ids))
        if len(done) < len(job_ids):
            if deadline is not None and loop.time() > deadline:
                get_run_logger().warning("%d job(s) still running at the timeout",
                                         len(job_ids) - len(done))  # fmt: skip
                break
            await asyncio.sleep(POLL_S)
    return [done.get(i) or jobs.as_json(jobs.get(db, i)) for i in job_ids]


async def route(*, workflow: str, request: dict[str, Any], priority: str) -> dict[str, Any]:
    """One job through the backlog (the `<flow>/fleet` deployments); fails if the job fails."""
    request = {k: v for k, v in request.items() if v is not None}
    [job_id] = submit_jobs(workflow, [request], priority=priority, username=None)
    get_run_logger().info("queued job %s (%s, priority %s)", job_id, workflow, priority)
    [job] = await follow_jobs([job_id])
    if job["status"] != "completed":
        raise RuntimeError(f"job {job_id} {job['status']}: {job['error'] or 'no reason given'}")
    return job
