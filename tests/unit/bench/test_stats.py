"""The benchmark arithmetic (bench/stats.py) on synthetic timestamps."""

from __future__ import annotations

import math

import pytest

from bench.stats import (
    Execution,
    busy_fractions,
    cdf_points,
    efficiency,
    ideal_makespan,
    latencies,
    makespan,
    parse_history_entry,
    percentile,
    summarize,
    union_length,
)


def ex(
    node: str,
    start: float,
    end: float,
    *,
    submitted: float = 0.0,
    visible: float | None = None,
    ok: bool = True,
) -> Execution:
    return Execution(
        f"job-{node}-{start}", node, f"p-{node}-{start}", submitted, start, end, ok, visible
    )


def test_percentile_interpolates_linearly_between_closest_ranks() -> None:
    data = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(data, 0) == 1.0
    assert percentile(data, 50) == 3.0
    assert percentile(data, 100) == 5.0
    assert percentile(data, 25) == 2.0
    assert percentile(data, 95) == pytest.approx(4.8)  # numpy.percentile(data, 95)
    assert percentile([7.0], 95) == 7.0
    assert math.isnan(percentile([], 50))


def test_percentile_rejects_out_of_range_q() -> None:
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarize_ignores_nan_and_reports_an_empty_sample_as_nan() -> None:
    s = summarize([1.0, float("nan"), 3.0])
    assert s["n"] == 2 and s["p50"] == 2.0 and s["mean"] == 2.0 and s["max"] == 3.0
    empty = summarize([])
    assert empty["n"] == 0 and math.isnan(empty["p50"])


def test_union_length_counts_overlaps_once_and_clips_to_the_window() -> None:
    assert union_length([(0, 2), (1, 3), (5, 6)]) == 4
    assert union_length([(0, 2), (2, 4)]) == 4  # touching intervals
    assert union_length([(0, 10)], 2, 5) == 3
    assert union_length([(3, 1)]) == 0  # empty interval
    assert union_length([]) == 0


def test_ideal_makespan_is_total_work_over_total_speed() -> None:
    assert ideal_makespan(200, 2.0, [1, 1, 1, 1]) == 100.0
    assert ideal_makespan(200, 2.0, [1, 1, 2, 4]) == 50.0
    with pytest.raises(ValueError):
        ideal_makespan(1, 1.0, [])


def test_makespan_runs_from_the_first_submit_to_the_last_end() -> None:
    assert makespan(10.0, [ex("a", 11, 13), ex("b", 12, 17)]) == 7.0
    assert math.isnan(makespan(0.0, []))


def test_busy_fractions_per_node_over_the_window() -> None:
    execs = [ex("a", 0, 5), ex("a", 5, 10), ex("b", 0, 5)]
    busy = busy_fractions(execs, ["a", "b", "c"], 0.0, 10.0)
    assert busy == {"a": 1.0, "b": 0.5, "c": 0.0}


def test_efficiency_of_a_perfect_heterogeneous_schedule() -> None:
    # speeds 1 and 3, 4 jobs of 3 s: node a runs one (3 s), node b runs three (1 s each)
    execs = [ex("a", 0, 3), ex("b", 0, 1), ex("b", 1, 2), ex("b", 2, 3)]
    f = efficiency(0.0, execs, nodes=["a", "b"], speeds={"a": 1.0, "b": 3.0}, jobs=4, seconds=3.0)
    assert f["ideal_makespan_s"] == 3.0
    assert f["makespan_s"] == 3.0 and f["makespan_over_ideal"] == 1.0
    assert f["busy_fraction"] == {"a": 1.0, "b": 1.0} and f["busy_fraction_min"] == 1.0
    assert f["jobs_per_node"] == {"a": 1, "b": 3} and f["completed"] == 4
    assert f["measured_ideal_s"] == pytest.approx(3.0)


def test_efficiency_of_static_round_robin_on_heterogeneous_nodes() -> None:
    # 4 jobs of 2 s split 2/2 over speeds 1 and 3: the slow node needs 4 s, the ideal is 2 s
    execs = [ex("a", 0, 2), ex("a", 2, 4), ex("b", 0, 2 / 3), ex("b", 2 / 3, 4 / 3)]
    f = efficiency(0.0, execs, nodes=["a", "b"], speeds={"a": 1.0, "b": 3.0}, jobs=4, seconds=2.0)
    assert f["makespan_over_ideal"] == pytest.approx(2.0)
    assert f["busy_fraction"]["b"] == pytest.approx(1 / 3)


def test_efficiency_counts_failed_executions_as_busy_but_not_completed() -> None:
    execs = [ex("a", 0, 1), ex("a", 1, 2, ok=False)]
    f = efficiency(0.0, execs, nodes=["a"], speeds={"a": 1.0}, jobs=2, seconds=1.0)
    assert f["completed"] == 1 and f["busy_fraction"]["a"] == 1.0


def test_efficiency_reports_when_outputs_became_visible() -> None:
    execs = [ex("a", 1, 2, visible=2.5), ex("a", 2, 3, visible=3.4)]
    f = efficiency(0.0, execs, nodes=["a"], speeds={"a": 1.0}, jobs=2, seconds=1.0)
    assert f["visible_makespan_s"] == pytest.approx(3.4)


def test_latencies_split_dispatch_and_output_delay() -> None:
    lat = latencies([ex("a", 1.5, 2.0, submitted=1.0, visible=2.25), ex("b", 3, 4, submitted=2.0)])
    assert lat["submit_to_start_s"] == [0.5, 1.0]
    assert lat["end_to_visible_s"] == [0.25]


def test_cdf_points_are_sorted_with_cumulative_fractions() -> None:
    assert cdf_points([3.0, 1.0, 2.0, 4.0]) == ([1.0, 2.0, 3.0, 4.0], [0.25, 0.5, 0.75, 1.0])


def test_parse_history_entry_reads_comfyui_millisecond_timestamps() -> None:
    entry = {
        "status": {
            "status_str": "success",
            "completed": True,
            "messages": [
                ["execution_start", {"prompt_id": "p", "timestamp": 1795898304404}],
                ["execution_cached", {"nodes": [], "prompt_id": "p", "timestamp": 1795898304405}],
                ["execution_success", {"prompt_id": "p", "timestamp": 1795898306412}],
            ],
        }
    }
    start, end, ok = parse_history_entry(entry)
    assert ok and start == pytest.approx(1795898304.404) and end == pytest.approx(1795898306.412)


def test_parse_history_entry_marks_errors_and_skips_unstarted_entries() -> None:
    failed = {
        "status": {
            "messages": [
                ["execution_start", {"timestamp": 1000}],
                ["execution_error", {"timestamp": 2500, "node_id": "2"}],
            ]
        }
    }
    assert parse_history_entry(failed) == (1.0, 2.5, False)
    assert parse_history_entry({"status": {"messages": []}}) is None
    assert parse_history_entry({}) is None


def test_routing_times_cover_every_strategy_at_both_registry_sizes() -> None:
    import random

    from bench.b3_scale import routing_times, simulated_views
    from comfyfleet.fleet.router import STRATEGIES

    assert len(simulated_views(100, random.Random(1))) == 100
    times = routing_times(iterations=20)
    for size in ("16_nodes", "100_nodes"):
        assert set(times[size]) == set(STRATEGIES)
        for figures in times[size].values():
            assert 0 < figures["p50"] <= figures["p99"] <= figures["max"]
