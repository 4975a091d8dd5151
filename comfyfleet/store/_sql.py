"""Small SQL helpers shared by the repository modules."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import literal, update
from sqlalchemy.orm import Session

from comfyfleet.store.models import Job
from comfyfleet.store.types import UTCDateTime

NO_SYNC = {"synchronize_session": False}
"""Execution options of bulk UPDATEs: the row count is the truth; objects are refreshed after."""


def ts(value: datetime) -> Any:
    """A timestamp as a typed SQL literal (for use inside SQL functions such as COALESCE)."""
    return literal(value, UTCDateTime())


def guarded_job_update(
    session: Session, job_id: str, statuses: Iterable[str], **values: Any
) -> bool:
    """`UPDATE jobs SET … WHERE id = :id AND status IN (:statuses)`; whether the row changed."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(list(statuses)))
        .values(**values)
        .execution_options(**NO_SYNC),
    )
    return result.rowcount == 1


def refresh_job(session: Session, job_id: str) -> Job | None:
    """The job as it is in the database now (the session's copy is overwritten)."""
    return session.get(Job, job_id, populate_existing=True)
