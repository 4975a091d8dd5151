"""Placement on unequal nodes: earliest completion first (the `least_loaded` strategy's planner).

On a fleet whose nodes run the same job at different speeds, "the least loaded node with a free
slot" sends the last jobs of a burst to slow nodes, and the burst ends when the slowest of them
finishes. The planner instead plays list scheduling over the head of the backlog, in the order it
is served: each job is booked on the eligible node where it would *finish* first — the node's
work ahead of it (its live attempts and earlier bookings, at that node's speed for each) plus its
own time there — whether or not that node has a free slot now. A live attempt that has started
counts for what is left of it (its estimate less the time it has run, never below zero), so a
node about to free a slot is seen as such. A job booked on a node with a free
slot is placed; a job booked on a full node is held in the backlog (it will take the slot that
node frees, which is sooner than finishing elsewhere), and the jobs after it are booked around it.

Speeds come from the store: each node's execution seconds per job *shape* (`Estimates`, an
exponentially weighted mean of the attempts that completed; the shape is the workflow and its
numeric parameters but the seed — size, steps, frames, a test job's seconds — since those set
how long a job takes; a raw graph's shape is its class types, hashed: see `shape`). The planner
only decides when every candidate node has an estimate for
the job's shape and they differ by more than `UNIFORM_WITHIN`; otherwise (a uniform fleet, a new
node, a job of a new shape) the router's strategy places the job as usual.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from comfyfleet.catalog.raw import GRAPH_WORKFLOW
from comfyfleet.fleet.router import JobView, NodeView, busy, eligible, free_slots

ALPHA = 0.3
"""Weight of the newest attempt in a node's estimate."""
UNIFORM_WITHIN = 0.1
"""Estimates within this fraction of each other: the nodes are equal for this workflow."""


def shape(workflow: str, params: Mapping[str, Any]) -> str:
    """What sets a job's duration on a node: its workflow and numeric parameters (no seed).

    A raw graph (`{"graph": …}`: no numeric parameters of its own) is `graph#<hash>` of its
    sorted class types: graphs of the same kind are timed together, unlike ones, apart. Cheap:
    the planner shapes every job of the backlog's head and every live attempt on each tick."""
    if workflow == GRAPH_WORKFLOW:
        return _graph_shape(workflow, params.get("graph"))
    numbers = sorted(
        (k, v) for k, v in params.items()
        if k != "seed" and isinstance(v, int | float) and not isinstance(v, bool)
    )  # fmt: skip
    return workflow + "".join(f"|{k}={v:g}" for k, v in numbers)


def _graph_shape(workflow: str, graph: Any) -> str:
    if not isinstance(graph, Mapping):
        return workflow
    types = sorted({str(n.get("class_type")) for n in graph.values() if isinstance(n, Mapping)})
    digest = hashlib.blake2b("\0".join(types).encode(), digest_size=6).hexdigest()
    return f"{workflow}#{digest}"


@dataclass
class Estimates:
    """Seconds a job of each shape takes on each node (EWMA of completed attempts)."""

    seconds: dict[tuple[str, str], float] = field(default_factory=dict)
    since: datetime | None = None
    """The newest completion learnt from (the next read starts there)."""

    def learn(self, rows: Iterable[tuple[str, str, float, datetime]]) -> None:
        """`(node, shape, gpu_seconds, finished_at)` rows, oldest first."""
        for node, kind, seconds, finished in rows:
            if seconds > 0:
                key = (kind, node)
                old = self.seconds.get(key)
                self.seconds[key] = seconds if old is None else old + ALPHA * (seconds - old)
            if self.since is None or finished > self.since:
                self.since = finished

    def of(self, kind: str, nodes: Sequence[NodeView]) -> dict[str, float] | None:
        """Each node's estimate for jobs of shape `kind`; None unless every node has one and
        they are unequal (then the router decides)."""
        got = {n.id: self.seconds.get((kind, n.id)) for n in nodes}
        if not got or any(v is None for v in got.values()):
            return None
        values = [v for v in got.values() if v is not None]
        if max(values) <= min(values) * (1 + UNIFORM_WITHIN):
            return None
        return {k: v for k, v in got.items() if v is not None}


@dataclass(frozen=True)
class Booking:
    job_id: str
    node: str
    placed: bool
    """False: held for a node with no free slot now."""


Work = Mapping[str, Sequence[tuple[str, datetime | None]]]
"""Each node's live attempts as `(shape, started_at)`; `started_at` None: not started yet."""


def plan(
    jobs: Sequence[tuple[str, str, JobView]],
    views: Sequence[NodeView],
    estimates: Estimates,
    *,
    work: Work | None = None,
    now: datetime | None = None,
) -> tuple[list[Booking], list[str]]:
    """Book `(job id, shape, job view)` in order (see the module docstring). Returns the
    bookings the planner made, and the ids of jobs it left to the router (no usable
    estimates). Without `work`, each busy slot counts as one whole job of the booked shape."""
    nodes = {v.id: v for v in views}

    def ahead_of(node: NodeView, seconds: float) -> float:
        """Seconds of work on `node` before a job booked now could start."""
        if work is None or now is None:
            return busy(node) * seconds
        total = node.queue_depth * seconds  # foreign prompts: assume the booked shape
        for kind, started in work.get(node.id, ()):
            each = estimates.seconds.get((kind, node.id), seconds)
            ran = (now - started).total_seconds() if started is not None else 0.0
            total += max(each - ran, 0.0)
        return total

    ahead: dict[str, float] = {}  # seconds of work booked on each node so far
    bookings: list[Booking] = []
    routed: list[str] = []
    for job_id, kind, view in jobs:
        candidates = eligible(view, nodes.values())
        seconds = estimates.of(kind, candidates) if candidates else None
        if seconds is None:
            routed.append(job_id)
            continue
        for node in candidates:
            if node.id not in ahead:
                ahead[node.id] = ahead_of(node, seconds[node.id])
        best = min(candidates, key=lambda n: (ahead[n.id] + seconds[n.id], n.id))
        ahead[best.id] += seconds[best.id]
        placed = free_slots(nodes[best.id]) > 0
        if placed:
            nodes[best.id] = replace(nodes[best.id], in_flight=nodes[best.id].in_flight + 1)
        bookings.append(Booking(job_id, best.id, placed))
    return bookings, routed
