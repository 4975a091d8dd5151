"""Attempts: one try of a job on one node, and the lease its flow keeps renewing.

Life of an attempt: `create_attempt` (pending, optionally with a first lease: the flow must
start before it runs out) → `mark_attempt_running` (ComfyUI execution_start; job → running) →
`renew_lease` every ~2 s → `finish_attempt` (completed | failed | node_fault | cancelled).
A lease that runs out shows up in `expired_leases`; the fleet service then adopts the prompt
(`renew_lease`) or gives up on the node (`dispatch.requeue_job_after_node_fault`).
A job has at most one live (pending/running) attempt.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from comfyfleet.store._sql import NO_SYNC, guarded_job_update, ts
from comfyfleet.store.errors import Conflict, InvalidInput, NotFound
from comfyfleet.store.models import (
    ACTIVE_JOB_STATUSES,
    LIVE_ATTEMPT_STATUSES,
    Attempt,
    Job,
)
from comfyfleet.store.types import utcnow

FINAL_ATTEMPT_STATUSES = ("completed", "failed", "node_fault", "cancelled")


ATTEMPT_ID = re.compile(r"^[0-9a-fA-F-]{32,36}-[0-9]+$")
"""`<job id>-<n>`: also the ComfyUI prompt id of the attempt."""


def is_attempt_id(prompt_id: str) -> bool:
    """Whether a ComfyUI prompt id is one of ours (an attempt), not someone else's prompt."""
    return ATTEMPT_ID.match(prompt_id) is not None


def _active_job_ids() -> object:
    return select(Job.id).where(Job.status.in_(ACTIVE_JOB_STATUSES))


def create_attempt(
    session: Session,
    *,
    job_id: str,
    node: str,
    flow_run_id: str | None = None,
    lease_s: float | None = None,
    now: datetime | None = None,
) -> Attempt:
    """A new pending attempt of a `dispatched` job on `node`; id `<job id>-<n>`.

    Conflict if the job is not dispatched (cancelled meanwhile, say) or has a live attempt.
    """
    now = now or utcnow()
    job = session.scalars(
        select(Job)
        .where(Job.id == job_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if job is None:
        raise NotFound(f"no job {job_id}")
    if job.status != "dispatched":
        raise Conflict(f"job {job_id} is {job.status}: only a dispatched job gets an attempt")
    if live_attempt(session, job_id=job_id) is not None:
        raise Conflict(f"job {job_id} has a live attempt already")
    last = session.scalar(select(func.max(Attempt.number)).where(Attempt.job_id == job_id))
    number = (last or 0) + 1
    attempt = Attempt(
        id=f"{job_id}-{number}",
        job_id=job_id,
        number=number,
        node=node,
        flow_run_id=flow_run_id,
        status="pending",
        created_at=now,
        lease_expires_at=now + timedelta(seconds=lease_s) if lease_s is not None else None,
        gpu_seconds=0.0,
    )
    session.add(attempt)
    guarded_job_update(session, job_id, ("dispatched",), node=node, progress_value=0)
    session.flush()
    return attempt


def set_attempt_flow_run(session: Session, *, attempt_id: str, flow_run_id: str) -> bool:
    result = session.execute(
        update(Attempt)
        .where(Attempt.id == attempt_id)
        .values(flow_run_id=flow_run_id)
        .execution_options(**NO_SYNC)
    )
    return result.rowcount == 1


def mark_attempt_running(
    session: Session, *, attempt_id: str, lease_s: float, now: datetime | None = None
) -> bool:
    """The attempt started on its node: attempt and job → running, lease set.

    False (nothing changes) if the attempt is finished or its job is no longer active.
    """
    now = now or utcnow()
    result = session.execute(
        update(Attempt)
        .where(
            Attempt.id == attempt_id,
            Attempt.status.in_(LIVE_ATTEMPT_STATUSES),
            Attempt.job_id.in_(_active_job_ids()),
        )
        .values(
            status="running",
            started_at=func.coalesce(Attempt.started_at, ts(now)),
            lease_expires_at=now + timedelta(seconds=lease_s),
        )
        .execution_options(**NO_SYNC)
    )
    if result.rowcount != 1:
        return False
    attempt = session.get(Attempt, attempt_id, populate_existing=True)
    assert attempt is not None
    return guarded_job_update(
        session,
        attempt.job_id,
        ACTIVE_JOB_STATUSES,
        status="running",
        started_at=func.coalesce(Job.started_at, ts(now)),
        node=attempt.node,
    )


def renew_lease(
    session: Session, *, attempt_id: str, lease_s: float, now: datetime | None = None
) -> bool:
    """Extend the lease; False if the attempt is no longer the live one (finished, or its job
    ended): the flow should then stop."""
    now = now or utcnow()
    result = session.execute(
        update(Attempt)
        .where(
            Attempt.id == attempt_id,
            Attempt.status.in_(LIVE_ATTEMPT_STATUSES),
            Attempt.job_id.in_(_active_job_ids()),
        )
        .values(lease_expires_at=now + timedelta(seconds=lease_s))
        .execution_options(**NO_SYNC)
    )
    return result.rowcount == 1


def expired_leases(session: Session, *, now: datetime | None = None) -> list[Attempt]:
    """Live attempts whose lease ran out (their worker died or lost the node)."""
    now = now or utcnow()
    stmt = (
        select(Attempt)
        .where(Attempt.status.in_(LIVE_ATTEMPT_STATUSES), Attempt.lease_expires_at < now)
        .order_by(Attempt.lease_expires_at)
    )
    return list(session.scalars(stmt))


def finish_attempt(
    session: Session,
    *,
    attempt_id: str,
    status: str,
    reason: str | None = None,
    gpu_seconds: float | None = None,
    now: datetime | None = None,
) -> bool:
    """End a live attempt; its GPU-seconds are added to the job. False if already finished."""
    if status not in FINAL_ATTEMPT_STATUSES:
        raise InvalidInput(
            f"status {status!r}: expected one of {', '.join(FINAL_ATTEMPT_STATUSES)}"
        )
    now = now or utcnow()
    gpu = float(gpu_seconds or 0.0)
    if gpu < 0:
        raise InvalidInput(f"gpu_seconds {gpu_seconds!r}: must be 0 or more")
    result = session.execute(
        update(Attempt)
        .where(Attempt.id == attempt_id, Attempt.status.in_(LIVE_ATTEMPT_STATUSES))
        .values(
            status=status, reason=reason, finished_at=now, lease_expires_at=None, gpu_seconds=gpu
        )
        .execution_options(**NO_SYNC)
    )
    if result.rowcount != 1:
        return False
    attempt = session.get(Attempt, attempt_id, populate_existing=True)
    assert attempt is not None
    if gpu:
        session.execute(
            update(Job)
            .where(Job.id == attempt.job_id)
            .values(gpu_seconds=Job.gpu_seconds + gpu)
            .execution_options(**NO_SYNC)
        )
    return True


def get_attempt(session: Session, *, attempt_id: str) -> Attempt | None:
    return session.get(Attempt, attempt_id)


def live_attempt(session: Session, *, job_id: str) -> Attempt | None:
    """The job's pending/running attempt, if any."""
    stmt = (
        select(Attempt)
        .where(Attempt.job_id == job_id, Attempt.status.in_(LIVE_ATTEMPT_STATUSES))
        .order_by(Attempt.number.desc())
        .limit(1)
    )
    return session.scalars(stmt).first()


def list_attempts(session: Session, *, job_id: str) -> list[Attempt]:
    stmt = select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.number)
    return list(session.scalars(stmt))


def live_attempts_by_node(session: Session) -> dict[str, int]:
    """How many live attempts each node has (the store's view of node load)."""
    rows = session.execute(
        select(Attempt.node, func.count())
        .where(Attempt.status.in_(LIVE_ATTEMPT_STATUSES))
        .group_by(Attempt.node)
    )
    return {node: int(n) for node, n in rows}


def pending_attempts(session: Session, *, nodes: Sequence[str] | None = None) -> list[Attempt]:
    """Live attempts that have not started on their node (no lease yet), oldest first."""
    stmt = select(Attempt).where(Attempt.status == "pending", Attempt.lease_expires_at.is_(None))
    if nodes is not None:
        stmt = stmt.where(Attempt.node.in_(list(nodes)))
    return list(session.scalars(stmt.order_by(Attempt.created_at)))


def live_work(session: Session) -> list[tuple[str, str, dict[str, Any], datetime | None]]:
    """Every live attempt as `(node, workflow, params, started_at)`: the work each node has
    now (`started_at` None: not started on its node yet)."""
    rows = session.execute(
        select(Attempt.node, Job.workflow, Job.params, Attempt.started_at)
        .join(Job, Job.id == Attempt.job_id)
        .where(Attempt.status.in_(LIVE_ATTEMPT_STATUSES))
    )
    return [(node, workflow, dict(params or {}), started)
            for node, workflow, params, started in rows]  # fmt: skip


def finished_since(
    session: Session, *, since: datetime, limit: int = 500
) -> list[tuple[str, str, dict[str, Any], float, datetime]]:
    """Attempts completed after `since`, oldest first, as `(node, workflow, params,
    gpu_seconds, finished_at)`: what the dispatcher learns node speeds from."""
    rows = session.execute(
        select(Attempt.node, Job.workflow, Job.params, Attempt.gpu_seconds, Attempt.finished_at)
        .join(Job, Job.id == Attempt.job_id)
        .where(Attempt.status == "completed", Attempt.finished_at > since)
        .order_by(Attempt.finished_at)
        .limit(limit)
    )
    return [(node, wf, dict(params or {}), float(gpu or 0.0), at)
            for node, wf, params, gpu, at in rows]  # fmt: skip
