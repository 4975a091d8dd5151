"""Webhook signing secrets and delivery attempts (rows; signing and sending are in
comfyfleet.jobs.webhooks).

- `webhook_secrets`: one active signing secret per scope, the scope being an API client
  (`client:<client id>`) or a user submitting without a client (`user:<user id>`). The secret
  signs with HMAC, so it is stored as is (a hash could not sign); it is shown to its owner once,
  when it is created or rotated, and never returned by any read afterwards.
- `webhook_deliveries`: one row per HTTP attempt of one message (`webhook_id`, stable across the
  retries of a message, as Standard Webhooks asks), with the status code or the error.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import (
    ForeignKey,
    Index,
    String,
    Text,
    and_,
    case,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from comfyfleet.store.models import MYSQL_TABLE_OPTIONS, TERMINAL_JOB_STATUSES, Base, Job
from comfyfleet.store.types import utcnow


class WebhookSecret(Base):
    """The signing secret of a client or a user (`scope`); one unrevoked row per scope."""

    __tablename__ = "webhook_secrets"
    __table_args__ = (MYSQL_TABLE_OPTIONS,)

    id: Mapped[int] = mapped_column(primary_key=True)
    scope: Mapped[str] = mapped_column(String(64), index=True)
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]

    def __repr__(self) -> str:
        return f"WebhookSecret(id={self.id!r}, scope={self.scope!r})"


class WebhookDelivery(Base):
    """One HTTP attempt to deliver one webhook message."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_job_attempt", "job_id", "attempt"),
        MYSQL_TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    webhook_id: Mapped[str] = mapped_column(String(64), index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(String(2048))
    attempt: Mapped[int]
    status_code: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    delivered: Mapped[bool] = mapped_column(default=False)
    duration_ms: Mapped[float] = mapped_column(default=0.0)
    at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return (
            f"WebhookDelivery(webhook_id={self.webhook_id!r}, attempt={self.attempt!r}, "
            f"status_code={self.status_code!r})"
        )


def client_scope(client_id: str) -> str:
    return f"client:{client_id}"


def user_scope(user_id: int) -> str:
    return f"user:{user_id}"


def active_secret(session: Session, *, scope: str) -> WebhookSecret | None:
    stmt = (
        select(WebhookSecret)
        .where(WebhookSecret.scope == scope, WebhookSecret.revoked_at.is_(None))
        .order_by(WebhookSecret.id.desc())
        .limit(1)
    )
    return session.scalars(stmt).first()


def store_secret(session: Session, *, scope: str, secret: str) -> WebhookSecret:
    """Make `secret` the scope's signing secret; earlier ones are revoked."""
    now = utcnow()
    session.execute(
        update(WebhookSecret)
        .where(WebhookSecret.scope == scope, WebhookSecret.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    row = WebhookSecret(scope=scope, secret=secret, created_at=now)
    session.add(row)
    session.flush()
    return row


def record_delivery(
    session: Session,
    *,
    webhook_id: str,
    job_id: str,
    event: str,
    url: str,
    attempt: int,
    status_code: int | None,
    error: str | None,
    delivered: bool,
    duration_ms: float,
) -> WebhookDelivery:
    row = WebhookDelivery(
        webhook_id=webhook_id,
        job_id=job_id,
        event=event,
        url=url[:2048],
        attempt=attempt,
        status_code=status_code,
        error=error,
        delivered=delivered,
        duration_ms=duration_ms,
        at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row


def list_deliveries(
    session: Session, *, job_id: str | None = None, limit: int = 100
) -> list[WebhookDelivery]:
    stmt = select(WebhookDelivery).order_by(WebhookDelivery.id.desc()).limit(limit)
    if job_id is not None:
        stmt = stmt.where(WebhookDelivery.job_id == job_id)
    return list(session.scalars(stmt))


def attempts_made(session: Session, *, webhook_id: str) -> int:
    stmt = select(func.count()).select_from(WebhookDelivery)
    return int(session.scalar(stmt.where(WebhookDelivery.webhook_id == webhook_id)) or 0)


def was_delivered(session: Session, *, webhook_id: str) -> bool:
    stmt = select(WebhookDelivery.id).where(
        WebhookDelivery.webhook_id == webhook_id, WebhookDelivery.delivered.is_(True)
    )
    return session.scalars(stmt.limit(1)).first() is not None


def due_webhook_jobs(
    session: Session,
    *,
    schedule: Sequence[float],
    since: datetime,
    limit: int,
    now: datetime | None = None,
) -> list[str]:
    """Ended jobs (since `since`, oldest first) whose webhook message is not delivered and whose
    next attempt is due now: never tried, or tried `n` times (`n < len(schedule)`) with the last
    try `schedule[n]` seconds ago or more. One grouped query over the jobs and their attempts,
    so delivered messages, however many, never crowd out the due ones."""
    now = now or utcnow()
    message = literal("job-") + Job.id + literal("-") + Job.status
    tries = func.count(WebhookDelivery.id)
    last = func.max(WebhookDelivery.at)
    delivered = func.max(case((WebhookDelivery.delivered.is_(True), 1), else_=0))
    due = or_(
        tries == 0,
        *(
            and_(tries == n, last <= now - timedelta(seconds=delay))
            for n, delay in enumerate(schedule)
            if n > 0
        ),
    )
    stmt = (
        select(Job.id)
        .outerjoin(
            WebhookDelivery,
            and_(WebhookDelivery.job_id == Job.id, WebhookDelivery.webhook_id == message),
        )
        .where(
            Job.webhook_url.is_not(None),
            Job.status.in_(TERMINAL_JOB_STATUSES),
            Job.finished_at >= since,
        )
        .group_by(Job.id, Job.finished_at)
        .having(delivered == 0, tries < len(schedule), due)
        .order_by(Job.finished_at, Job.id)
        .limit(limit)
    )
    return list(session.scalars(stmt))
