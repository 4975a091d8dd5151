"""B4 failover: kill -9 a node while a job executes on it, on a busy fleet.

A background load keeps one 3 s job per node in flight on the homogeneous nodes. Each trial
submits a 6 s "victim" job, waits until it executes (progress > 0), SIGKILLs its node and
measures, from the kill: the attempt ending as a node fault (detection), a new attempt created on
another node (re-dispatch), ComfyUI `execution_start` of that attempt (running elsewhere) and the
job `completed` (outputs visible). The killed node restarts in the background and rejoins after
the monitor's cooldown. At the end every job of B4 (victims and background) is checked: lost =
not completed; duplicate outputs = more than one output row or file for one job.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from bench.baselines import history
from bench.context import HOMOGENEOUS, Context
from bench.drive import CpuMeter, FleetDriver
from bench.stats import summarize
from comfyfleet.store.models import Job, Output

NAME = "B4"
TITLE = "failover"
TRIALS = {"full": 10, "quick": 2}
BUDGET_S = {"full": 240, "quick": 60}  # no new trial starts past it
VICTIM_SECONDS = 6.0
BACKGROUND_SECONDS = 3.0


def run(ctx: Context) -> dict[str, Any]:
    cp = ctx.main_fleet()
    driver = FleetDriver(cp)
    n_trials = TRIALS["quick" if ctx.quick else "full"]
    seed = int(time.time()) * 1000 + 700_000
    bg_batch = f"b4-bg-{ctx.stamp}"
    stop = threading.Event()
    background = threading.Thread(
        target=_background_load, args=(driver, bg_batch, len(HOMOGENEOUS), seed, stop), daemon=True
    )
    background.start()
    trials: list[dict[str, Any]] = []
    restarts: list[threading.Thread] = []
    meter = CpuMeter({name: [pid] for name, pid in cp.pids().items()})
    meter.__enter__()
    try:
        started = time.monotonic()
        for k in range(n_trials):
            if time.monotonic() - started > BUDGET_S["quick" if ctx.quick else "full"]:
                ctx.log(f"B4: time budget: stopping after {k} trials")
                break
            trial = _trial(ctx, driver, k, seed + 100_000 + k)
            trials.append(trial)
            restarter = trial.pop("_restart", None)
            if restarter is not None:
                restarts.append(restarter)
            ctx.log(
                f"B4: trial {k + 1}/{n_trials}: "
                + ", ".join(
                    f"{key} {trial[key]:.2f}s"
                    for key in (
                        "detected_s",
                        "redispatched_s",
                        "running_elsewhere_s",
                        "completed_s",
                    )
                    if isinstance(trial.get(key), float)
                )
                + (f" ({trial['error']})" if "error" in trial else "")
            )
    finally:
        stop.set()
        background.join(timeout=30)
        meter.__exit__()
    finished = driver.wait_idle(timeout=120)
    for t in restarts:
        t.join(timeout=120)
    out = _verdict(
        ctx, driver, trials, [bg_batch] + [f"b4-victim-{ctx.stamp}-{k}" for k in range(n_trials)]
    )
    out["all_jobs_ended_in_time"] = finished
    out["cpu"] = meter.summary()
    out["trials"] = trials
    out["victim_seconds"] = VICTIM_SECONDS
    out["background"] = f"{len(HOMOGENEOUS)} jobs of {BACKGROUND_SECONDS:.0f} s kept in flight"
    if ctx.quick:
        out["scaled_down"] = f"quick mode: {n_trials} trials (full: 10)"
    driver.close()
    return out


def _background_load(
    driver: FleetDriver, batch: str, target: int, seed: int, stop: threading.Event
) -> None:
    i = 0
    while not stop.is_set():
        counts = driver.counts(batch)
        live = sum(v for k, v in counts.items() if k not in ("completed", "failed", "cancelled"))
        for _ in range(max(0, target - live)):
            driver.submit(
                "delay", {"seconds": BACKGROUND_SECONDS, "seed": seed + i, "steps": 6}, batch=batch
            )
            i += 1
        stop.wait(0.5)


def _trial(ctx: Context, driver: FleetDriver, k: int, seed: int) -> dict[str, Any]:
    batch = f"b4-victim-{ctx.stamp}-{k}"
    job_id = driver.submit(
        "delay", {"seconds": VICTIM_SECONDS, "seed": seed, "steps": 24}, batch=batch
    )
    stmt = select(Job.status, Job.node, Job.progress_value).where(Job.id == job_id)
    deadline = time.monotonic() + 90
    node = None
    while time.monotonic() < deadline:
        status, node, progress = driver.db.run(lambda s: s.execute(stmt).one(), readonly=True)
        if status == "running" and progress > 0 and node and ctx.nodes[node].process.is_running():
            break
        time.sleep(0.05)
    else:
        return {"job": job_id, "error": f"never executed (status {status})"}
    victim = ctx.nodes[node]
    victim.process.kill()
    killed = time.time()
    ended = driver.wait_batch(batch, 1, timeout=120, poll_s=0.2)

    def restart() -> None:
        victim.process.start()
        victim.process.wait_ready(120)

    restarter = threading.Thread(target=restart, daemon=True)
    restarter.start()
    [(job, attempts)] = driver.job_rows(batch)
    trial: dict[str, Any] = {
        "job": job_id,
        "killed_node": node,
        "status": job.status,
        "attempts": [(a.node, a.status) for a in attempts],
        "_restart": restarter,
    }
    if not ended or len(attempts) < 2:
        trial["error"] = "no second attempt" if ended else "did not end in 120 s"
        return trial
    first, second = attempts[0], attempts[-1]
    if first.finished_at is not None:
        trial["detected_s"] = first.finished_at.timestamp() - killed
    trial["redispatched_s"] = second.created_at.timestamp() - killed
    trial["new_node"] = second.node
    with httpx.Client(timeout=10) as client:
        seen = history(client, ctx.nodes[second.node].url, second.id)
    if seen is not None:
        trial["running_elsewhere_s"] = seen[0] - killed
    if second.started_at is not None:
        trial["submitted_elsewhere_s"] = second.started_at.timestamp() - killed
    if job.finished_at is not None:
        trial["completed_s"] = job.finished_at.timestamp() - killed
    return trial


def _verdict(
    ctx: Context, driver: FleetDriver, trials: list[dict[str, Any]], batches: list[str]
) -> dict[str, Any]:
    assert ctx.fleet is not None
    outputs_dir = Path(ctx.fleet.root / "outputs")

    def read(session: Any) -> tuple[list[tuple[str, str]], dict[str, int]]:
        rows = list(session.execute(select(Job.id, Job.status).where(Job.batch_id.in_(batches))))
        per_job = dict(
            session.execute(
                select(Output.job_id, func.count())
                .where(Output.job_id.in_([r[0] for r in rows]))
                .group_by(Output.job_id)
            ).all()
        )
        return [(r[0], r[1]) for r in rows], per_job

    rows, outputs = driver.db.run(read, readonly=True)
    lost = [job for job, status in rows if status != "completed"]
    duplicate_rows = [job for job, n in outputs.items() if n > 1]
    duplicate_files = [
        job
        for job, _ in rows
        if (outputs_dir / job).is_dir() and len(list((outputs_dir / job).iterdir())) > 1
    ]
    figures = {
        key: summarize(t[key] for t in trials if isinstance(t.get(key), float))
        for key in (
            "detected_s",
            "redispatched_s",
            "submitted_elsewhere_s",
            "running_elsewhere_s",
            "completed_s",
        )
    }
    return {
        "trials_n": len(trials),
        "trials_failed": sum(1 for t in trials if "error" in t),
        "jobs_total": len(rows),
        "lost_jobs": len(lost),
        "lost_job_ids": lost[:20],
        "lost_statuses": sorted({s for _, s in rows if s != "completed"}),
        "duplicate_outputs": len(set(duplicate_rows) | set(duplicate_files)),
        **figures,
    }


def summary_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    def q(key: str) -> str:
        s = result.get(key) or {}
        return f"p50 {s['p50']:.2f}s, p95 {s['p95']:.2f}s" if s.get("n") else "n/a"

    return [
        (
            "B4",
            f"kill -9 -> running elsewhere (n={result.get('trials_n', 0)})",
            q("running_elsewhere_s"),
            f"re-dispatched {q('redispatched_s')}",
            "p50 <= 5s",
        ),
        ("B4", "kill -9 -> job completed", q("completed_s"), f"detected {q('detected_s')}", ""),
        (
            "B4",
            "lost jobs / duplicate outputs",
            f"{result.get('lost_jobs', '?')} / {result.get('duplicate_outputs', '?')}",
            f"of {result.get('jobs_total', '?')} jobs",
            "0 / 0",
        ),
    ]


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Busy fleet ({result.get('background')}); each trial kills (SIGKILL) the node executing a "
        f"{result.get('victim_seconds')} s job. Times are seconds after the kill.",
        "",
        "| measure | n | p50 | p95 | max |",
        "|---|---|---|---|---|",
    ]
    for key in (
        "detected_s",
        "redispatched_s",
        "submitted_elsewhere_s",
        "running_elsewhere_s",
        "completed_s",
    ):
        s = result.get(key) or {}
        if s.get("n"):
            lines.append(
                f"| {key.removesuffix('_s')} | {s['n']} | {s['p50']:.2f} | "
                f"{s['p95']:.2f} | {s['max']:.2f} |"
            )
    lines += [
        "",
        f"Jobs of B4 (victims and background): {result.get('jobs_total')}; lost (not completed): "
        f"**{result.get('lost_jobs')}** {result.get('lost_statuses') or ''}; duplicate outputs: "
        f"**{result.get('duplicate_outputs')}**; failed trials: {result.get('trials_failed')}. "
        f"Other processes used {(result.get('cpu') or {}).get('other_processes_cores', 0):.2f} "
        "cores on average.",
    ]
    for t in result.get("trials", []):
        if "error" in t:
            lines.append(
                f"- trial on {t.get('killed_node', '?')}: {t['error']} "
                f"(attempts {t.get('attempts')})"
            )
    return "\n".join(lines)
