"""Jobs: create, read, progress, the terminal transitions, cancellation and outputs.

Every state change is a guarded `UPDATE … WHERE id = :id AND status IN (…)` whose row count says
whether it happened, never an ORM read-modify-write: a late writer (a progress event arriving
after the job completed, a second cancel) changes nothing instead of overwriting a newer state.
The functions take a session and do not commit: the caller's transaction (`Database.session()`
or `Database.run(fn)`) decides. Claiming, attempts and leases are in `dispatch.py`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from comfyfleet.store._sql import NO_SYNC, guarded_job_update, refresh_job
from comfyfleet.store.attempts import finish_attempt, live_attempt
from comfyfleet.store.errors import Conflict, InvalidInput
from comfyfleet.store.models import (
    ACTIVE_JOB_STATUSES,
    JOB_STATUS_VALUES,
    ApiClient,
    Job,
    Output,
    User,
    priority_level,
)
from comfyfleet.store.types import utcnow


def new_job_id() -> str:
    """A job id: 32 hex characters (uuid4)."""
    return uuid.uuid4().hex


def create_job(
    session: Session,
    *,
    workflow: str,
    capability: str,
    params: dict[str, Any],
    owner: User | int,
    request: dict[str, Any] | None = None,
    priority: str | int = "normal",
    client: ApiClient | str | None = None,
    pinned_node: str | None = None,
    webhook_url: str | None = None,
    batch_id: str | None = None,
    parent_run: str | None = None,
    job_id: str | None = None,
    now: datetime | None = None,
) -> Job:
    """A new `queued` job. Pass `job_id` when the call may be retried (see `Database.run`).

    Quotas are not checked here: call `accounting.check_quota` first, in the same transaction.
    """
    try:
        level = priority_level(priority)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    job = Job(
        id=job_id or new_job_id(),
        workflow=workflow,
        capability=capability,
        params=dict(params),
        request=dict(request if request is not None else params),
        priority=level,
        status="queued",
        owner_id=owner if isinstance(owner, int) else owner.id,
        client_id=client.id if isinstance(client, ApiClient) else client,
        pinned_node=pinned_node,
        webhook_url=webhook_url,
        batch_id=batch_id,
        parent_run=parent_run,
        created_at=now or utcnow(),
        progress_value=0,
        progress_max=0,
        gpu_seconds=0.0,
        node_faults=0,
        cancel_requested=False,
    )
    if isinstance(owner, User):
        job.owner = owner  # loaded: the new job's JSON names its owner without reading it back
    try:
        with session.begin_nested():
            session.add(job)
    except IntegrityError:
        raise Conflict(f"job {job.id} exists already") from None
    return job


def get_job(
    session: Session, *, job_id: str, owner_id: int | None = None, with_details: bool = False
) -> Job | None:
    """The job (None if unknown, or not `owner_id`'s). `with_details`: attempts+outputs loaded."""
    stmt = select(Job).where(Job.id == job_id)
    if owner_id is not None:
        stmt = stmt.where(Job.owner_id == owner_id)
    if with_details:
        stmt = stmt.options(
            selectinload(Job.attempts), selectinload(Job.outputs), selectinload(Job.owner)
        )
    return session.scalars(stmt).one_or_none()


def _filtered(
    stmt: Select[Any],
    *,
    owner_id: int | None,
    status: str | Sequence[str] | None,
    capability: str | None,
    workflow: str | None,
    batch_id: str | None,
    client_id: str | None,
    since: datetime | None,
    until: datetime | None,
) -> Select[Any]:
    if owner_id is not None:
        stmt = stmt.where(Job.owner_id == owner_id)
    if status is not None:
        statuses = [status] if isinstance(status, str) else list(status)
        unknown = set(statuses) - set(JOB_STATUS_VALUES)
        if unknown:
            raise InvalidInput(f"status {sorted(unknown)}: expected {', '.join(JOB_STATUS_VALUES)}")
        stmt = stmt.where(Job.status.in_(statuses))
    if capability is not None:
        stmt = stmt.where(Job.capability == capability)
    if workflow is not None:
        stmt = stmt.where(Job.workflow == workflow)
    if batch_id is not None:
        stmt = stmt.where(Job.batch_id == batch_id)
    if client_id is not None:
        stmt = stmt.where(Job.client_id == client_id)
    if since is not None:
        stmt = stmt.where(Job.created_at >= since)
    if until is not None:
        stmt = stmt.where(Job.created_at < until)
    return stmt


def list_jobs(
    session: Session,
    *,
    owner_id: int | None = None,
    status: str | Sequence[str] | None = None,
    capability: str | None = None,
    workflow: str | None = None,
    batch_id: str | None = None,
    client_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
    oldest_first: bool = False,
    with_details: bool = False,
) -> list[Job]:
    """Jobs matching the filters, newest first; `since` ≤ created_at < `until`."""
    if limit < 0 or offset < 0:
        raise InvalidInput("limit and offset must be 0 or more")
    stmt = _filtered(
        select(Job),
        owner_id=owner_id,
        status=status,
        capability=capability,
        workflow=workflow,
        batch_id=batch_id,
        client_id=client_id,
        since=since,
        until=until,
    )
    order = (Job.created_at, Job.id) if oldest_first else (Job.created_at.desc(), Job.id.desc())
    stmt = stmt.order_by(*order).limit(limit).offset(offset).options(selectinload(Job.owner))
    if with_details:
        stmt = stmt.options(selectinload(Job.attempts), selectinload(Job.outputs))
    return list(session.scalars(stmt))


def count_jobs(
    session: Session,
    *,
    owner_id: int | None = None,
    status: str | Sequence[str] | None = None,
    capability: str | None = None,
    workflow: str | None = None,
    batch_id: str | None = None,
    client_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> int:
    stmt = _filtered(
        select(func.count()).select_from(Job),
        owner_id=owner_id,
        status=status,
        capability=capability,
        workflow=workflow,
        batch_id=batch_id,
        client_id=client_id,
        since=since,
        until=until,
    )
    return int(session.scalar(stmt) or 0)


def job_statuses(session: Session, *, job_ids: Sequence[str]) -> dict[str, str]:
    """The status of each of these jobs (one query; unknown ids are left out)."""
    if not job_ids:
        return {}
    return dict(session.execute(select(Job.id, Job.status).where(Job.id.in_(list(job_ids)))).all())


def update_progress(
    session: Session, *, job_id: str, value: int, max: int, node: str | None = None
) -> bool:
    """Durable progress of an active job; False (nothing written) once the job is terminal."""
    values: dict[str, Any] = {"progress_value": int(value), "progress_max": int(max)}
    if node is not None:
        values["node"] = node
    return guarded_job_update(session, job_id, ACTIVE_JOB_STATUSES, **values)


def _finish_live_attempt(
    session: Session,
    job_id: str,
    attempt_id: str | None,
    status: str,
    reason: str | None,
    gpu_seconds: float | None,
    now: datetime,
) -> None:
    if attempt_id is None:
        live = live_attempt(session, job_id=job_id)
        attempt_id = live.id if live is not None else None
    if attempt_id is not None:
        finish_attempt(
            session,
            attempt_id=attempt_id,
            status=status,
            reason=reason,
            gpu_seconds=gpu_seconds,
            now=now,
        )
    elif gpu_seconds:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(gpu_seconds=Job.gpu_seconds + gpu_seconds)
            .execution_options(**NO_SYNC)
        )


def complete_job(
    session: Session,
    *,
    job_id: str,
    attempt_id: str | None = None,
    gpu_seconds: float | None = None,
    now: datetime | None = None,
) -> bool:
    """`dispatched|running` → `completed`; the attempt (default: the live one) completes too.

    With `attempt_id`, only while that attempt is the job's live one: an attempt the fleet
    service already ended (lease expired, node fault, moved) cannot complete the job, even if
    its prompt finished after all — the job's live attempt does. The attempt row is updated
    first, in the same order as `requeue_job_after_node_fault`, so the two serialise on it.
    Outputs recorded by other attempts of the job are dropped from the record (their files are
    the output store's to clean up): exactly one attempt's outputs are kept. False if the job
    (or the attempt) was not live (the job does not change).
    """
    now = now or utcnow()
    if attempt_id is not None and not finish_attempt(
        session, attempt_id=attempt_id, status="completed", gpu_seconds=gpu_seconds, now=now
    ):
        return False
    done = guarded_job_update(
        session,
        job_id,
        ACTIVE_JOB_STATUSES,
        status="completed",
        finished_at=now,
        progress_value=Job.progress_max,
    )
    if not done:
        return False  # a live attempt of an ended job: cancel_job ends both together, so rare
    if attempt_id is None:
        _finish_live_attempt(session, job_id, None, "completed", None, gpu_seconds, now)
    else:
        session.execute(
            Output.__table__.delete().where(
                Output.job_id == job_id,
                Output.attempt_id.is_not(None),
                Output.attempt_id != attempt_id,
            )
        )
    refresh_job(session, job_id)
    return True


def fail_job(
    session: Session,
    *,
    job_id: str,
    error: str,
    attempt_id: str | None = None,
    gpu_seconds: float | None = None,
    now: datetime | None = None,
) -> bool:
    """Any non-terminal status → `failed` with `error`; the live attempt fails with it."""
    return _end_job(
        session, job_id, attempt_id, "failed", error, gpu_seconds, now,
        status="failed", error=error,
    )  # fmt: skip


def _end_job(
    session: Session, job_id: str, attempt_id: str | None, attempt_status: str,
    reason: str | None, gpu_seconds: float | None, now: datetime | None, **values: Any,
) -> bool:  # fmt: skip
    """A non-terminal job → a terminal status (`values`), its live attempt → `attempt_status`."""
    now = now or utcnow()
    done = guarded_job_update(
        session, job_id, ("queued", *ACTIVE_JOB_STATUSES), finished_at=now, **values
    )
    if done:
        _finish_live_attempt(session, job_id, attempt_id, attempt_status, reason, gpu_seconds, now)
        refresh_job(session, job_id)
    return done


def request_cancel(session: Session, *, job_id: str, now: datetime | None = None) -> str | None:
    """Ask for a job to stop. A queued job is cancelled at once (it never runs); an active one
    gets `cancel_requested` for its flow to act on (ComfyUI interrupt) and then `cancel_job`.
    Returns the job's status afterwards (None: unknown job)."""
    now = now or utcnow()
    if guarded_job_update(
        session, job_id, ("queued",), status="cancelled", finished_at=now, cancel_requested=True
    ):
        return "cancelled"
    guarded_job_update(session, job_id, ACTIVE_JOB_STATUSES, cancel_requested=True)
    job = refresh_job(session, job_id)
    return job.status if job is not None else None


def cancel_job(
    session: Session,
    *,
    job_id: str,
    reason: str = "cancelled",
    gpu_seconds: float | None = None,
    now: datetime | None = None,
) -> bool:
    """Any non-terminal status → `cancelled`; the live attempt ends `cancelled`."""
    return _end_job(
        session, job_id, None, "cancelled", reason, gpu_seconds, now,
        status="cancelled", cancel_requested=True,
    )  # fmt: skip


def record_output(
    session: Session,
    *,
    job_id: str,
    attempt_id: str | None,
    name: str,
    path: str,
    sha256: str,
    size: int,
    content_type: str,
    node: str | None = None,
    prompt_id: str | None = None,
    comfy_node_id: str | None = None,
) -> Output:
    """Record an output file, idempotently: (job, name) is one row, updated on a retry."""
    values = {
        "attempt_id": attempt_id,
        "path": path,
        "sha256": sha256,
        "size": int(size),
        "content_type": content_type,
        "node": node,
        "prompt_id": prompt_id,
        "comfy_node_id": comfy_node_id,
    }
    stmt = select(Output).where(Output.job_id == job_id, Output.name == name)
    existing = session.scalars(stmt).one_or_none()
    if existing is None:
        output = Output(job_id=job_id, name=name, created_at=utcnow(), **values)
        try:
            with session.begin_nested():
                session.add(output)
            return output
        except IntegrityError:  # a concurrent writer recorded it first
            existing = session.scalars(stmt.execution_options(populate_existing=True)).one()
    for key, value in values.items():
        setattr(existing, key, value)
    session.flush()
    return existing


def list_outputs(session: Session, *, job_id: str) -> list[Output]:
    return list(
        session.scalars(select(Output).where(Output.job_id == job_id).order_by(Output.name))
    )
