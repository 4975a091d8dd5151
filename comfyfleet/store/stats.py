"""Counts and timings over jobs and attempts, for `/metrics` (comfyfleet.api.metrics) and the
admin views (performance per node and per workflow, fleet stats, cluster stats)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from comfyfleet.store.models import TERMINAL_JOB_STATUSES, Attempt, Job


def job_counts(session: Session) -> list[tuple[str, str, int]]:
    """(workflow, status, jobs) for every workflow and status present."""
    rows = session.execute(
        select(Job.workflow, Job.status, func.count()).group_by(Job.workflow, Job.status)
    )
    return [(workflow, status, int(n)) for workflow, status, n in rows]


def job_status_counts(session: Session) -> dict[str, int]:
    """Jobs in each status."""
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
    return {status: int(n) for status, n in rows}


def attempt_counts(
    session: Session, *, finished: bool = False
) -> list[tuple[str, str, int, float]]:
    """(node, status, attempts, GPU-seconds) per node and attempt status (`finished`: only
    attempts that ended)."""
    stmt = select(
        Attempt.node, Attempt.status, func.count(), func.sum(Attempt.gpu_seconds)
    ).group_by(Attempt.node, Attempt.status)
    if finished:
        stmt = stmt.where(Attempt.finished_at.is_not(None))
    return [
        (node, status, int(n), float(seconds or 0.0))
        for node, status, n, seconds in session.execute(stmt)
    ]


def gpu_seconds_by_node(session: Session) -> dict[str, float]:
    """GPU-seconds of every attempt, per node."""
    rows = session.execute(
        select(Attempt.node, func.coalesce(func.sum(Attempt.gpu_seconds), 0.0)).group_by(
            Attempt.node
        )
    )
    return {node: float(seconds or 0.0) for node, seconds in rows}


JobTimes = tuple[str, str, str, datetime, datetime | None, datetime | None, datetime | None]
"""(id, workflow, status, created, dispatched, started, finished) of one job."""


_TIMES = (
    Job.id, Job.workflow, Job.status, Job.created_at, Job.dispatched_at, Job.started_at,
    Job.finished_at,
)  # fmt: skip


def job_times(session: Session, *, created_since: datetime) -> list[JobTimes]:
    """The times of the jobs created since `created_since`."""
    stmt = select(*_TIMES).where(Job.created_at >= created_since)
    return [tuple(row) for row in session.execute(stmt)]  # type: ignore[misc]


def finished_job_times(session: Session, *, since: datetime | None) -> list[JobTimes]:
    """Jobs that ended (finished since `since`, or all of them), with their times."""
    stmt = select(*_TIMES).where(
        Job.finished_at.is_not(None), Job.status.in_(TERMINAL_JOB_STATUSES)
    )
    if since is not None:
        stmt = stmt.where(Job.finished_at >= since)
    return [tuple(row) for row in session.execute(stmt)]  # type: ignore[misc]
