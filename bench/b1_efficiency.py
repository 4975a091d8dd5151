"""B1 fleet efficiency: a burst of delay jobs on 4 nodes; makespan against the ideal, busy time.

For each workload, ComfyFleet runs it alone (jobs.submit → dispatcher → worker → nodes), then the
two baselines run it (naive round-robin and the seed-like /history poller). Figures per run:
makespan (first submit → last ComfyUI execution_success), ideal makespan (total work ÷ total
speed), their ratio, per-node busy fraction over the makespan (from ComfyUI's execution
timestamps), and, for ComfyFleet, the CPU the control plane spent.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from bench import baselines
from bench.context import BASELINE_SETS, HETEROGENEOUS, HOMOGENEOUS, Context
from bench.drive import CpuMeter, FleetDriver
from bench.stats import Execution, efficiency

NAME = "B1"
TITLE = "fleet efficiency"


@dataclass(frozen=True)
class Workload:
    key: str
    jobs: int
    seconds: float
    layout: str  # homogeneous | heterogeneous

    @property
    def workflow(self) -> str:
        return "delay" if self.layout == "homogeneous" else "delay-hetero"

    @property
    def node_ids(self) -> list[str]:
        return HOMOGENEOUS if self.layout == "homogeneous" else HETEROGENEOUS


# The issue asks for 200 x 2 s (also 400 x 0.5 s and 40 x 10 s); the 0.5 s, 10 s and
# heterogeneous runs are halved so that all of `make bench` fits in 30 minutes on 2 cores.
FULL = [
    Workload("homogeneous 200 x 2 s", 200, 2.0, "homogeneous"),
    Workload("heterogeneous 100 x 2 s (speeds 1,1,2,4)", 100, 2.0, "heterogeneous"),
    Workload("homogeneous 20 x 10 s", 20, 10.0, "homogeneous"),
    Workload("homogeneous 200 x 0.5 s", 200, 0.5, "homogeneous"),
]
QUICK = [
    Workload("homogeneous 12 x 1 s", 12, 1.0, "homogeneous"),
    Workload("heterogeneous 12 x 1 s (speeds 1,1,2,4)", 12, 1.0, "heterogeneous"),
]
BUDGET_S = {"full": 11 * 60, "quick": 140}
WORKLOADS_ENV = "BENCH_B1_WORKLOADS"
"""Comma-separated words: only the workloads whose key contains one of them (a quick loop)."""


def selected(workloads: list[Workload]) -> list[Workload]:
    words = [w.strip() for w in os.environ.get(WORKLOADS_ENV, "").split(",") if w.strip()]
    return [w for w in workloads if not words or any(word in w.key for word in words)]


def fleet_deadline(ideal: float, quick: bool = False) -> float:
    """How long ComfyFleet gets for one workload before the rest is cancelled (reported)."""
    return 1.5 * ideal + 20.0 if quick else 1.5 * ideal + 30.0


def run(ctx: Context) -> dict[str, Any]:
    cp = ctx.main_fleet()
    driver = FleetDriver(cp)
    budget = BUDGET_S["quick" if ctx.quick else "full"]
    started = time.monotonic()
    workloads = selected(QUICK if ctx.quick else FULL)
    out: dict[str, Any] = {
        "workloads": {},
        "capacity_per_node": 2,
        "baseline_nodes": "separate identical nodes, both baselines at once"
        if ctx.separate_baseline_nodes
        else "the fleet's nodes, one baseline after the other",
        "timelines": {},
        "fleet_deadline": "1.5 x ideal + 20 s" if ctx.quick else "1.5 x ideal + 30 s",
    }
    out["scaled_down"] = (
        "quick mode: 12 jobs of 1 s per workload, no 0.5 s / 10 s variants"
        if ctx.quick
        else "heterogeneous 100 x 2 s (issue: 200), 200 x 0.5 s (400), 20 x 10 s (40): 30 min"
    )
    seed = int(time.time()) * 1000
    for w in workloads:
        ideal = w.jobs * w.seconds / sum(ctx.speeds(w.node_ids).values())
        need = fleet_deadline(ideal, ctx.quick) + 1.2 * ideal + 30
        if time.monotonic() - started + need > budget and out["workloads"]:
            ctx.log(f"B1: skipping {w.key!r} (time budget)")
            out["workloads"][w.key] = {"skipped": "time budget"}
            continue
        ctx.log(f"B1: {w.key} (ideal makespan {ideal:.0f}s)")
        params = [{"seconds": w.seconds, "seed": seed + i, "steps": 2} for i in range(w.jobs)]
        seed += w.jobs
        result: dict[str, Any] = {
            "jobs": w.jobs,
            "seconds": w.seconds,
            "nodes": w.node_ids,
            "speeds": ctx.speeds(w.node_ids),
        }
        fleet, fleet_execs, t0 = _run_fleet(ctx, driver, w, params, ideal)
        result["comfyfleet"] = fleet
        out["timelines"][f"{w.key} / comfyfleet"] = _timeline(t0, fleet_execs)
        for name, (figures, execs, bt0) in _run_baselines(ctx, w, params).items():
            result[name] = figures
            out["timelines"][f"{w.key} / {name}"] = _timeline(bt0, execs)
        for name in ("round_robin", "seed_like"):
            base = result[name].get("makespan_s")
            if base:
                result[f"comfyfleet_vs_{name}"] = fleet["makespan_s"] / base
        out["workloads"][w.key] = result
        ctx.log(
            f"B1: {w.key}: comfyfleet {fleet['makespan_over_ideal']:.2f}x ideal, busy "
            f"{fleet['busy_fraction_mean']:.2f}; round-robin "
            f"{result['round_robin']['makespan_over_ideal']:.2f}x; seed-like "
            f"{result['seed_like']['makespan_over_ideal']:.2f}x"
        )
    driver.close()
    return out


def _run_fleet(
    ctx: Context, driver: FleetDriver, w: Workload, params: list[dict[str, Any]], ideal: float
) -> tuple[dict[str, Any], list[Execution], float]:
    cp = ctx.fleet
    assert cp is not None
    batch = f"b1-{ctx.stamp}-{w.workflow}-{w.jobs}x{w.seconds}"
    pids = {name: [pid] for name, pid in cp.pids().items()}
    pids["nodes"] = ctx.nodes.pids()
    pids["bench driver"] = [os.getpid()]
    with CpuMeter(pids) as meter:
        t0 = time.time()
        for p in params:
            driver.submit(w.workflow, p, batch=batch)
        submitted_s = time.time() - t0
        finished = driver.wait_batch(batch, w.jobs, timeout=fleet_deadline(ideal, ctx.quick))
    cancelled = 0 if finished else driver.cancel_unfinished(batch)
    if not finished:
        ctx.log(
            f"B1: comfyfleet did not finish {w.key!r} in {fleet_deadline(ideal, ctx.quick):.0f}s; "
            f"cancelled {cancelled} jobs"
        )
        driver.wait_idle(timeout=30 if ctx.quick else 45)
    execs = driver.executions(batch, {n: ctx.nodes[n].url for n in w.node_ids})
    figures = efficiency(
        t0, execs, nodes=w.node_ids, speeds=ctx.speeds(w.node_ids), jobs=w.jobs, seconds=w.seconds
    )
    figures.update(
        {
            "finished_in_time": finished,
            "cut_off_after_s": None if finished else fleet_deadline(ideal, ctx.quick),
            "cancelled": cancelled,
            "submit_all_s": submitted_s,
            "cpu": meter.summary(),
            "control_plane_cpu_s_per_job": sum(
                v for k, v in meter.used.items() if k not in ("nodes", "bench driver")
            )
            / max(1, len(execs)),
        }
    )
    span = figures["makespan_s"]
    done = figures["completed"]
    figures["completed_per_s"] = done / span if span and span == span else 0.0
    figures["needed_per_s"] = sum(ctx.speeds(w.node_ids).values()) / w.seconds
    if not finished:
        cut = fleet_deadline(ideal, ctx.quick)
        figures["makespan_s"] = max(span if span == span else 0.0, cut)
        figures["makespan_over_ideal"] = figures["makespan_s"] / ideal
        # At the rate it had reached, the whole workload would have taken this long:
        figures["projected_makespan_s"] = w.jobs * cut / done if done else None
    return figures, execs, t0


def _run_baselines(
    ctx: Context, w: Workload, params: list[dict[str, Any]]
) -> dict[str, tuple[dict[str, Any], list[Execution], float]]:
    from comfyfleet.jobs import load_catalog

    assert ctx.fleet is not None and ctx.fleet.settings is not None
    cat = load_catalog(ctx.fleet.settings)
    ideal = w.jobs * w.seconds / sum(ctx.speeds(w.node_ids).values())
    timeout = 4 * ideal + 60
    results: dict[str, tuple[dict[str, Any], list[Execution], float]] = {}

    def one(name: str, ids: list[str]) -> None:
        nodes = ctx.node_pairs(ids)
        prompts = baselines.make_prompts(cat, w.workflow, params, f"{name}-{ctx.stamp}")
        if name == "round_robin":
            t0, execs = baselines.naive_round_robin(nodes, prompts, timeout=timeout)
        else:
            t0, execs = baselines.seed_like(nodes, prompts, capacity=2, timeout=timeout)
        speeds = {i: ctx.nodes[i].speed for i in ids}
        figures = efficiency(t0, execs, nodes=ids, speeds=speeds, jobs=w.jobs, seconds=w.seconds)
        figures["nodes"] = ids
        if figures["completed"] < w.jobs:
            baselines.clear_queues(nodes)
        results[name] = (figures, execs, t0)

    if ctx.separate_baseline_nodes:
        threads = [
            threading.Thread(target=one, args=(name, [n for n, _ in sets[w.layout]]))
            for name, sets in BASELINE_SETS.items()
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for name in ("round_robin", "seed_like"):
            one(name, w.node_ids)
    return results


def _timeline(t0: float, execs: list[Execution]) -> list[list[Any]]:
    """[node, start, end] relative to t0, for the timeline plot."""
    return [[e.node, round(e.start - t0, 3), round(e.end - t0, 3)] for e in execs]


def summary_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """(benchmark, figure, ComfyFleet, baselines, goal) rows of the printed summary table."""
    rows = []
    for key, r in result.get("workloads", {}).items():
        if "skipped" in r:
            rows.append(("B1", key, "skipped", r["skipped"], ""))
            continue
        f = r["comfyfleet"]
        cut = "" if f.get("finished_in_time", True) else " (cut off)"
        if f.get("projected_makespan_s"):
            cut += f", projected {f['projected_makespan_s'] / f['ideal_makespan_s']:.1f}x"
        rows.append(
            (
                "B1",
                f"{key}: makespan / ideal",
                f"{f['makespan_over_ideal']:.2f}x "
                f"({f['makespan_s']:.0f}s / {f['ideal_makespan_s']:.0f}s){cut}",
                f"round-robin {r['round_robin']['makespan_over_ideal']:.2f}x, "
                f"seed-like {r['seed_like']['makespan_over_ideal']:.2f}x",
                "<= 1.05x" if "heterogeneous" in key else "",
            )
        )
        rows.append(
            (
                "B1",
                f"{key}: busy fraction mean (min)",
                f"{f['busy_fraction_mean']:.2f} ({f['busy_fraction_min']:.2f})",
                f"round-robin {r['round_robin']['busy_fraction_mean']:.2f}, "
                f"seed-like {r['seed_like']['busy_fraction_mean']:.2f}",
                ">= 0.97" if "homogeneous" in key and r["seconds"] == 2.0 else "",
            )
        )
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "Each workload's jobs are submitted at once. Makespan = first submit → last ComfyUI "
        "`execution_success`; ideal = total work ÷ total speed (each node runs one prompt at a "
        "time); busy = share of the makespan a node spent executing (ComfyUI timestamps). "
        f"Node capacity (in-flight slots) {result.get('capacity_per_node')}; baselines ran on "
        f"{result.get('baseline_nodes')}. ComfyFleet gets {result.get('fleet_deadline')} per "
        "workload; what is left then is cancelled and the run is marked cut off.",
        "",
        "| workload | system | makespan s | ideal s | ratio | busy mean | busy min "
        "| jobs per node | jobs/s (needed) | control-plane CPU s/job | other processes (cores) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in result.get("workloads", {}).items():
        if "skipped" in r:
            lines.append(f"| {key} | skipped ({r['skipped']}) | | | | | | | | | |")
            continue
        for name in ("comfyfleet", "round_robin", "seed_like"):
            f = r[name]
            cpu = f.get("cpu", {})
            per_job = f.get("control_plane_cpu_s_per_job")
            cut = "" if f.get("finished_in_time", True) else " (cut off)"
            if f.get("projected_makespan_s"):
                cut += f"; projected {f['projected_makespan_s']:.0f} s at its rate"
            rate = (
                f"{f['completed_per_s']:.2f} ({f['needed_per_s']:.1f})"
                if "completed_per_s" in f
                else ""
            )
            lines.append(
                f"| {key} | {name}{cut} | {f['makespan_s']:.1f} | {f['ideal_makespan_s']:.1f} | "
                f"{f['makespan_over_ideal']:.2f} | {f['busy_fraction_mean']:.3f} | "
                f"{f['busy_fraction_min']:.3f} | "
                f"{', '.join(f'{n} {c}' for n, c in f['jobs_per_node'].items())} | {rate} | "
                f"{'' if per_job is None else f'{per_job:.2f}'} | "
                f"{'' if not cpu else format(cpu.get('other_processes_cores', 0), '.2f')} |"
            )
    return "\n".join(lines)
