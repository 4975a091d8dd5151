"""What the job store says about the fleet's nodes, read once per health round of the fleet
service: attempts in flight, recent attempt faults, admin releases and inventory refresh requests,
the latest run per node."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from comfyfleet.store.attempts import live_attempts_by_node
from comfyfleet.store.models import Attempt, AuditEntry, Job


@dataclass
class FleetFacts:
    """The store's facts about the nodes (by node id)."""

    in_flight: dict[str, int] = field(default_factory=dict)
    faults: dict[str, list[float]] = field(default_factory=dict)
    """Finish times (epoch seconds) of attempts that had started and ended `node_fault`."""
    releases: dict[str, float] = field(default_factory=dict)
    """The last `node.enable` audit entry (an admin's release from quarantine)."""
    refreshes: dict[str, float] = field(default_factory=dict)
    """The last `node.refresh` audit entry (an admin asks for the node's inventory again)."""
    last_run: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    """(workflow, params) of the latest attempt that started on the node."""


def fleet_facts(session: Session, *, since: datetime) -> FleetFacts:
    """The facts, faults and releases counted from `since`."""
    facts = FleetFacts(in_flight=live_attempts_by_node(session))
    for node, finished in session.execute(
        select(Attempt.node, Attempt.finished_at).where(
            Attempt.status == "node_fault", Attempt.started_at.is_not(None),
            Attempt.finished_at >= since,
        )
    ):  # fmt: skip
        facts.faults.setdefault(node, []).append(finished.timestamp())
    for action, target, at in session.execute(
        select(AuditEntry.action, AuditEntry.target, func.max(AuditEntry.at))
        .where(AuditEntry.action.in_(("node.enable", "node.refresh")), AuditEntry.at >= since)
        .group_by(AuditEntry.action, AuditEntry.target)
    ):
        (facts.releases if action == "node.enable" else facts.refreshes)[target] = at.timestamp()
    latest = (
        select(Attempt.node, func.max(Attempt.started_at).label("at"))
        .where(Attempt.started_at.is_not(None))
        .group_by(Attempt.node)
        .subquery()
    )
    for node, workflow, params in session.execute(
        select(Attempt.node, Job.workflow, Job.params)
        .join(latest, and_(Attempt.node == latest.c.node, Attempt.started_at == latest.c.at))
        .join(Job, Job.id == Attempt.job_id)
    ):
        facts.last_run[node] = (workflow, params or {})
    return facts
