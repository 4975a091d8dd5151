"""B2 dispatch latency on an idle fleet, one job at a time.

- ComfyFleet: `jobs.submit` → ComfyUI `execution_start` of the attempt (the prompt id is the
  attempt id), and ComfyUI `execution_success` → the job row `completed` with its outputs
  (`finished_at`: what every caller reads). The bench also polls the job every 25 ms, as an
  eager caller would, and reports when it saw the outputs.
- Baseline 1, direct: POST /prompt to gpu-1 → `execution_start`; `execution_success` → the
  entry in /history (polled every 20 ms).
- Baseline 2, the stock Prefect process worker: `prefect worker start --type process` with
  `PREFECT_WORKER_QUERY_SECONDS=1`, a `process` pool and a deployment of the same flow
  (`comfy-workflow`, pinned to gpu-1, as a run started from Prefect directly records itself):
  create flow run → `execution_start`; `execution_success` → the job row `completed`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import httpx
from sqlalchemy import select

from bench import baselines
from bench.context import HOMOGENEOUS, Context
from bench.drive import CpuMeter, FleetDriver
from bench.fleet import Child
from bench.stats import Execution, latencies, parse_history_entry, summarize
from comfyfleet.settings import REPO_ROOT
from comfyfleet.store.models import Job

NAME = "B2"
TITLE = "dispatch latency"
SIZES = {
    "full": {"fleet": 50, "direct": 50, "process": 10},
    "quick": {"fleet": 8, "direct": 8, "process": 2},
}
BUDGET_S = {"full": 300, "quick": 60}  # the ComfyFleet series stops early past 60 % of it
JOB_SECONDS = 0.2
PROCESS_POOL = "bench-process"


def run(ctx: Context) -> dict[str, Any]:
    cp = ctx.main_fleet()
    driver = FleetDriver(cp)
    sizes = SIZES["quick" if ctx.quick else "full"]
    seed = int(time.time()) * 1000 + 500_000
    out: dict[str, Any] = {"job_seconds": JOB_SECONDS, "sizes": sizes, "samples": {}}
    out["scaled_down"] = (
        f"quick mode: {sizes['fleet']} jobs (full: 50)"
        if ctx.quick
        else "process worker: 10 runs (each costs a Python process, ~3-8 s)"
    )
    started = time.monotonic()
    budget = BUDGET_S["quick" if ctx.quick else "full"]

    ctx.log("B2: warm-up (2 jobs, not counted)")
    warm = f"b2-warm-{ctx.stamp}"
    for i in range(2):
        driver.submit("delay", {"seconds": JOB_SECONDS, "seed": seed + i, "steps": 2}, batch=warm)
    driver.wait_batch(warm, 2, timeout=120)
    seed += 10

    ctx.log(f"B2: ComfyFleet, {sizes['fleet']} jobs one at a time")
    batch = f"b2-{ctx.stamp}"
    seen: dict[str, float] = {}
    flow_runs: dict[str, Any] = {}
    pids = {name: [pid] for name, pid in cp.pids().items()}
    with CpuMeter(pids) as meter, cp.prefect():
        for i in range(sizes["fleet"]):
            if time.monotonic() - started > 0.6 * budget:
                ctx.log(f"B2: time budget: stopping the ComfyFleet series after {i} jobs")
                out["stopped_early"] = f"ComfyFleet series: {i} of {sizes['fleet']} jobs (budget)"
                break
            job_id = driver.submit(
                "delay", {"seconds": JOB_SECONDS, "seed": seed + i, "steps": 2}, batch=batch
            )
            seen[job_id] = _poll_completed(driver, job_id, timeout=120)
            # An idle fleet for the next job: this one's task run has ended too (it publishes
            # its artifact and reports its final state after the job is already complete).
            flow_runs[job_id] = _wait_task_run_final(driver, job_id)
            time.sleep(0.2)
    seed += sizes["fleet"]
    urls = {n: ctx.nodes[n].url for n in HOMOGENEOUS}
    fleet = driver.executions(batch, urls)
    out["comfyfleet"] = _figures(fleet)
    out["comfyfleet"]["cpu"] = meter.summary()
    polled = [seen[e.job] - e.end for e in fleet if seen.get(e.job)]
    out["comfyfleet"]["end_to_seen_by_polling_caller_s"] = summarize(polled)
    out["comfyfleet"]["stages"] = _stages(driver, batch, fleet, flow_runs)
    out["samples"]["comfyfleet"] = _samples(fleet)

    ctx.log(f"B2: direct POST /prompt, {sizes['direct']} prompts")
    from comfyfleet.jobs import load_catalog

    catalog = load_catalog(cp.settings)
    params = [
        {"seconds": JOB_SECONDS, "seed": seed + i, "steps": 2} for i in range(sizes["direct"])
    ]
    seed += sizes["direct"]
    direct = []
    for prompt in baselines.make_prompts(catalog, "delay", params, f"direct-{ctx.stamp}"):
        direct.append(baselines.direct_latency(ctx.nodes["gpu-1"].url, "gpu-1", prompt))
        time.sleep(0.1)
    out["direct"] = _figures(direct)
    out["samples"]["direct"] = _samples(direct)

    ctx.log(f"B2: stock Prefect process worker, {sizes['process']} runs")
    try:
        proc = _process_worker(ctx, driver, sizes["process"], seed)
        out["process_worker"] = _figures(proc)
        out["samples"]["process_worker"] = _samples(proc)
    except Exception as exc:  # reported, the rest of the run goes on
        ctx.log(f"B2: process worker baseline failed: {exc!r}")
        out["process_worker"] = {"error": repr(exc)}
    driver.close()
    return out


def _poll_completed(driver: FleetDriver, job_id: str, *, timeout: float) -> float:
    stmt = select(Job.status).where(Job.id == job_id)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = driver.db.run(lambda s: s.scalar(stmt), readonly=True)
        if status in ("completed", "failed", "cancelled"):
            return time.time()
        time.sleep(0.025)
    return float("nan")


def _wait_task_run_final(driver: FleetDriver, job_id: str, timeout: float = 10) -> Any:
    """The job's task run (in its node's shift) once it is final (None if it cannot be read)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    wanted = TaskRunFilter(name=TaskRunFilterName(like_=job_id))
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(task_run_filter=wanted)
            run = runs[-1] if runs else None
            final = run is not None and run.state is not None and run.state.is_final()
            if final or time.monotonic() > deadline:
                return run
            time.sleep(0.1)


def _stages(
    driver: FleetDriver, batch: str, execs: list[Execution], task_runs: dict[str, Any]
) -> dict[str, Any]:
    """Where submit → execution_start goes, per stage (p50/p95 over the jobs)."""
    by_job = {e.job: e for e in execs}
    stages: dict[str, list[float]] = {
        "submit -> dispatched (the dispatcher places it, rung by the submit)": [],
        "dispatched -> task run Running (the node's shift takes it)": [],
        "task run Running -> execution_start (render, submit, ComfyUI starts it)": [],
        "execution_success -> job completed (follow, collect outputs, record)": [],
        "job completed -> task run final (publish artifact, final state)": [],
    }
    keys = list(stages)
    for job, _attempts in driver.job_rows(batch):
        e, run = by_job.get(job.id), task_runs.get(job.id)
        if e is None or job.dispatched_at is None or run is None or run.start_time is None:
            continue
        if job.finished_at is None:
            continue
        dispatched, running = job.dispatched_at.timestamp(), run.start_time.timestamp()
        finished = job.finished_at.timestamp()
        stages[keys[0]].append(dispatched - e.submitted)
        stages[keys[1]].append(running - dispatched)
        stages[keys[2]].append(e.start - running)
        stages[keys[3]].append(finished - e.end)
        if run.end_time is not None:
            stages[keys[4]].append(run.end_time.timestamp() - finished)
    return {k: summarize(v) for k, v in stages.items()}


def _figures(execs: list[Execution]) -> dict[str, Any]:
    lat = latencies(execs)
    return {
        "n": len(execs),
        "submit_to_start_s": summarize(lat["submit_to_start_s"]),
        "end_to_visible_s": summarize(lat["end_to_visible_s"]),
        "execution_s": summarize(e.end - e.start for e in execs),
    }


def _samples(execs: list[Execution]) -> dict[str, list[float]]:
    lat = latencies(execs)
    return {k: [round(v, 4) for v in vals] for k, vals in lat.items()}


# -- the stock process worker ------------------------------------------------------------------


def _process_worker(ctx: Context, driver: FleetDriver, n: int, seed: int) -> list[Execution]:
    cp = ctx.fleet
    assert cp is not None
    with cp.prefect():
        deployment_id = asyncio.run(_deploy_process_pool())
    env = dict(cp.env())
    env["PREFECT_WORKER_QUERY_SECONDS"] = "1"
    worker = cp.children["process-worker"] = Child(
        "process-worker",
        [
            sys.executable,
            "-m",
            "prefect",
            "worker",
            "start",
            "--pool",
            PROCESS_POOL,
            "--type",
            "process",
            "--name",
            "bench-process",
        ],
        env,
        cp.root / "logs" / "process-worker.log",
    )
    worker.start()
    try:
        _wait_log(worker, "started", timeout=90)
        out = []
        url = ctx.nodes["gpu-1"].url
        with cp.prefect():
            for i in range(n + 1):  # the first run warms the worker up; not counted
                s = seed + i
                execution = asyncio.run(_one_process_run(deployment_id, url, s))
                if i > 0:
                    out.append(_with_visible(driver, execution))
                time.sleep(0.3)
        return out
    finally:
        worker.stop()
        cp.children.pop("process-worker", None)


async def _deploy_process_pool() -> Any:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.utilities.callables import parameter_schema
    from prefect.workers.process import ProcessWorker

    from comfyfleet.worker import load_flow

    entrypoint = "flows/comfy_workflow.py:comfy_workflow"
    flow = load_flow(entrypoint)
    async with get_client() as client:
        try:
            await client.create_work_pool(
                WorkPoolCreate(
                    name=PROCESS_POOL,
                    type="process",
                    concurrency_limit=2,
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                )
            )
        except ObjectAlreadyExists:
            pass
        flow_id = await client.create_flow_from_name(flow.name)
        return await client.create_deployment(
            flow_id=flow_id,
            name=PROCESS_POOL,
            entrypoint=entrypoint,
            path=str(REPO_ROOT),
            work_pool_name=PROCESS_POOL,
            parameters={"node": "gpu-1"},
            pull_steps=[
                {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO_ROOT)}}
            ],
            job_variables={"working_dir": str(REPO_ROOT)},
            parameter_openapi_schema=parameter_schema(flow.fn).model_dump_for_openapi(),
        )


async def _one_process_run(deployment_id: Any, url: str, seed: int) -> Execution:
    from prefect.client.orchestration import get_client

    params = {
        "workflow": "delay",
        "node": "gpu-1",
        "params": {"seconds": JOB_SECONDS, "seed": seed, "steps": 2},
    }
    async with get_client() as client:
        submitted = time.time()
        run = await client.create_flow_run_from_deployment(deployment_id, parameters=params)
        deadline = time.monotonic() + 120
        while True:
            state = (await client.read_flow_run(run.id)).state
            if state is not None and state.is_final():
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"process-worker run {run.id} not final after 120 s")
            await asyncio.sleep(0.1)
    if not state.is_completed():
        raise RuntimeError(f"process-worker run ended {state.type}: {state.message}")
    async with httpx.AsyncClient(timeout=30) as http:
        body = (await http.get(f"{url}/history", params={"max_items": 20})).json()
    for prompt_id, entry in body.items():
        graph = entry["prompt"][2]
        if any(node.get("inputs", {}).get("seed") == seed for node in graph.values()):
            parsed = parse_history_entry(entry)
            if parsed:
                start, end, ok = parsed
                job = prompt_id.rsplit("-", 1)[0]
                return Execution(job, "gpu-1", prompt_id, submitted, start, end, ok)
    raise LookupError(f"no prompt with seed {seed} in the history of {url}")


def _with_visible(driver: FleetDriver, e: Execution) -> Execution:
    stmt = select(Job.finished_at).where(Job.id == e.job)
    finished = driver.db.run(lambda s: s.scalar(stmt), readonly=True)
    visible = finished.timestamp() if finished is not None else None
    return Execution(e.job, e.node, e.prompt_id, e.submitted, e.start, e.end, e.ok, visible)


def _wait_log(child: Child, text: str, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited:\n{child.log_tail()}")
        if text in child.log_tail(50):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{child.name} not ready after {timeout}s:\n{child.log_tail()}")


def summary_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    f, d, p = (
        result.get("comfyfleet", {}),
        result.get("direct", {}),
        result.get("process_worker", {}),
    )
    rows = []

    def q(block: dict[str, Any], key: str) -> str:
        s = block.get(key)
        if not s or not s.get("n"):
            return "n/a"
        return f"p50 {s['p50']:.3f}s, p95 {s['p95']:.3f}s"

    rows.append(
        (
            "B2",
            f"submit -> execution_start (n={f.get('n', 0)})",
            q(f, "submit_to_start_s"),
            f"direct {q(d, 'submit_to_start_s')}; process worker "
            f"{q(p, 'submit_to_start_s') if 'error' not in p else 'failed'}",
            "p50 <= 0.5s",
        )
    )
    rows.append(
        (
            "B2",
            "execution_success -> outputs visible",
            q(f, "end_to_visible_s"),
            f"direct {q(d, 'end_to_visible_s')}; process worker "
            f"{q(p, 'end_to_visible_s') if 'error' not in p else 'failed'}",
            "<= 0.3s",
        )
    )
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Idle fleet, one job at a time, delay jobs of {result.get('job_seconds')} s. "
        "submit → start: the caller's submit until ComfyUI `execution_start`; end → visible: "
        "ComfyUI `execution_success` until the caller can read the outputs (ComfyFleet and the "
        "process worker: the job row `completed` with its outputs; direct: the /history entry, "
        "polled every 20 ms).",
        "",
        "| system | n | submit → start p50 | p95 | end → visible p50 | p95 |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("comfyfleet", "direct", "process_worker"):
        f = result.get(name) or {}
        if "error" in f:
            lines.append(f"| {name} | failed: {f['error'][:120]} | | | | |")
            continue
        a, b = f.get("submit_to_start_s") or {}, f.get("end_to_visible_s") or {}
        if not a:
            continue
        lines.append(
            f"| {name} | {f.get('n')} | {a['p50']:.3f} | {a['p95']:.3f} | "
            f"{b.get('p50', float('nan')):.3f} | {b.get('p95', float('nan')):.3f} |"
        )
    stages = (result.get("comfyfleet") or {}).get("stages") or {}
    if stages:
        lines += [
            "",
            "Where ComfyFleet's time goes (per job, from the job row, the attempt row, "
            "the Prefect flow run and ComfyUI):",
            "",
            "| stage | p50 s | p95 s |",
            "|---|---|---|",
        ]
        for name, s in stages.items():
            if s.get("n"):
                lines.append(f"| {name} | {s['p50']:.3f} | {s['p95']:.3f} |")
    cpu = (result.get("comfyfleet") or {}).get("cpu") or {}
    if cpu:
        lines += [
            "",
            f"Other processes on the machine used {cpu.get('other_processes_cores', 0):.2f}"
            " cores on average during the ComfyFleet series.",
        ]
    polled = (result.get("comfyfleet") or {}).get("end_to_seen_by_polling_caller_s") or {}
    if polled.get("n"):
        lines += [
            "",
            f"A caller polling the job every 25 ms saw the outputs {polled['p50']:.3f} s "
            f"(p50) / {polled['p95']:.3f} s (p95) after `execution_success`.",
        ]
    return "\n".join(lines)
