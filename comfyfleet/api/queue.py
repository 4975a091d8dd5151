"""Where queued jobs stand: each one's position and the fleet's free slots, for people waiting.

A queued job's **position** is how many queued jobs the dispatcher would place before it under
the current priorities, aging and fair share: the store's own serving order
(`comfyfleet.store.backlog_head`, which applies `fair_order`), counting only the jobs ahead that
compete with it for a node (a node that can run both). Jobs whose owner (or client) has no room
under `max_running` are not in that order yet; they read as behind everyone in it.

**Free slots**: capacity minus live attempts on every node in rotation, from the fleet's node
snapshot (the fleet service's file, no Prefect call) and one count of live attempts.

One `QueueView` per gateway reads both at most once per `ttl_s`, whoever asks (the UI's
waiting people, REST job status): one backlog read a second, whatever the number of watchers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from comfyfleet.fleet.router import served_capabilities
from comfyfleet.store import Database, backlog_head, live_attempts_by_node

BACKLOG_LIMIT = 1000
"""Jobs of the backlog head read for positions; a job further back reads as `BACKLOG_LIMIT`."""


@dataclass(frozen=True)
class QueueSnapshot:
    """Positions of queued jobs and the fleet's free slots at `taken_at` (monotonic)."""

    positions: dict[str, int] = field(default_factory=dict)
    ahead_of_blocked: int = 0
    """The position of a queued job missing from `positions` (its owner has no room)."""
    free_slots: int = 0
    slots: int = 0
    taken_at: float = 0.0

    def position(self, job_id: str) -> int:
        return self.positions.get(job_id, self.ahead_of_blocked)


def _competing_positions(
    order: list[Any], nodes: dict[str, set[str]], everything: set[str]
) -> dict[str, int]:
    """For each job of the serving order: how many jobs before it could take a node it needs."""

    def reach(job: Any) -> frozenset[str]:
        if job.pinned_node is not None:
            caps = nodes.get(job.pinned_node, everything)
            return frozenset({job.pinned_node}) if job.capability in caps else frozenset()
        return frozenset(n for n, caps in nodes.items() if job.capability in caps)

    seen: dict[frozenset[str], int] = {}
    positions: dict[str, int] = {}
    for job in order:
        mine = reach(job)
        positions[job.id] = sum(n for theirs, n in seen.items() if theirs & mine or not mine)
        seen[mine] = seen.get(mine, 0) + 1
    return positions


class QueueView:
    """The shared, cached `QueueSnapshot` of one process (thread-safe; call it off the loop)."""

    def __init__(
        self,
        db: Database,
        nodes: Callable[[], Iterable[Any]],
        *,
        capabilities: Callable[[], Iterable[str]] = lambda: (),
        ttl_s: float = 1.0,
    ) -> None:
        self.db = db
        self.nodes = nodes
        self.capabilities = capabilities
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._cached = QueueSnapshot()

    def snapshot(self) -> QueueSnapshot:
        """The current snapshot (read again when older than `ttl_s`)."""
        with self._lock:
            if time.monotonic() - self._cached.taken_at > self.ttl_s or not self._cached.taken_at:
                self._cached = self._read()
            return self._cached

    def _read(self) -> QueueSnapshot:
        known = [n for n in self.nodes() if getattr(n, "enabled", True)]
        in_rotation = [n for n in known if getattr(n, "state", "up") == "up"]
        nodes = {n.id: set(served_capabilities(n.capabilities)) for n in known}
        everything = set(self.capabilities()) | {c for caps in nodes.values() for c in caps}
        plan: dict[str, set[str]] | set[str] = nodes if nodes else everything

        def read(session: Any) -> tuple[list[Any], dict[str, int]]:
            order = backlog_head(session, capabilities=plan, limit=BACKLOG_LIMIT) if plan else []
            return order, live_attempts_by_node(session)

        order, busy = self.db.run(read, readonly=True)
        slots = sum(n.capacity for n in in_rotation)
        free = sum(max(n.capacity - busy.get(n.id, 0), 0) for n in in_rotation)
        return QueueSnapshot(
            positions=_competing_positions(order, nodes or {"": everything}, everything),
            ahead_of_blocked=len(order),
            free_slots=free,
            slots=slots,
            taken_at=time.monotonic(),
        )
