"""One attempt of a job, as its flow run lives it: the job store side.

A flow run is one attempt of one job on one node. It starts from one of two places:

- the dispatcher created it for a claimed job (`job_id` + `attempt_id` parameters); or
- someone ran a pinned deployment `<flow>/<node>` straight from Prefect (UI, CLI, schedule):
  then the run records itself as a job of the `prefect` service user, pinned to that node, so
  history, accounting and the router's load count see it like any other job.

While it runs it holds a lease on the attempt, renewed every `LEASE_RENEW_S`; the fleet service
treats an expired lease as a dead worker (adopt the prompt or re-attempt elsewhere).
Every call here is synchronous (SQLAlchemy); the flow runs them in a thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from comfyfleet.catalog import Workflow
from comfyfleet.jobs.outputs import OutputRecord
from comfyfleet.store import (
    Database,
    cancel_job,
    claim_job,
    complete_job,
    create_attempt,
    create_job,
    fail_job,
    get_attempt,
    get_job,
    mark_attempt_running,
    record_output,
    renew_lease,
    requeue_job_after_node_fault,
    set_attempt_flow_run,
    update_progress,
)
from comfyfleet.store.users import ensure_service_user

LEASE_S = 10.0
"""An attempt whose lease is this old without renewal is considered orphaned."""
LEASE_RENEW_S = 2.0


@dataclass(frozen=True)
class AttemptInfo:
    job_id: str
    attempt_id: str
    node: str
    workflow: str
    params: dict[str, Any]


_databases: dict[str, Database] = {}


def database(url: str) -> Database:
    """One Database per URL per process (flows of one worker share the engine)."""
    db = _databases.get(url)
    if db is None:
        db = _databases[url] = Database(url)
    return db


def adopt_or_record(
    db: Database, *, job_id: str | None, attempt_id: str | None, node: str,
    workflow: Workflow, request: dict[str, Any], flow_run_id: str,
) -> AttemptInfo:  # fmt: skip
    """The attempt this flow run is: the dispatcher's, or a new job recorded for a direct run."""
    if job_id and attempt_id:

        def load(session: Any) -> AttemptInfo:
            job = get_job(session, job_id=job_id)
            attempt = get_attempt(session, attempt_id=attempt_id)
            if job is None or attempt is None or attempt.job_id != job_id:
                raise LookupError(f"attempt {attempt_id} of job {job_id} is not in the store")
            set_attempt_flow_run(session, attempt_id=attempt_id, flow_run_id=flow_run_id)
            return AttemptInfo(job.id, attempt.id, attempt.node, job.workflow, dict(job.params))

        return db.run(load)

    params = workflow.validate(request)

    def record(session: Any) -> AttemptInfo:
        owner = ensure_service_user(session)
        job = create_job(
            session, workflow=workflow.id, capability=workflow.capability, params=params,
            request=request, owner=owner, pinned_node=node, job_id=job_id,
        )  # fmt: skip
        claim_job(session, job_id=job.id)
        attempt = create_attempt(session, job_id=job.id, node=node, flow_run_id=flow_run_id)
        return AttemptInfo(job.id, attempt.id, node, workflow.id, params)

    return db.run(record)


def started(db: Database, info: AttemptInfo) -> bool:
    """The prompt is on the node: attempt and job `running`, lease taken."""
    return db.run(lambda s: mark_attempt_running(s, attempt_id=info.attempt_id, lease_s=LEASE_S))


def renew(db: Database, info: AttemptInfo) -> bool:
    """Renew the lease; False when the attempt is no longer the live one (stop)."""
    return db.run(lambda s: renew_lease(s, attempt_id=info.attempt_id, lease_s=LEASE_S))


def cancel_requested(db: Database, info: AttemptInfo) -> bool:
    job = db.run(lambda s: get_job(s, job_id=info.job_id), readonly=True)
    return job is None or bool(job.cancel_requested)


def progress(db: Database, info: AttemptInfo, value: int, maximum: int) -> None:
    db.run(
        lambda s: update_progress(s, job_id=info.job_id, value=value, max=maximum, node=info.node)
    )


def completed(
    db: Database, info: AttemptInfo, outputs: list[OutputRecord], gpu_seconds: float
) -> bool:
    """The job completes with these outputs if this attempt is still its live one; False (and
    nothing recorded) when the fleet service ended the attempt meanwhile."""

    def write(session: Any) -> bool:
        if not complete_job(
            session, job_id=info.job_id, attempt_id=info.attempt_id, gpu_seconds=gpu_seconds
        ):
            return False
        for out in outputs:
            record_output(
                session, job_id=info.job_id, attempt_id=info.attempt_id, name=out.name,
                path=out.path, sha256=out.sha256, size=out.size, content_type=out.content_type,
                node=out.node, prompt_id=out.prompt_id, comfy_node_id=out.comfy_node_id,
            )  # fmt: skip
        return True

    return db.run(write)


def failed(db: Database, info: AttemptInfo, error: str) -> bool:
    return db.run(
        lambda s: fail_job(s, job_id=info.job_id, attempt_id=info.attempt_id, error=error)
    )


def node_fault(db: Database, info: AttemptInfo, reason: str) -> str | None:
    """The node failed this attempt: the job goes back to the backlog (or fails after M)."""
    return db.run(
        lambda s: requeue_job_after_node_fault(
            s, job_id=info.job_id, attempt_id=info.attempt_id, reason=f"{info.node}: {reason}"
        )
    )


def cancelled(db: Database, info: AttemptInfo) -> bool:
    return db.run(lambda s: cancel_job(s, job_id=info.job_id))
