"""GPU-seconds accounting and quotas.

GPU-seconds are ComfyUI execution time on the node, recorded per attempt (`finish_attempt`,
`complete_job`) and summed onto the job. Rollups count every finished attempt, failed and
node-faulted ones included (they used the GPU), by user, workflow, capability, node or UTC day.

Quotas (per user and per API client; None = no limit):
- `max_queued`: a new job is refused (`QuotaExceeded`, HTTP 429) while the user (client) has
  that many jobs queued.
- `daily_gpu_seconds`: a new job is refused once the GPU-seconds of the current UTC day reach
  the budget; it resets at 00:00 UTC.
- `max_running`: never refuses a submission; the dispatcher does not start more than that many
  of the user's (client's) jobs at once, the rest wait in the queue (`dispatch.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from comfyfleet.store.errors import InvalidInput, QuotaExceeded
from comfyfleet.store.models import ACTIVE_JOB_STATUSES, ApiClient, Attempt, Job, User
from comfyfleet.store.types import utcnow

RollupKey = Literal["user", "workflow", "capability", "node", "day"]


@dataclass(frozen=True)
class Rollup:
    key: str
    gpu_seconds: float
    attempts: int
    jobs: int


@dataclass(frozen=True)
class Usage:
    queued: int
    active: int
    gpu_seconds_today: float


def _day_start(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def gpu_seconds_rollup(
    session: Session,
    *,
    by: RollupKey,
    owner_id: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[Rollup]:
    """GPU-seconds of finished attempts grouped `by`; `since` ≤ finished_at < `until`."""
    columns = {
        "user": User.username,
        "workflow": Job.workflow,
        "capability": Job.capability,
        "node": Attempt.node,
        "day": func.date(Attempt.finished_at),
    }
    if by not in columns:
        raise InvalidInput(f"by {by!r}: expected one of {', '.join(columns)}")
    key = columns[by]
    stmt = (
        select(
            key.label("key"),
            func.coalesce(func.sum(Attempt.gpu_seconds), 0.0),
            func.count(Attempt.id),
            func.count(distinct(Job.id)),
        )
        .select_from(Attempt)
        .join(Job, Job.id == Attempt.job_id)
        .join(User, User.id == Job.owner_id)
        .where(Attempt.finished_at.is_not(None))
        .group_by(key)
        .order_by(key)
    )
    if owner_id is not None:
        stmt = stmt.where(Job.owner_id == owner_id)
    if since is not None:
        stmt = stmt.where(Attempt.finished_at >= since)
    if until is not None:
        stmt = stmt.where(Attempt.finished_at < until)
    return [
        Rollup(key=str(k), gpu_seconds=float(g), attempts=int(a), jobs=int(j))
        for k, g, a, j in session.execute(stmt)
    ]


def gpu_seconds_today(
    session: Session,
    *,
    owner_id: int | None = None,
    client_id: str | None = None,
    now: datetime | None = None,
) -> float:
    """GPU-seconds used since 00:00 UTC by an owner's (or a client's) jobs."""
    stmt = (
        select(func.coalesce(func.sum(Attempt.gpu_seconds), 0.0))
        .join(Job, Job.id == Attempt.job_id)
        .where(Attempt.finished_at >= _day_start(now or utcnow()))
    )
    if owner_id is not None:
        stmt = stmt.where(Job.owner_id == owner_id)
    if client_id is not None:
        stmt = stmt.where(Job.client_id == client_id)
    return float(session.scalar(stmt) or 0.0)


def _count(session: Session, statuses: tuple[str, ...], **where: object) -> int:
    stmt = select(func.count()).select_from(Job).where(Job.status.in_(statuses))
    for column, value in where.items():
        stmt = stmt.where(getattr(Job, column) == value)
    return int(session.scalar(stmt) or 0)


def usage(session: Session, *, user: User, now: datetime | None = None) -> Usage:
    """What counts against a user's quotas right now."""
    return Usage(
        queued=_count(session, ("queued",), owner_id=user.id),
        active=_count(session, ACTIVE_JOB_STATUSES, owner_id=user.id),
        gpu_seconds_today=gpu_seconds_today(session, owner_id=user.id, now=now),
    )


def check_quota(
    session: Session,
    *,
    user: User,
    client: ApiClient | None = None,
    now: datetime | None = None,
) -> None:
    """Raise `QuotaExceeded` if the user (or the client it submits through) may not queue
    another job now; call it in the transaction that creates the job."""
    scopes: list[tuple[str, User | ApiClient, dict[str, object]]] = [
        (f"user {user.username}", user, {"owner_id": user.id})
    ]
    if client is not None:
        scopes.append(
            (f"client {client.client_name} ({client.id})", client, {"client_id": client.id})
        )
    for scope, holder, where in scopes:
        if holder.max_queued is not None:
            queued = _count(session, ("queued",), **where)
            if queued >= holder.max_queued:
                raise QuotaExceeded(
                    f"{scope} has {queued} jobs queued, the limit is {holder.max_queued}: "
                    "wait for some to start, or cancel some",
                    kind="max_queued",
                    limit=holder.max_queued,
                    current=queued,
                    scope=scope,
                )
        if holder.daily_gpu_seconds is not None:
            used = gpu_seconds_today(session, now=now, **where)  # type: ignore[arg-type]
            if used >= holder.daily_gpu_seconds:
                raise QuotaExceeded(
                    f"{scope} used {used:.0f} GPU-seconds today, the daily budget is "
                    f"{holder.daily_gpu_seconds:.0f}; it resets at 00:00 UTC",
                    kind="daily_gpu_seconds",
                    limit=holder.daily_gpu_seconds,
                    current=used,
                    scope=scope,
                )
