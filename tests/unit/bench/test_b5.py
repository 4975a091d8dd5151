"""B5's figures from the nodes' executions: ramp, steady-state busy fraction, jobs/s, the sweep's
saturation point."""

from __future__ import annotations

import math

from bench.b5_simulated import PLAN, figures, saturation, selected
from bench.stats import Execution


def ex(node: str, start: float, end: float, submitted: float = 0.0) -> Execution:
    return Execution(f"j-{node}-{start}", node, f"p-{node}-{start}", submitted, start, end)


def test_ramp_steady_window_busy_fraction_and_rate() -> None:
    # a starts at 1 and works to 31; b starts at 3 (the ramp), idles 13..15, works to 23: the
    # steady window is 3 (both started) .. 23 (b has nothing left)
    execs = [ex("a", 1, 11), ex("a", 11, 21), ex("a", 21, 31),
             ex("b", 3, 13), ex("b", 15, 23)]  # fmt: skip
    got = figures(0.0, execs, ["a", "b"], job_s=10.0)
    assert got["ramp_s"] == 3.0 and got["steady_window_s"] == 20.0
    assert got["busy_fraction_steady"] == (20 / 20 + 18 / 20) / 2
    assert got["jobs_per_s"] == 5 / 30  # five jobs from the first start (1) to the last end (31)
    assert got["demand_per_s"] == 0.2 and got["completed"] == 5
    assert got["dispatch_s"]["p50"] == 2.0  # first starts 1 and 3 after the submit at 0


def test_a_node_that_never_worked_leaves_the_steady_figures_undefined() -> None:
    got = figures(0.0, [ex("a", 1, 11)], ["a", "b"], job_s=10.0)
    assert math.isnan(got["ramp_s"]) and got["nodes_without_work"] == 1


def test_saturation_is_the_first_demand_the_control_plane_fell_behind() -> None:
    runs = [
        {"jobs_per_s": 1.6, "demand_per_s": 1.7},  # 60-s jobs: kept up
        {"jobs_per_s": 9.5, "demand_per_s": 10.0},
        {"jobs_per_s": 12.0, "demand_per_s": 20.0},  # behind
        {"jobs_per_s": 13.0, "demand_per_s": 50.0},
        {"error": "boom"},
    ]
    assert saturation(runs) == {"max_jobs_per_s": 13.0, "saturated_at_demand_per_s": 20.0}
    assert saturation(runs[:2])["saturated_at_demand_per_s"] is None  # type: ignore[index]


def test_bench_b5_runs_selects_runs_and_the_scaled_out_control_plane() -> None:
    full = PLAN["full"]
    assert selected(full) == full
    assert selected(full, "100x5, 100x5@2/2") == [(100, [5.0], 1, 1), (100, [5.0], 2, 2)]
    assert selected(full, "300x60") == [(300, [60.0], 1, 1)]
