"""Node shifts: the flow run working each node, and how attempts pass to it.

A node's **shift** is one long-lived Prefect flow run (`node-shift/<node>`) that runs every
attempt the dispatcher gives the node, each as a task run of its own. At most one shift works a
node: the node's `shifts` row names it (`shift_id` = its flow run id) and the shift keeps the row
by beating (`beat`, every couple of seconds). Before a shift run starts, the row already names it
(`reserve`, by whoever asked for the run: the fleet service, or a shift handing over), so nobody
asks for a second one meanwhile; the run then claims the row (`claim_node`). A row that stops
beating for `stale_after_s` (worker killed, host lost, the reserved run never started) can be
taken over.

Attempts: the dispatcher creates one for a node (`pending`, no `flow_run_id`). The node's shift
takes it (`take_work`: `flow_run_id` = the shift, a first lease) with a guarded update, so one
shift takes it once, then keeps its lease alive with every beat. An attempt whose holder is gone
is handed back (`untake`: no holder, a fresh lease): the node's next shift takes it again and
follows the prompt it finds on the node (the prompt id is the attempt id), so nothing runs
twice. An attempt no shift took yet can still leave its node (`move_untaken`), as when the node
goes out of rotation.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, and_, delete, or_, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from comfyfleet.store._sql import NO_SYNC
from comfyfleet.store.dispatch import requeue_job_after_node_fault
from comfyfleet.store.jobs import cancel_job
from comfyfleet.store.models import (
    LIVE_ATTEMPT_STATUSES,
    MYSQL_TABLE_OPTIONS,
    Attempt,
    Base,
    Job,
)
from comfyfleet.store.types import utcnow

MOVED = "moved"
"""`flow_run_id` of an attempt moved off its node before a shift took it."""


class Shift(Base):
    """The shift working a node (one row per node; `holder` empty while only reserved)."""

    __tablename__ = "shifts"
    __table_args__ = (MYSQL_TABLE_OPTIONS,)

    node: Mapped[str] = mapped_column(String(64), primary_key=True)
    shift_id: Mapped[str] = mapped_column(String(64))
    holder: Mapped[str] = mapped_column(String(255), default="")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"Shift(node={self.node!r}, shift_id={self.shift_id!r}, holder={self.holder!r})"

    def live(self, *, stale_after_s: float, now: datetime | None = None) -> bool:
        """Beating (or reserved) within `stale_after_s`."""
        now = now or utcnow()
        return self.heartbeat_at > now - timedelta(seconds=stale_after_s)

    def working(self, *, stale_after_s: float, now: datetime | None = None) -> bool:
        """Claimed by its shift (not only reserved) and beating: the node takes work."""
        return bool(self.holder) and self.live(stale_after_s=stale_after_s, now=now)


@dataclass(frozen=True)
class Work:
    """An attempt a shift took: what it needs to run it."""

    attempt_id: str
    job_id: str
    node: str
    workflow: str
    capability: str
    params: dict[str, Any]
    owner_id: int
    fresh: bool
    """Never held before, so its prompt cannot be on the node yet. An attempt handed back from a
    lost holder is not fresh: the node is asked first, and a prompt it has is followed."""
    parent_run: str | None = None
    """The Prefect flow run that queued the job, if one did (its task run is shown there)."""


def _row(session: Session, node: str) -> Shift | None:
    return session.scalars(select(Shift).where(Shift.node == node).with_for_update()).one_or_none()


def reserve(
    session: Session, *, node: str, shift_id: str, stale_after_s: float,
    now: datetime | None = None,
) -> bool:  # fmt: skip
    """Name `shift_id` (a run about to start) as the node's shift, if the node has no live one.
    False: a live shift (or a fresh reservation) is there."""
    now = now or utcnow()
    row = _row(session, node)
    if row is None:
        session.add(Shift(node=node, shift_id=shift_id, holder="", started_at=now,
                          heartbeat_at=now))  # fmt: skip
        session.flush()
        return True
    if row.live(stale_after_s=stale_after_s, now=now):
        return False
    row.shift_id, row.holder, row.started_at, row.heartbeat_at = shift_id, "", now, now
    return True


def claim_node(
    session: Session, *, node: str, shift_id: str, holder: str, stale_after_s: float,
    now: datetime | None = None,
) -> bool:  # fmt: skip
    """The shift run `shift_id` starts working the node: the row is reserved for it, or free,
    or stale. False when another live shift has it (the run then ends at once)."""
    now = now or utcnow()
    row = _row(session, node)
    if row is None:
        session.add(Shift(node=node, shift_id=shift_id, holder=holder, started_at=now,
                          heartbeat_at=now))  # fmt: skip
        session.flush()
        return True
    if row.shift_id != shift_id and row.live(stale_after_s=stale_after_s, now=now):
        return False
    row.shift_id, row.holder, row.started_at, row.heartbeat_at = shift_id, holder, now, now
    return True


def beat(
    session: Session, *, node: str, shift_id: str, lease_s: float, now: datetime | None = None
) -> bool:
    """The shift's heartbeat, and the leases of every live attempt it holds renewed (one
    statement each). False when the node's row names another shift now: take no new work
    (the attempts it holds still run to their end)."""
    now = now or utcnow()
    session.execute(
        update(Attempt)
        .where(Attempt.flow_run_id == shift_id, Attempt.status.in_(LIVE_ATTEMPT_STATUSES))
        .values(lease_expires_at=now + timedelta(seconds=lease_s))
        .execution_options(**NO_SYNC)
    )
    kept = session.execute(
        update(Shift)
        .where(Shift.node == node, Shift.shift_id == shift_id)
        .values(heartbeat_at=now)
        .execution_options(**NO_SYNC)
    ).rowcount
    return kept == 1


def hand_over(
    session: Session, *, node: str, shift_id: str, successor_id: str, now: datetime | None = None
) -> bool:
    """A shift leaves the node to its successor run (reserved for it); False if the row was no
    longer this shift's."""
    now = now or utcnow()
    return (
        session.execute(
            update(Shift)
            .where(Shift.node == node, Shift.shift_id == shift_id)
            .values(shift_id=successor_id, holder="", started_at=now, heartbeat_at=now)
            .execution_options(**NO_SYNC)
        ).rowcount
        == 1
    )


def end_shift(session: Session, *, node: str, shift_id: str) -> bool:
    """The shift leaves the node with nobody named after it."""
    gone = session.execute(delete(Shift).where(Shift.node == node, Shift.shift_id == shift_id))
    return gone.rowcount == 1


def node_shifts(session: Session) -> dict[str, Shift]:
    """Every node's shift row."""
    return {row.node: row for row in session.scalars(select(Shift))}


def take_work(
    session: Session, *, shifts: dict[str, str], lease_s: float,
    nodes_taking: Collection[str] | None = None, now: datetime | None = None,
) -> tuple[list[Work], list[str]]:  # fmt: skip
    """For the shifts of one process (`{node: shift id}`): the attempts given to their nodes
    that nobody holds, now taken (first lease set; only for `nodes_taking`, default all), and the
    ids of attempts they hold whose job asks to be cancelled. One read; one guarded update per
    attempt taken. An attempt nobody holds whose job asks to be cancelled is cancelled here: it
    never runs."""
    if not shifts:
        return [], []
    now = now or utcnow()
    rows = session.execute(
        select(
            Attempt.id,
            Attempt.node,
            Attempt.flow_run_id,
            Attempt.lease_expires_at,
            Job.id,
            Job.workflow,
            Job.capability,
            Job.params,
            Job.owner_id,
            Job.cancel_requested,
            Job.parent_run,
        )
        .join(Job, Job.id == Attempt.job_id)
        .where(
            Attempt.node.in_(list(shifts)),
            Attempt.status.in_(LIVE_ATTEMPT_STATUSES),
            or_(
                Attempt.flow_run_id.is_(None),
                and_(
                    Attempt.flow_run_id.in_(list(shifts.values())),
                    Job.cancel_requested.is_(True),
                ),
            ),
        )
        .order_by(Attempt.created_at)
    ).all()
    work: list[Work] = []
    cancels: list[str] = []
    for (attempt_id, node, held_by, lease, job_id, workflow, capability, params, owner,
         cancel, parent) in rows:  # fmt: skip
        if held_by is not None:
            cancels.append(attempt_id)
            continue
        if nodes_taking is not None and node not in nodes_taking:
            continue
        if cancel:  # cancelled before any shift took it: it never runs
            cancel_job(session, job_id=job_id, now=now)
            continue
        taken = session.execute(
            update(Attempt)
            .where(
                Attempt.id == attempt_id,
                Attempt.flow_run_id.is_(None),
                Attempt.status.in_(LIVE_ATTEMPT_STATUSES),
            )
            .values(flow_run_id=shifts[node], lease_expires_at=now + timedelta(seconds=lease_s))
            .execution_options(**NO_SYNC)
        ).rowcount
        if taken == 1:
            work.append(Work(attempt_id, job_id, node, workflow, capability, dict(params or {}),
                             owner, fresh=lease is None, parent_run=parent))  # fmt: skip
    return work, cancels


def hold(
    session: Session, *, attempt_id: str, holder: str, lease_s: float,
    now: datetime | None = None,
) -> bool:  # fmt: skip
    """A run started from Prefect directly holds its own attempt (as a shift would)."""
    now = now or utcnow()
    return (
        session.execute(
            update(Attempt)
            .where(Attempt.id == attempt_id, Attempt.status.in_(LIVE_ATTEMPT_STATUSES))
            .values(flow_run_id=holder, lease_expires_at=now + timedelta(seconds=lease_s))
            .execution_options(**NO_SYNC)
        ).rowcount
        == 1
    )


def untake(
    session: Session, *, attempt_id: str, lease_s: float, now: datetime | None = None
) -> bool:
    """Hand a live attempt back to its node's shift (its holder is gone); the lease gives the
    next shift time to take it before the attempt counts as lost again."""
    now = now or utcnow()
    return (
        session.execute(
            update(Attempt)
            .where(Attempt.id == attempt_id, Attempt.status.in_(LIVE_ATTEMPT_STATUSES))
            .values(flow_run_id=None, lease_expires_at=now + timedelta(seconds=lease_s))
            .execution_options(**NO_SYNC)
        ).rowcount
        == 1
    )


def untaken_attempts(session: Session, *, nodes: list[str] | None = None) -> list[Attempt]:
    """Attempts given to a node that no shift has taken yet, oldest first."""
    stmt = select(Attempt).where(
        Attempt.status == "pending", Attempt.flow_run_id.is_(None),
        Attempt.lease_expires_at.is_(None),
    )  # fmt: skip
    if nodes is not None:
        stmt = stmt.where(Attempt.node.in_(nodes))
    return list(session.scalars(stmt.order_by(Attempt.created_at)))


def move_untaken(session: Session, *, attempt_id: str, reason: str) -> str | None:
    """An attempt no shift has taken leaves its node: the job goes back to the backlog (as after
    a node fault: comfyfleet.store.dispatch). None when a shift took it meanwhile (it runs there)
    or it had ended; else the job's status."""
    attempt = session.get(Attempt, attempt_id)
    moved = session.execute(
        update(Attempt)
        .where(Attempt.id == attempt_id, Attempt.flow_run_id.is_(None), Attempt.status == "pending")
        .values(flow_run_id=MOVED)
        .execution_options(**NO_SYNC)
    ).rowcount
    if moved != 1 or attempt is None:
        return None
    return requeue_job_after_node_fault(
        session, job_id=attempt.job_id, attempt_id=attempt_id, reason=reason
    )
