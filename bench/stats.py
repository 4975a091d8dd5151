"""The arithmetic of the benchmarks, pure (no I/O): percentiles, makespans, busy fractions.

Times are epoch seconds (floats). ComfyUI reports `execution_start` / `execution_success` as epoch
milliseconds; every process runs on this one host, so all clocks are the same clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Execution:
    """One prompt as a node ran it (one job of a benchmark run)."""

    job: str
    node: str
    prompt_id: str
    submitted: float  # when the caller submitted the job (epoch s)
    start: float  # ComfyUI execution_start
    end: float  # ComfyUI execution_success (or the failure)
    ok: bool = True
    visible: float | None = None  # when the caller could see the outputs

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default)."""
    data = sorted(values)
    if not data:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    rank = (len(data) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


def summarize(values: Iterable[float]) -> dict[str, float | int]:
    """n, p50, p95, mean, min, max of a sample (NaN figures for an empty one)."""
    data = [v for v in values if v is not None and not math.isnan(v)]
    if not data:
        return {
            "n": 0,
            "p50": math.nan,
            "p95": math.nan,
            "mean": math.nan,
            "min": math.nan,
            "max": math.nan,
        }
    return {
        "n": len(data),
        "p50": percentile(data, 50),
        "p95": percentile(data, 95),
        "mean": sum(data) / len(data),
        "min": min(data),
        "max": max(data),
    }


def union_length(
    intervals: Iterable[tuple[float, float]], lo: float = -math.inf, hi: float = math.inf
) -> float:
    """Total length covered by the intervals, clipped to [lo, hi] (overlaps counted once)."""
    clipped = sorted((max(a, lo), min(b, hi)) for a, b in intervals)
    total, cur_a, cur_b = 0.0, None, None
    for a, b in clipped:
        if b <= a:
            continue
        if cur_b is None or a > cur_b:
            if cur_b is not None:
                total += cur_b - cur_a  # type: ignore[operator]
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if cur_b is not None:
        total += cur_b - cur_a  # type: ignore[operator]
    return total


def ideal_makespan(jobs: int, seconds: float, speeds: Sequence[float]) -> float:
    """Total work ÷ total capacity: each node runs one prompt at a time at its speed."""
    capacity = sum(speeds)
    if capacity <= 0:
        raise ValueError("no capacity")
    return jobs * seconds / capacity


def makespan(t0: float, executions: Iterable[Execution]) -> float:
    """From the first submit (t0) to the end of the last execution."""
    ends = [e.end for e in executions]
    return max(ends) - t0 if ends else math.nan


def busy_fractions(
    executions: Iterable[Execution], nodes: Iterable[str], t0: float, t_end: float
) -> dict[str, float]:
    """Per node: the share of [t0, t_end] during which it was executing a prompt."""
    window = t_end - t0
    by_node: dict[str, list[tuple[float, float]]] = {n: [] for n in nodes}
    for e in executions:
        by_node.setdefault(e.node, []).append((e.start, e.end))
    if window <= 0:
        return {n: math.nan for n in by_node}
    return {n: union_length(iv, t0, t_end) / window for n, iv in by_node.items()}


def efficiency(
    t0: float,
    executions: Sequence[Execution],
    *,
    nodes: Sequence[str],
    speeds: Mapping[str, float],
    jobs: int,
    seconds: float,
) -> dict[str, Any]:
    """The B1 figures of one run: makespan, ideal, ratio, busy fractions, jobs per node."""
    done = [e for e in executions if e.ok]
    span = makespan(t0, executions)
    ideal = ideal_makespan(jobs, seconds, [speeds[n] for n in nodes])
    t_end = t0 + span if not math.isnan(span) else t0
    busy = busy_fractions(executions, nodes, t0, t_end)
    per_node = {n: sum(1 for e in done if e.node == n) for n in nodes}
    # The work as ComfyUI measured it (the delay node's sleep + saving the PNG + ComfyUI's own
    # per-prompt overhead) spread over the capacity: the best any dispatcher could do.
    measured = sum(e.end - e.start for e in done)
    measured_ideal = _proportional_ideal(done, nodes, speeds)
    visible = [e.visible for e in executions if e.visible is not None]
    return {
        "jobs": jobs,
        "completed": len(done),
        "makespan_s": span,
        "ideal_makespan_s": ideal,
        "makespan_over_ideal": span / ideal if ideal else math.nan,
        "measured_work_s": measured,
        "measured_ideal_s": measured_ideal,
        "makespan_over_measured_ideal": span / measured_ideal if measured_ideal else math.nan,
        "visible_makespan_s": (max(visible) - t0) if visible else None,
        "busy_fraction": busy,
        "busy_fraction_mean": sum(busy.values()) / len(busy) if busy else math.nan,
        "busy_fraction_min": min(busy.values()) if busy else math.nan,
        "jobs_per_node": per_node,
    }


def _proportional_ideal(
    done: Sequence[Execution], nodes: Sequence[str], speeds: Mapping[str, float]
) -> float:
    """Measured work normalised to speed 1, divided by the total speed."""
    if not done:
        return math.nan
    normalised = sum((e.end - e.start) * speeds.get(e.node, 1.0) for e in done)
    return normalised / sum(speeds[n] for n in nodes)


def latencies(executions: Iterable[Execution]) -> dict[str, list[float]]:
    """B2: submit → execution_start, and execution_success → outputs visible, per job."""
    start, visible = [], []
    for e in executions:
        start.append(e.start - e.submitted)
        if e.visible is not None:
            visible.append(e.visible - e.end)
    return {"submit_to_start_s": start, "end_to_visible_s": visible}


def cdf_points(values: Iterable[float]) -> tuple[list[float], list[float]]:
    """x (sorted values) and y (fraction ≤ x) of an empirical CDF."""
    xs = sorted(values)
    n = len(xs)
    return xs, [(i + 1) / n for i in range(n)]


def parse_history_entry(entry: Mapping[str, Any]) -> tuple[float, float, bool] | None:
    """(start, end, ok) in epoch seconds from one ComfyUI /history entry; None if it has no start.

    `status.messages` holds `[type, data]` pairs; `execution_start` and the final
    `execution_success` / `execution_error` / `execution_interrupted` carry ms timestamps.
    """
    messages = (entry.get("status") or {}).get("messages") or []
    start = end = None
    ok = False
    for item in messages:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            continue
        kind, data = item
        stamp = (data or {}).get("timestamp")
        if stamp is None:
            continue
        if kind == "execution_start":
            start = stamp / 1000.0
        elif kind in ("execution_success", "execution_error", "execution_interrupted"):
            end = stamp / 1000.0
            ok = kind == "execution_success"
    if start is None or end is None:
        return None
    return start, end, ok
