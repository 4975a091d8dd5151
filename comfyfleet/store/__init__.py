"""The ComfyFleet job store: SQLAlchemy models, repositories and Alembic migrations.

SQLite file by default (`database.url`), MySQL/MariaDB (`mysql+pymysql://…`) in production;
both are tested. One `Database` per process::

    db = Database.from_settings()          # or Database("mysql+pymysql://…")
    upgrade(db)                            # schema to head (also `comfyfleet db upgrade`)
    with db.session() as session:          # one transaction, committed at the end
        job = create_job(session, workflow="sd15-basic", capability="text_to_image",
                         params={...}, owner=user, priority="high")
    job = db.run(lambda s: claim_next_job(s, capabilities_free={"gpu-1": {"text_to_image"}}))

Repository functions take the session first (positionally or as `session=`), everything else
by keyword, and never commit. State changes are guarded updates whose result says whether they
happened (see `jobs.py`); `Database.run` retries a transaction on transient failures (server
restart, deadlock). Module map: `db` (engines, sessions, retries), `models`, `migrate`,
`users` (identity rows, audit), `jobs` (jobs, progress, terminal states, outputs),
`attempts` (attempts and leases), `dispatch` (backlog order, fair share, exactly-once claim,
node-fault requeue), `accounting` (GPU-seconds, quotas), `history` (REST JSON, exports).
Other model modules may live in this package (e.g. `webhooks`); each needs its own Alembic
revision, and `models.load_all_models()` registers them all for Alembic and the schema tests.
Hashing and authentication are in `comfyfleet.auth`.
"""

from comfyfleet.store.accounting import (
    Rollup,
    Usage,
    check_quota,
    gpu_seconds_rollup,
    gpu_seconds_today,
    usage,
)
from comfyfleet.store.attempts import (
    create_attempt,
    expired_leases,
    finish_attempt,
    get_attempt,
    list_attempts,
    live_attempt,
    live_attempts_by_node,
    mark_attempt_running,
    renew_lease,
    set_attempt_flow_run,
)
from comfyfleet.store.db import Database, is_retryable, make_engine, session_scope
from comfyfleet.store.dispatch import (
    DEFAULT_AGING_S,
    backlog_counts,
    backlog_order,
    claim_job,
    claim_next_job,
    expire_queued_jobs,
    requeue_job_after_node_fault,
)
from comfyfleet.store.errors import Conflict, InvalidInput, NotFound, QuotaExceeded, StoreError
from comfyfleet.store.history import (
    EXPORT_FIELDS,
    export_jobs,
    iter_jobs,
    job_record,
    job_to_dict,
)
from comfyfleet.store.jobs import (
    cancel_job,
    complete_job,
    count_jobs,
    create_job,
    fail_job,
    get_job,
    list_jobs,
    list_outputs,
    new_job_id,
    record_output,
    request_cancel,
    update_progress,
)
from comfyfleet.store.migrate import current_revision, downgrade, head_revision, upgrade
from comfyfleet.store.models import (
    ACTIVE_JOB_STATUSES,
    LIVE_ATTEMPT_STATUSES,
    PRIORITIES,
    TERMINAL_JOB_STATUSES,
    ApiClient,
    Attempt,
    AttemptStatus,
    AuditEntry,
    Base,
    Job,
    JobStatus,
    Output,
    OwnerShare,
    Token,
    User,
    load_all_models,
    priority_level,
    priority_name,
)
from comfyfleet.store.types import utcnow
from comfyfleet.store.users import (
    SERVICE_USER,
    audit,
    ensure_service_user,
    get_client,
    get_user,
    list_audit,
    list_clients,
    list_tokens,
    list_users,
    set_quotas,
    validate_username,
)

__all__ = [
    "ACTIVE_JOB_STATUSES",
    "DEFAULT_AGING_S",
    "EXPORT_FIELDS",
    "LIVE_ATTEMPT_STATUSES",
    "PRIORITIES",
    "SERVICE_USER",
    "TERMINAL_JOB_STATUSES",
    "ApiClient",
    "Attempt",
    "AttemptStatus",
    "AuditEntry",
    "Base",
    "Conflict",
    "Database",
    "InvalidInput",
    "Job",
    "JobStatus",
    "NotFound",
    "Output",
    "OwnerShare",
    "QuotaExceeded",
    "Rollup",
    "StoreError",
    "Token",
    "Usage",
    "User",
    "audit",
    "backlog_counts",
    "backlog_order",
    "cancel_job",
    "check_quota",
    "claim_job",
    "claim_next_job",
    "complete_job",
    "count_jobs",
    "create_attempt",
    "create_job",
    "current_revision",
    "downgrade",
    "ensure_service_user",
    "expire_queued_jobs",
    "expired_leases",
    "export_jobs",
    "fail_job",
    "finish_attempt",
    "get_attempt",
    "get_client",
    "get_job",
    "get_user",
    "gpu_seconds_rollup",
    "gpu_seconds_today",
    "head_revision",
    "is_retryable",
    "iter_jobs",
    "job_record",
    "job_to_dict",
    "list_attempts",
    "list_audit",
    "list_clients",
    "list_jobs",
    "list_outputs",
    "list_tokens",
    "list_users",
    "live_attempt",
    "live_attempts_by_node",
    "load_all_models",
    "make_engine",
    "mark_attempt_running",
    "new_job_id",
    "priority_level",
    "priority_name",
    "record_output",
    "renew_lease",
    "request_cancel",
    "requeue_job_after_node_fault",
    "session_scope",
    "set_attempt_flow_run",
    "set_quotas",
    "update_progress",
    "upgrade",
    "usage",
    "utcnow",
    "validate_username",
]
