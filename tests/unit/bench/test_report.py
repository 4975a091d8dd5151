"""Benchmark results on disk: JSON, the markdown report, plots and the summary table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import b1_efficiency, b2_latency, b4_failover, report
from bench.__main__ import parse_only
from bench.context import round_floats


def b1_result() -> dict:
    def system(ratio: float, busy: float) -> dict:
        return {
            "makespan_s": 100.0 * ratio,
            "ideal_makespan_s": 100.0,
            "makespan_over_ideal": ratio,
            "busy_fraction_mean": busy,
            "busy_fraction_min": busy - 0.01,
            "jobs_per_node": {"gpu-1": 50, "gpu-2": 50},
            "finished_in_time": True,
        }

    return {
        "capacity_per_node": 2,
        "baseline_nodes": "separate",
        "fleet_deadline": "1.5 x ideal",
        "workloads": {
            "homogeneous 200 x 2 s": {
                "seconds": 2.0,
                "comfyfleet": system(1.02, 0.98),
                "round_robin": system(1.01, 0.99),
                "seed_like": system(1.2, 0.8),
            },
            "heterogeneous 100 x 2 s": {"skipped": "time budget"},
        },
        "timelines": {
            "homogeneous 200 x 2 s / comfyfleet": [["gpu-1", 0.1, 2.1], ["gpu-2", 0.2, 2.2]],
            "homogeneous 200 x 2 s / round_robin": [["gpu-1", 0.0, 2.0]],
        },
    }


def test_round_floats_makes_results_json_safe() -> None:
    clean = round_floats({"a": 1.234567, "b": [float("nan"), 2], "c": {3: (0.5,)}}, 3)
    assert clean == {"a": 1.235, "b": [None, 2], "c": {"3": [0.5]}}
    json.dumps(clean, allow_nan=False)


def test_write_json_refuses_nan_so_reports_never_hold_invalid_json(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        report.write_json(tmp_path / "r.json", {"x": math.nan})
    path = report.write_json(tmp_path / "sub" / "r.json", {"B1": {"x": 1.5}})
    assert json.loads(path.read_text()) == {"B1": {"x": 1.5}}


def test_table_aligns_columns_and_pads_short_rows() -> None:
    text = report.table([("B1", "makespan", "1.02x"), ("B22", "x", "y", "z", "goal")])
    lines = text.splitlines()
    assert lines[0].startswith("bench") and set(lines[1]) <= {"-", " "}
    assert (
        len({line.index("makespan") if "makespan" in line else None for line in lines} - {None})
        == 1
    )
    assert lines[2].split()[0] == "B1" and lines[3].split()[0] == "B22"


def test_markdown_table_escapes_pipes() -> None:
    md = report.markdown_table([("B1", "a|b", "c", "d", "e")])
    assert "a\\|b" in md and md.count("\n") == 2


def test_b1_summary_rows_carry_ratios_baselines_and_goals() -> None:
    rows = b1_efficiency.summary_rows(b1_result())
    assert rows[0][0] == "B1" and "1.02x" in rows[0][2] and "round-robin 1.01x" in rows[0][3]
    assert rows[1][2].startswith("0.98") and rows[1][4] == ">= 0.97"
    assert rows[2][2] == "skipped"
    assert "| homogeneous 200 x 2 s | seed_like |" in b1_efficiency.markdown(b1_result())


def test_b2_summary_rows_show_each_system_or_its_failure() -> None:
    lat = {"n": 3, "p50": 0.4, "p95": 0.6}
    result = {
        "comfyfleet": {"n": 3, "submit_to_start_s": lat, "end_to_visible_s": lat},
        "direct": {"n": 3, "submit_to_start_s": lat, "end_to_visible_s": lat},
        "process_worker": {"error": "RuntimeError('boom')"},
    }
    rows = b2_latency.summary_rows(result)
    assert rows[0][2] == "p50 0.400s, p95 0.600s" and "process worker failed" in rows[0][3]
    assert "failed: RuntimeError" in b2_latency.markdown(result)


def test_b4_summary_rows_report_lost_and_duplicate_jobs() -> None:
    s = {"n": 10, "p50": 4.0, "p95": 6.0, "max": 7.0}
    result = {
        "trials_n": 10,
        "running_elsewhere_s": s,
        "redispatched_s": s,
        "completed_s": s,
        "detected_s": s,
        "lost_jobs": 0,
        "duplicate_outputs": 0,
        "jobs_total": 40,
        "trials": [],
    }
    rows = b4_failover.summary_rows(result)
    assert rows[0][2] == "p50 4.00s, p95 6.00s" and rows[2][2] == "0 / 0"


def test_report_writes_markdown_with_summary_and_plots(tmp_path: Path) -> None:
    result = b1_result()
    grouped = {
        "comfyfleet": result["timelines"]["homogeneous 200 x 2 s / comfyfleet"],
        "round_robin": result["timelines"]["homogeneous 200 x 2 s / round_robin"],
    }
    timeline = report.plot_timelines(tmp_path / "t.png", "B1", grouped)
    cdf = report.plot_cdfs(tmp_path / "c.png", "B2", {"submit": {"a": [0.1, 0.2], "b": []}})
    for png in (timeline, cdf):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = b1_efficiency.summary_rows(result)
    md = report.write_markdown(
        tmp_path / "20260101T000000Z.md",
        {
            "meta": {"started_utc": "20260101T000000Z", "mode": "quick", "command": "make bench"},
            "notes": ["a note"],
        },
        rows,
        {"B1 fleet efficiency": [timeline]},
        {"B1 fleet efficiency": "text"},
    )
    text = md.read_text()
    assert "## Summary" in text and "1.02x" in text and "- a note" in text
    assert "![t](t.png)" in text and "20260101T000000Z.json" in text


def test_only_selects_benchmarks_in_run_order_and_rejects_unknown_names() -> None:
    assert parse_only("b3, B1") == ["B1", "B3"]
    assert parse_only(None) == ["B1", "B2", "B4", "B3"]  # B5 runs only when named
    assert parse_only("B5") == ["B5"]
    with pytest.raises(SystemExit):
        parse_only("B9")
