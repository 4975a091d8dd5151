"""The ComfyFleet database schema (SQLAlchemy 2 typed ORM).

Identity: `users`, `api_clients` (client credentials owned by a user), `tokens` (bearer and join
tokens, stored as SHA-256), `audit_log` (admin actions). Work: `jobs`, `attempts` (one try of a
job on one node; its id is also the ComfyUI prompt_id), `outputs` (files a job produced) and
`owner_shares` (fair-share bookkeeping: when each owner was last served by the dispatcher).

Timestamps are timezone-aware UTC (`UTCDateTime`). On MySQL/MariaDB every table is InnoDB,
`utf8mb4` with the binary collation, so string comparison and uniqueness behave as on SQLite
(case-sensitive). The schema itself is created by the Alembic migrations in `migrations/`;
`tests/integration/test_store_migrations.py` checks that the two agree.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from comfyfleet.store.types import UTCDateTime, utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

MYSQL_TABLE_OPTIONS = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}
"""Table options on MySQL/MariaDB (ignored elsewhere); the migrations use the same."""


class JobStatus(StrEnum):
    QUEUED = "queued"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class AttemptStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    NODE_FAULT = "node_fault"
    CANCELLED = "cancelled"


JOB_STATUS_VALUES: tuple[str, ...] = tuple(s.value for s in JobStatus)
ATTEMPT_STATUS_VALUES: tuple[str, ...] = tuple(s.value for s in AttemptStatus)
ACTIVE_JOB_STATUSES: tuple[str, ...] = ("dispatched", "running")
"""A job holding (or about to hold) a node slot."""
TERMINAL_JOB_STATUSES: tuple[str, ...] = ("completed", "failed", "cancelled")
LIVE_ATTEMPT_STATUSES: tuple[str, ...] = ("pending", "running")

PRIORITIES: dict[str, int] = {"high": 0, "normal": 1, "low": 2}
"""Priority names and their levels (lower runs first). Prefect queue priority = level + 1."""


def priority_level(priority: str | int) -> int:
    """The level of a priority given by name (`high|normal|low`) or level (0..2)."""
    if isinstance(priority, int) and not isinstance(priority, bool):
        if priority in PRIORITIES.values():
            return priority
    elif isinstance(priority, str) and priority in PRIORITIES:
        return PRIORITIES[priority]
    raise ValueError(f"priority {priority!r}: expected one of high, normal, low")


def priority_name(level: int) -> str:
    """`high`, `normal` or `low` for a level."""
    for name, value in PRIORITIES.items():
        if value == level:
            return name
    raise ValueError(f"priority level {level!r}: expected 0 (high), 1 (normal) or 2 (low)")


def _in(column: str, values: tuple[str, ...] | type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(str(v)) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(_in("role", ("admin", "user", "service")), name="role"),
        MYSQL_TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="user")
    disabled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    max_running: Mapped[int | None]
    max_queued: Mapped[int | None]
    daily_gpu_seconds: Mapped[float | None]
    raw_graphs: Mapped[bool] = mapped_column(default=False, server_default=false())
    """May submit raw ComfyUI graphs (`/comfy/prompt`, `POST /api/v2/tasks {"graph"}`); admins
    always may."""

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def may_run_graphs(self) -> bool:
        return self.is_admin or bool(self.raw_graphs)

    @property
    def is_service(self) -> bool:
        return self.role == "service"

    def __repr__(self) -> str:
        return f"User(id={self.id!r}, username={self.username!r}, role={self.role!r})"


class ApiClient(Base):
    """Client credentials (the old API's `client_id`/`client_secret`); acts as its owner."""

    __tablename__ = "api_clients"
    __table_args__ = (MYSQL_TABLE_OPTIONS,)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    client_name: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(String(1000), default="")
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    secret_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    max_running: Mapped[int | None]
    max_queued: Mapped[int | None]
    daily_gpu_seconds: Mapped[float | None]

    owner: Mapped[User] = relationship()

    @property
    def client_id(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"ApiClient(id={self.id!r}, client_name={self.client_name!r})"


class Token(Base):
    """A bearer token (of a user or a client) or a join token; only its SHA-256 is stored."""

    __tablename__ = "tokens"
    __table_args__ = (
        CheckConstraint(_in("kind", ("bearer", "join")), name="kind"),
        MYSQL_TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    client_id: Mapped[str | None] = mapped_column(
        ForeignKey("api_clients.id", ondelete="CASCADE"), index=True
    )
    note: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    single_use: Mapped[bool] = mapped_column(default=False, server_default=false())
    """Join tokens: the first join uses it up (it is revoked then)."""

    def __repr__(self) -> str:
        return f"Token(id={self.id!r}, kind={self.kind!r}, user_id={self.user_id!r})"


class AuditEntry(Base):
    """One admin action: who did what to what."""

    __tablename__ = "audit_log"
    __table_args__ = (MYSQL_TABLE_OPTIONS,)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(255), default="")
    detail: Mapped[dict[str, Any] | None]

    def __repr__(self) -> str:
        return f"AuditEntry(id={self.id!r}, actor={self.actor!r}, action={self.action!r})"


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_in("status", JobStatus), name="status"),
        Index("ix_jobs_backlog", "status", "priority", "created_at"),
        Index("ix_jobs_owner_status", "owner_id", "status"),
        Index("ix_jobs_owner_created", "owner_id", "created_at"),
        MYSQL_TABLE_OPTIONS,
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    workflow: Mapped[str] = mapped_column(String(128))
    capability: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]]
    request: Mapped[dict[str, Any]]
    priority: Mapped[int] = mapped_column(default=1)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    client_id: Mapped[str | None] = mapped_column(ForeignKey("api_clients.id", ondelete="SET NULL"))
    pinned_node: Mapped[str | None] = mapped_column(String(64))
    node: Mapped[str | None] = mapped_column(String(64))
    progress_value: Mapped[int] = mapped_column(default=0)
    progress_max: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text)
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    batch_id: Mapped[str | None] = mapped_column(String(64), index=True)
    parent_run: Mapped[str | None] = mapped_column(String(64))
    """The Prefect flow run that queued the job (routed or batch run): its task run shows there."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    dispatched_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    gpu_seconds: Mapped[float] = mapped_column(default=0.0)
    node_faults: Mapped[int] = mapped_column(default=0)
    cancel_requested: Mapped[bool] = mapped_column(default=False)

    owner: Mapped[User] = relationship()
    attempts: Mapped[list[Attempt]] = relationship(
        back_populates="job", order_by="Attempt.number", passive_deletes=True
    )
    outputs: Mapped[list[Output]] = relationship(
        back_populates="job", order_by="Output.name", passive_deletes=True
    )

    @property
    def priority_name(self) -> str:
        return priority_name(self.priority)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_JOB_STATUSES

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, workflow={self.workflow!r}, status={self.status!r})"


class Attempt(Base):
    """One try of a job on one node; `id` = `<job id>-<number>` is also the ComfyUI prompt_id."""

    __tablename__ = "attempts"
    __table_args__ = (
        CheckConstraint(_in("status", AttemptStatus), name="status"),
        UniqueConstraint("job_id", "number"),
        Index("ix_attempts_live_lease", "status", "lease_expires_at"),
        Index("ix_attempts_node_holder", "node", "flow_run_id"),
        MYSQL_TABLE_OPTIONS,
    )

    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    number: Mapped[int]
    node: Mapped[str] = mapped_column(String(64), index=True)
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=AttemptStatus.PENDING.value)
    reason: Mapped[str | None] = mapped_column(Text)
    lease_expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None] = mapped_column(index=True)
    gpu_seconds: Mapped[float] = mapped_column(default=0.0)

    job: Mapped[Job] = relationship(back_populates="attempts")

    def __repr__(self) -> str:
        return f"Attempt(id={self.id!r}, node={self.node!r}, status={self.status!r})"


class Output(Base):
    """A file a job produced, in the output store (`path` is relative to `store.outputs_dir`)."""

    __tablename__ = "outputs"
    __table_args__ = (UniqueConstraint("job_id", "name"), MYSQL_TABLE_OPTIONS)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt_id: Mapped[str | None] = mapped_column(
        ForeignKey("attempts.id", ondelete="SET NULL"), index=True
    )
    name: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    content_type: Mapped[str] = mapped_column(String(128))
    node: Mapped[str | None] = mapped_column(String(64))
    prompt_id: Mapped[str | None] = mapped_column(String(64))
    comfy_node_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="outputs")

    def __repr__(self) -> str:
        return f"Output(job_id={self.job_id!r}, name={self.name!r}, size={self.size!r})"


class OwnerShare(Base):
    """Fair-share bookkeeping: when the dispatcher last served each owner."""

    __tablename__ = "owner_shares"
    __table_args__ = (MYSQL_TABLE_OPTIONS,)

    owner_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    last_served_at: Mapped[datetime | None]
    served_count: Mapped[int] = mapped_column(default=0)

    def __repr__(self) -> str:
        return f"OwnerShare(owner_id={self.owner_id!r}, last_served_at={self.last_served_at!r})"


def load_all_models() -> MetaData:
    """`Base.metadata` with every table of the store.

    Model modules may live beside this one (e.g. `store/webhooks.py`); importing each module of
    the package registers their tables, so Alembic autogenerate and the schema tests see them all.
    """
    import importlib
    import pkgutil

    import comfyfleet.store as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name != "migrations" and not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")
    return Base.metadata
