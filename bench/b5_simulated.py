"""B5 simulated fleet: 100 and 300 simulated ComfyUI nodes, long jobs, and where one control plane
saturates.

The nodes are bench/simnode's protocol-faithful simulators, all in one process
(`python -m bench.simnode --count N`): real HTTP and websocket traffic, a real queue per node, a
prompt with the test delay node taking exactly its `seconds`. The control plane is a fresh one
of its own per node count (bench/fleet.py `ControlPlane`: Prefect server on PostgreSQL, the job
store on MariaDB when it answers, one worker process for every node pool, the fleet service).
Before a run, every node's shift is live (a fleet in service has its shifts running); then
`JOBS_PER_NODE` delay jobs per node go in through `comfyfleet.jobs.submit`, at once.

Per run (`B5.runs`): `nodes`, `job_s`, `ramp_s` (first submit → every node executing),
`busy_fraction_steady` (from the moment every node has started its first job to the moment the
first node runs out of work: the share of that window the nodes spend executing),
`jobs_per_s` (jobs completed ÷ the time from the first execution_start to the last
execution_success) against `demand_per_s` (nodes ÷ job length: what the nodes could do),
`dispatch_s` (submit → execution_start of each node's first job), `cpu_s_per_job` (control
plane, and per component). The shorter-job runs on 100
nodes are the sweep: the first length at which `jobs_per_s` falls under 90 % of the demand is
where one control plane saturates on this machine (`saturation`).

`python -m bench --only B5` (≤ 30 min); `make bench` leaves it out. `BENCH_B5_RUNS=100x5,100x5@2/2`
runs only the named runs, here one API process and one worker against two of each (SCALED_OUT).
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.context import Context
from bench.cpu import descendants, read_procs
from bench.drive import CpuMeter, FleetDriver
from bench.fleet import ControlPlane, NodeEntry, mysql_available
from bench.stats import Execution, summarize, union_length
from comfyfleet.settings import REPO_ROOT

NAME = "B5"
TITLE = "simulated fleet"
JOBS_PER_NODE = 5
PLAN = {
    # (nodes, job lengths in seconds, Prefect API processes, worker processes): the first length
    # of each is the long-job run, the rest the sweep towards saturation
    "full": [(100, [60.0, 10.0, 5.0, 2.0], 1, 1), (300, [60.0], 1, 1)],
    "quick": [(20, [5.0, 1.0], 1, 1)],
}
SCALED_OUT = [(100, [5.0], 2, 2)]
"""The control plane scaled out (two API processes on PostgreSQL + Redis, two workers) at the
sweep's 5-s point: only when `BENCH_B5_RUNS` names it (`100x5@2/2`), as the full plan already
takes most of the 30 minutes."""
SATURATED_BELOW = 0.9
"""A run whose jobs/s falls under this share of the demand: the control plane is the limit."""
SHIFTS_TIMEOUT_S = 600.0


@contextlib.contextmanager
def simulated_nodes(count: int, log_path: Path) -> Iterator[tuple[list[str], int]]:
    """`count` simulated nodes in a process of their own: (their URLs, its pid)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.simnode", "--count", str(count)],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
            start_new_session=True,
        )  # fmt: skip
    try:
        assert proc.stdout is not None
        urls = [proc.stdout.readline().strip() for _ in range(count)]
        if not all(urls):
            raise RuntimeError(f"bench.simnode exited ({proc.poll()}); see {log_path}")
        yield urls, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def selected(plan: list[tuple[int, list[float], int, int]], wanted: str = "") -> list[Any]:
    """The plan, or only the runs `wanted` names (`BENCH_B5_RUNS`, e.g. `100x5,100x5@2/2`:
    nodes x job s, @ API processes / workers when scaled out; these may come from SCALED_OUT)."""
    names = {w.strip() for w in wanted.split(",") if w.strip()}
    if not names:
        return plan

    def key(n: int, s: float, api: int, workers: int) -> str:
        return f"{n}x{s:g}" + (f"@{api}/{workers}" if (api, workers) != (1, 1) else "")

    kept = [(n, [s for s in lengths if key(n, s, api, workers) in names], api, workers)
            for n, lengths, api, workers in [*plan, *SCALED_OUT]]  # fmt: skip
    return [entry for entry in kept if entry[1]]


def run(ctx: Context) -> dict[str, Any]:
    ctx.stop_main_fleet()  # the real nodes' control plane would share the cores
    plan = selected(PLAN["quick" if ctx.quick else "full"], os.environ.get("BENCH_B5_RUNS", ""))
    store = "mysql" if mysql_available() else "sqlite"
    out: dict[str, Any] = {"jobs_per_node": JOBS_PER_NODE, "store_db": store, "runs": []}
    if ctx.quick:
        out["scaled_down"] = f"quick mode: {plan}"
    for count, lengths, api_workers, workers in plan:
        where = ctx.run_dir / f"b5-{count}-api{api_workers}-w{workers}"
        ctx.log(f"B5: {count} simulated nodes, {api_workers} API process(es), {workers} worker(s)")
        with simulated_nodes(count, where / "simnode.log") as (urls, pid):
            entries = [NodeEntry(f"sim-{i + 1}", url, ["delay"]) for i, url in enumerate(urls)]
            cp = ControlPlane(where, entries, prefect_db=ctx.prefect_db, store_db=store,
                              api_workers=api_workers, workers=workers)  # fmt: skip
            try:
                cp.start()
                ctx.log(f"B5: control plane ready ({cp.timings})")
                driver = FleetDriver(cp)
                shifts_s = _wait_shifts(driver, [e.id for e in entries])
                ctx.log(f"B5: every node's shift live after {shifts_s:.0f}s")
                for job_s in lengths:
                    one = _one_run(ctx, cp, driver, entries, pid, job_s)
                    one.update(control_plane_start_s=cp.timings, shifts_ready_s=shifts_s,
                               api_workers=api_workers, workers=workers)  # fmt: skip
                    out["runs"].append(one)
                driver.close()
            except Exception as exc:
                ctx.log(f"B5 ({count} nodes) failed: {exc!r}")
                out["runs"].append({"nodes": count, "error": repr(exc)})
            finally:
                cp.stop()
    out["saturation"] = saturation([r for r in out["runs"] if r.get("api_workers", 1) == 1])
    return out


def _wait_shifts(driver: FleetDriver, nodes: list[str]) -> float:
    from comfyfleet.jobs.shift import STALE_AFTER_S
    from comfyfleet.store import node_shifts

    started = time.monotonic()
    live: list[str] = []
    while time.monotonic() - started < SHIFTS_TIMEOUT_S:
        shifts = driver.db.run(node_shifts, readonly=True)
        working = {n for n, s in shifts.items() if s.working(stale_after_s=STALE_AFTER_S)}
        live = [n for n in nodes if n in working]
        if len(live) == len(nodes):
            return time.monotonic() - started
        time.sleep(1.0)
    raise TimeoutError(
        f"shifts live on {len(live)} of {len(nodes)} nodes after {SHIFTS_TIMEOUT_S}s"
    )


def _one_run(
    ctx: Context, cp: ControlPlane, driver: FleetDriver, entries: list[NodeEntry], sim_pid: int,
    job_s: float,
) -> dict[str, Any]:  # fmt: skip
    count = len(entries)
    total = count * JOBS_PER_NODE
    batch = f"b5-{count}-{job_s:g}-{ctx.stamp}"
    ctx.log(f"B5: {count} nodes, {total} jobs of {job_s:g}s")
    procs = read_procs()  # the server's tree: its API processes when it runs several
    pids = {name: descendants([pid], procs) for name, pid in cp.pids().items()}
    pids["simulated nodes"] = [sim_pid]
    pids["bench driver"] = [os.getpid()]
    timeout = job_s * JOBS_PER_NODE * 3 + 300
    with CpuMeter(pids) as meter:
        t0 = time.time()
        for i in range(total):
            driver.submit("delay", {"seconds": job_s, "steps": 1, "seed": i}, batch=batch)
        submitted_s = time.time() - t0
        finished = driver.wait_batch(batch, total, timeout=timeout)
    if not finished:
        driver.cancel_unfinished(batch)
    execs = driver.executions(batch, {e.id: e.url for e in entries})
    result = figures(t0, execs, [e.id for e in entries], job_s)
    cpu = meter.summary()
    control = {k: v for k, v in cpu["cpu_s"].items() if k in cp.pids()}
    done = result["completed"] or math.nan
    result.update(
        jobs=total, submit_s=submitted_s, finished=finished, cpu=cpu,
        cpu_s_per_job=sum(control.values()) / done,
        cpu_s_per_job_by_component={k: v / done for k, v in control.items()},
    )  # fmt: skip
    ctx.log(
        f"B5: {count} x {job_s:g}s: ramp {result['ramp_s']:.1f}s, busy (steady) "
        f"{result['busy_fraction_steady']:.3f}, {result['jobs_per_s']:.2f} jobs/s of "
        f"{result['demand_per_s']:.1f}, {result['cpu_s_per_job']:.3f} CPU-s/job"
    )
    return result


def figures(t0: float, execs: list[Execution], nodes: list[str], job_s: float) -> dict[str, Any]:
    """The figures of one run from the nodes' executions (pure; see the module docstring)."""
    ok = [e for e in execs if e.ok]
    by_node: dict[str, list[Execution]] = {n: [] for n in nodes}
    for e in ok:
        by_node.setdefault(e.node, []).append(e)
    out: dict[str, Any] = {
        "nodes": len(nodes), "job_s": job_s, "completed": len(ok),
        "demand_per_s": len(nodes) / job_s,
    }  # fmt: skip
    if not ok or any(not v for v in by_node.values()):
        idle = sum(1 for v in by_node.values() if not v)
        return {**out, "ramp_s": math.nan, "busy_fraction_steady": math.nan,
                "jobs_per_s": math.nan, "dispatch_s": summarize([]),
                "nodes_without_work": idle}  # fmt: skip
    firsts = [min(v, key=lambda e: e.start) for v in by_node.values()]
    all_started = max(e.start for e in firsts)
    first_out = min(max(e.end for e in v) for v in by_node.values())
    window = first_out - all_started
    if window > 0:
        busy = [union_length([(e.start, e.end) for e in v], all_started, first_out) / window
                for v in by_node.values()]  # fmt: skip
        steady = sum(busy) / len(busy)
    else:
        steady = math.nan
    first_start, last_end = min(e.start for e in ok), max(e.end for e in ok)
    rate = len(ok) / (last_end - first_start) if last_end > first_start else math.nan
    return {
        **out,
        "ramp_s": all_started - t0,
        "steady_window_s": window,
        "busy_fraction_steady": steady,
        "jobs_per_s": rate,
        "makespan_s": last_end - t0,
        "dispatch_s": summarize([e.start - e.submitted for e in firsts]),
    }


def saturation(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The sweep's verdict: the most jobs/s one control plane sustained, and the first demand
    it fell behind (None: it kept up with every run)."""
    good = [r for r in runs if not math.isnan(r.get("jobs_per_s", math.nan))]
    if not good:
        return None
    behind = sorted(
        (r for r in good if r["jobs_per_s"] < SATURATED_BELOW * r["demand_per_s"]),
        key=lambda r: r["demand_per_s"],
    )
    return {
        "max_jobs_per_s": max(r["jobs_per_s"] for r in good),
        "saturated_at_demand_per_s": behind[0]["demand_per_s"] if behind else None,
    }


def summary_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for r in result.get("runs", []):
        label = f"{r['nodes']} nodes x {r.get('job_s', 0):g} s jobs"
        if r.get("api_workers", 1) > 1 or r.get("workers", 1) > 1:
            label += f" ({r['api_workers']} API processes, {r['workers']} workers)"
        if "error" in r:
            rows.append(("B5", label, "failed", r["error"][:80], ""))
            continue
        long_run = r["job_s"] >= 60
        rows.append((
            "B5", f"{label}: ramp, busy (steady)",
            f"ramp {r['ramp_s']:.1f}s, busy {r['busy_fraction_steady']:.3f}",
            f"{r['jobs_per_s']:.2f} of {r['demand_per_s']:.1f} jobs/s, "
            f"{r['cpu_s_per_job']:.3f} CPU-s/job, first dispatch p50 "
            f"{r['dispatch_s']['p50']:.2f}s",
            "ramp <= 60 s, busy >= 0.95" if long_run and r["nodes"] >= 300 else "",
        ))  # fmt: skip
    sat = result.get("saturation")
    if sat:
        at = sat["saturated_at_demand_per_s"]
        rows.append(("B5", "one control plane", f"{sat['max_jobs_per_s']:.1f} jobs/s at most",
                     f"fell behind at {at:g} jobs/s" if at else "kept up with every run",
                     ""))  # fmt: skip
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"{JOBS_PER_NODE} delay jobs per simulated node, submitted at once; job store on "
        f"{result.get('store_db')}.",
        "",
        "| nodes | job s | API processes / workers | ramp s | busy (steady) | jobs/s | demand "
        "jobs/s | first dispatch p50 / p95 s | CPU-s/job (control plane) | by component |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result.get("runs", []):
        if "error" in r:
            lines.append(f"| {r['nodes']} | – | – | failed: `{r['error'][:120]}` | | | | | | |")
            continue
        parts = ", ".join(f"{k} {v:.3f}" for k, v in r["cpu_s_per_job_by_component"].items())
        lines.append(
            f"| {r['nodes']} | {r['job_s']:g} | {r.get('api_workers', 1)} / {r.get('workers', 1)} "
            f"| {r['ramp_s']:.1f} | "
            f"{r['busy_fraction_steady']:.3f} | {r['jobs_per_s']:.2f} | {r['demand_per_s']:.1f} "
            f"| {r['dispatch_s']['p50']:.2f} / {r['dispatch_s']['p95']:.2f} | "
            f"{r['cpu_s_per_job']:.3f} | {parts} |"
        )
    return "\n".join(lines)
