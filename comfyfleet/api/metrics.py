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

The serving process's own responsiveness (`LoopLag`, started with the gateway):
`comfyfleet_event_loop_lag_seconds` (histogram: how late the event loop woke a sleeper, sampled
every `LAG_INTERVAL_S`; a handler that blocks the loop shows here) and
`comfyfleet_event_loop_lag_max_seconds` (the worst since the process started), and
`comfyfleet_event_loop_held_seconds` / `_max_seconds` (the longest the loop ran callbacks without
polling for I/O: what a handler that blocks the loop adds, without the OS's scheduling delays).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session

from comfyfleet.store import TERMINAL_JOB_STATUSES, Database, backlog_counts, priority_name
from comfyfleet.store.stats import (
    attempt_counts,
    finished_job_times,
    gpu_seconds_by_node,
    job_counts,
)

log = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
QUEUE_WAIT_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
RUN_TIME_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LAG_INTERVAL_S = 0.1
HELD_REPORT_S = 0.1
"""A stretch the loop holds longer than this is logged with the stack that holds it."""
WATCHDOG_POLL_S = 0.05
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

    def _observe_finished(self, session: Session) -> None:
        since = self._watermark - _LATE_COMMIT if self._watermark is not None else None
        newest = self._watermark
        for job_id, workflow, _, created, dispatched, started, finished in finished_job_times(
            session, since=since
        ):
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

    def _read(self, session: Session) -> list[Metric]:
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
        for workflow, status, count in job_counts(session):
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
        for capability, level, count in backlog_counts(session):
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
        for node, status, count, _ in attempt_counts(session, finished=True):
            attempts.add_metric([node, status], int(count))
            if status == "node_fault":
                faults += int(count)
        for node, seconds in gpu_seconds_by_node(session).items():
            gpu.add_metric([node], seconds)
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


class LoopLag(Collector):
    """Measures the event loop it runs on, two ways:

    - **lag**: every `interval_s` it sleeps and records how much later than asked it woke up
      (what a request waiting on this loop feels: a blocked loop, and also a process the OS
      did not schedule on a busy machine);
    - **held**: the longest stretch, per interval, that the loop ran callbacks without going
      back to wait for I/O (timed around the loop's selector): a handler that blocks the loop
      (a synchronous database call, a password hash) shows here, scheduling delays mostly not.

    Start it on the loop (`start()`), stop it with `stop()`."""

    def __init__(self, *, interval_s: float = LAG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.histogram = _Histogram(LAG_BUCKETS)
        self.held = _Histogram(LAG_BUCKETS)
        self.last = 0.0
        self.max = 0.0
        self.held_max = 0.0
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self._left_select: float | None = None
        self._in_callbacks = False
        self._held_window = 0.0
        self._watchdog: threading.Thread | None = None
        self._loop_thread = 0

    def start(self) -> None:
        if self._task is None or self._task.done():
            loop = asyncio.get_running_loop()
            self._time_selector(loop)
            self._task = loop.create_task(self._run())
            if self._watchdog is None:
                self._loop_thread = threading.get_ident()
                self._watchdog = threading.Thread(
                    target=self._watch, name="loop-watchdog", daemon=True
                )
                self._watchdog.start()

    def _watch(self) -> None:
        """Log where the loop is when it holds on to a stretch longer than the report
        threshold (once per stretch): the handler that blocks it, named."""
        reported: float | None = None
        while self._task is not None:
            time.sleep(WATCHDOG_POLL_S)
            left = self._left_select
            if left is None or not self._in_callbacks:
                continue
            held = time.perf_counter() - left
            if held < HELD_REPORT_S or reported == left:
                continue
            reported = left
            frame = sys._current_frames().get(self._loop_thread)
            stack = "".join(traceback.format_stack(frame, limit=40)) if frame else "?"
            log.warning("event loop held for %.0f ms so far, at:\n%s", held * 1000, stack)

    def _time_selector(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wrap the loop's selector to time the stretches spent outside it (CPython's
        selector event loops; other loops report lag only)."""
        selector = getattr(loop, "_selector", None)
        if selector is None or getattr(selector, "_comfyfleet_timed", False):
            return
        original = selector.select
        clock = time.perf_counter

        def select(timeout: float | None = None) -> Any:
            self._in_callbacks = False
            if self._left_select is not None:
                held = clock() - self._left_select
                if held > self._held_window:
                    self._held_window = held
            try:
                return original(timeout)
            finally:
                self._left_select = clock()
                self._in_callbacks = True

        selector.select = select
        selector._comfyfleet_timed = True

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def observe(self, lag: float, held: float | None = None) -> None:
        lag = max(lag, 0.0)
        with self._lock:
            self.histogram.observe(lag)
            self.last, self.max = lag, max(self.max, lag)
            if held is not None:
                self.held.observe(held)
                self.held_max = max(self.held_max, held)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            held, self._held_window = self._held_window, 0.0
            self.observe(loop.time() - asked, held if self._left_select is not None else None)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            lag = (self.histogram.cumulative(), self.histogram.total, self.max)
            held = (self.held.cumulative(), self.held.total, self.held_max)
        for name, doc, (buckets, total, worst) in (
            ("comfyfleet_event_loop_lag_seconds",
             "How late this process's event loop woke a sleeper.", lag),
            ("comfyfleet_event_loop_held_seconds",
             "The longest the event loop ran callbacks without polling for I/O, per sample.",
             held),
        ):  # fmt: skip
            family = HistogramMetricFamily(name, doc)
            family.add_metric([], buckets, sum_value=total)
            gauge = GaugeMetricFamily(
                name.replace("_seconds", "_max_seconds"), "Worst since start."
            )
            gauge.add_metric([], worst)
            yield from (family, gauge)


def build_registry(
    db: Database,
    *,
    node_source: Callable[[], Iterable[NodeMetrics]] | None = None,
    loop_lag: LoopLag | None = None,
) -> CollectorRegistry:
    """A registry with the job and node collectors (one per gateway app), and the serving
    process's event-loop lag when given."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobsCollector(db))
    registry.register(NodesCollector(node_source))
    if loop_lag is not None:
        registry.register(loop_lag)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition of a registry."""
    return generate_latest(registry)
