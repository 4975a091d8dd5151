"""Prometheus metrics of the fleet, served by the gateway at `/metrics`.

Job metrics come from the job store at scrape time (the flows that finish jobs run in other
processes, so counting in this process would miss them); results are cached for `cache_s` so a
busy scraper cannot load the database:

- `comfyfleet_jobs{workflow,status}`: jobs in each status now (gauge);
- `comfyfleet_jobs_submitted_total{workflow}`, `comfyfleet_jobs_finished_total{workflow,status}`
  (`status` = completed | failed | cancelled);
- `comfyfleet_job_queue_wait_seconds{workflow}` (created → dispatched) and
  `comfyfleet_job_run_seconds{workflow}` (started → finished) histograms over finished jobs,
  accumulated incrementally (each job is counted once, when it has finished);
- `comfyfleet_backlog{capability,priority}`: queued jobs;
- `comfyfleet_gpu_seconds_total{node}`, `comfyfleet_attempts_total{node,status}`,
  `comfyfleet_failovers_total` (attempts that ended in a node fault, each followed by a new
  attempt elsewhere or by the job failing).

Node metrics come from the fleet monitor: it calls `set_node_metrics([...NodeMetrics])` after each
probe round (in the process that serves /metrics), or the gateway passes a `node_source` callable
that returns the current snapshot. Labels follow CONVENTIONS.md (`node="gpu-1"`):
`comfyfleet_node_up`, `comfyfleet_node_in_flight`, `comfyfleet_node_queue_depth`,
`comfyfleet_node_capacity`, `comfyfleet_node_circuit_state{state}` (1 for the current state).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from comfyfleet.store import TERMINAL_JOB_STATUSES, Database, priority_name
from comfyfleet.store.models import Attempt, Job

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
QUEUE_WAIT_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
RUN_TIME_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
CIRCUIT_STATES = ("closed", "open", "half_open", "quarantined")
_LATE_COMMIT = timedelta(seconds=120)
"""How far back each incremental scan looks again (a job's finished_at may be committed late)."""


@dataclass(frozen=True)
class NodeMetrics:
    """One node as the monitor sees it."""

    node: str
    up: bool
    in_flight: int = 0
    queue_depth: int = 0
    capacity: int = 0
    circuit: str = "closed"


_node_lock = threading.Lock()
_node_snapshot: dict[str, NodeMetrics] = {}


def set_node_metrics(nodes: Iterable[NodeMetrics]) -> None:
    """Replace the node snapshot (the monitor calls this after each probe round)."""
    snapshot = {n.node: n for n in nodes}
    with _node_lock:
        _node_snapshot.clear()
        _node_snapshot.update(snapshot)


def node_metrics() -> list[NodeMetrics]:
    with _node_lock:
        return list(_node_snapshot.values())


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.bounds = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        value = max(value, 0.0)
        self.total += value
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                return
        self.counts[-1] += 1

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out


class JobsCollector(Collector):
    """Job, backlog, attempt and GPU-seconds metrics read from the store (cached)."""

    def __init__(self, db: Database, *, cache_s: float = 2.0) -> None:
        self.db = db
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._cached: list[Metric] = []
        self._cached_at = 0.0
        self._watermark: datetime | None = None
        self._seen: dict[str, datetime] = {}
        self._wait: dict[str, _Histogram] = {}
        self._run: dict[str, _Histogram] = {}

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if time.monotonic() - self._cached_at > self.cache_s or not self._cached:
                self._cached = self.db.run(self._read, readonly=True)
                self._cached_at = time.monotonic()
            yield from self._cached

    def _observe_finished(self, session) -> None:  # type: ignore[no-untyped-def]
        stmt = select(
            Job.id,
            Job.workflow,
            Job.created_at,
            Job.dispatched_at,
            Job.started_at,
            Job.finished_at,
        ).where(Job.finished_at.is_not(None), Job.status.in_(TERMINAL_JOB_STATUSES))
        if self._watermark is not None:
            stmt = stmt.where(Job.finished_at >= self._watermark - _LATE_COMMIT)
        newest = self._watermark
        for job_id, workflow, created, dispatched, started, finished in session.execute(stmt):
            if job_id in self._seen:
                continue
            self._seen[job_id] = finished
            newest = finished if newest is None or finished > newest else newest
            begun = dispatched or started
            if begun is not None:
                wait = self._wait.setdefault(workflow, _Histogram(QUEUE_WAIT_BUCKETS))
                wait.observe((begun - created).total_seconds())
            if started is not None:
                run = self._run.setdefault(workflow, _Histogram(RUN_TIME_BUCKETS))
                run.observe((finished - started).total_seconds())
        self._watermark = newest
        if newest is not None:
            horizon = newest - 2 * _LATE_COMMIT
            self._seen = {k: v for k, v in self._seen.items() if v >= horizon}

    def _read(self, session) -> list[Metric]:  # type: ignore[no-untyped-def]
        metrics: list[Metric] = []
        jobs = GaugeMetricFamily(
            "comfyfleet_jobs", "Jobs in each status now.", labels=["workflow", "status"]
        )
        submitted = CounterMetricFamily(
            "comfyfleet_jobs_submitted", "Jobs submitted.", labels=["workflow"]
        )
        finished = CounterMetricFamily(
            "comfyfleet_jobs_finished", "Jobs that ended, by how.", labels=["workflow", "status"]
        )
        per_workflow: dict[str, int] = {}
        rows = session.execute(
            select(Job.workflow, Job.status, func.count()).group_by(Job.workflow, Job.status)
        )
        for workflow, status, count in rows:
            jobs.add_metric([workflow, status], int(count))
            per_workflow[workflow] = per_workflow.get(workflow, 0) + int(count)
            if status in TERMINAL_JOB_STATUSES:
                finished.add_metric([workflow, status], int(count))
        for workflow, count in per_workflow.items():
            submitted.add_metric([workflow], count)
        metrics += [jobs, submitted, finished]

        backlog = GaugeMetricFamily(
            "comfyfleet_backlog", "Queued jobs.", labels=["capability", "priority"]
        )
        for capability, level, count in session.execute(
            select(Job.capability, Job.priority, func.count())
            .where(Job.status == "queued")
            .group_by(Job.capability, Job.priority)
        ):
            backlog.add_metric([capability, priority_name(level)], int(count))
        metrics.append(backlog)

        gpu = CounterMetricFamily(
            "comfyfleet_gpu_seconds", "ComfyUI execution seconds, by node.", labels=["node"]
        )
        attempts = CounterMetricFamily(
            "comfyfleet_attempts",
            "Finished attempts by node and outcome.",
            labels=["node", "status"],
        )
        faults = 0
        for node, status, count in session.execute(
            select(Attempt.node, Attempt.status, func.count())
            .where(Attempt.finished_at.is_not(None))
            .group_by(Attempt.node, Attempt.status)
        ):
            attempts.add_metric([node, status], int(count))
            if status == "node_fault":
                faults += int(count)
        for node, seconds in session.execute(
            select(Attempt.node, func.coalesce(func.sum(Attempt.gpu_seconds), 0.0)).group_by(
                Attempt.node
            )
        ):
            gpu.add_metric([node], float(seconds or 0.0))
        failovers = CounterMetricFamily(
            "comfyfleet_failovers", "Attempts that ended in a node fault (the job moved on)."
        )
        failovers.add_metric([], faults)
        metrics += [gpu, attempts, failovers]

        self._observe_finished(session)
        for name, doc, hists in (
            ("comfyfleet_job_queue_wait_seconds", "Queue wait of finished jobs.", self._wait),
            ("comfyfleet_job_run_seconds", "Run time of finished jobs.", self._run),
        ):
            family = HistogramMetricFamily(name, doc, labels=["workflow"])
            for workflow, hist in sorted(hists.items()):
                family.add_metric([workflow], hist.cumulative(), sum_value=hist.total)
            metrics.append(family)
        return metrics


class NodesCollector(Collector):
    """Per-node gauges from `set_node_metrics` or a `source` callable."""

    def __init__(self, source: Callable[[], Iterable[NodeMetrics]] | None = None) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        nodes = list(self.source()) if self.source is not None else node_metrics()
        up = GaugeMetricFamily(
            "comfyfleet_node_up", "1 when the node answers probes.", labels=["node"]
        )
        in_flight = GaugeMetricFamily(
            "comfyfleet_node_in_flight",
            "Attempts dispatched or running on the node.",
            labels=["node"],
        )
        depth = GaugeMetricFamily(
            "comfyfleet_node_queue_depth",
            "ComfyUI's own queue (running + pending).",
            labels=["node"],
        )
        capacity = GaugeMetricFamily(
            "comfyfleet_node_capacity", "Jobs the node runs at once.", labels=["node"]
        )
        circuit = GaugeMetricFamily(
            "comfyfleet_node_circuit_state",
            "1 for the node's circuit state.",
            labels=["node", "state"],
        )
        for node in nodes:
            up.add_metric([node.node], 1.0 if node.up else 0.0)
            in_flight.add_metric([node.node], node.in_flight)
            depth.add_metric([node.node], node.queue_depth)
            capacity.add_metric([node.node], node.capacity)
            for state in CIRCUIT_STATES:
                circuit.add_metric([node.node, state], 1.0 if node.circuit == state else 0.0)
        yield from (up, in_flight, depth, capacity, circuit)


def build_registry(
    db: Database, *, node_source: Callable[[], Iterable[NodeMetrics]] | None = None
) -> CollectorRegistry:
    """A registry with the job and node collectors (one per gateway app)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobsCollector(db))
    registry.register(NodesCollector(node_source))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition of a registry."""
    return generate_latest(registry)
