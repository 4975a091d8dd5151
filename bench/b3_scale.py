"""B3 scale: 16 nodes, 2,000 jobs through the REST gateway; routing time; control-plane memory.

- Routing: `Router.choose` (pure) timed over simulated registries of 16 and 100 nodes, every
  strategy.
- A control plane of its own over 16 nodes: Prefect server on PostgreSQL (a fresh database), the
  job store on MariaDB when it is reachable (else SQLite), the gateway (uvicorn, its own process),
  one worker process for all 16 pools and the fleet service. 2,000 delay jobs are POSTed to
  `/api/v2/tasks` by 16 concurrent clients: accepted jobs/s and request latency. Then the fleet
  works for a while (the rest of the backlog is dropped with the control plane): jobs completed
  per second, and the total RSS of gateway + Prefect server + worker + fleet service, sampled
  every second (peak and mean). The same again with the Prefect server on SQLite (full mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from typing import Any

import httpx

from bench.baselines import clear_queues
from bench.context import Context
from bench.drive import CpuMeter, FleetDriver, process_cpu_s, tree_rss
from bench.fleet import ControlPlane, NodeEntry, mysql_available, postgres_available
from bench.stats import percentile, summarize
from comfyfleet.fleet.router import STRATEGIES, JobView, NodeView, Router

NAME = "B3"
TITLE = "scale"
SIZES = {
    "full": {"nodes": 16, "jobs": 2000, "window_s": 30, "variants": ["postgres", "sqlite"]},
    "quick": {"nodes": 6, "jobs": 200, "window_s": 10, "variants": ["postgres"]},
}
CONCURRENCY = 16
JOB_SECONDS = 1.0


def run(ctx: Context) -> dict[str, Any]:
    sizes = SIZES["quick" if ctx.quick else "full"]
    out: dict[str, Any] = {"routing": routing_times(iterations=2000 if ctx.quick else 10000)}
    ctx.log("B3: routing decision times measured; stopping the main fleet")
    ctx.stop_main_fleet()
    ids = _node_ids(ctx, sizes["nodes"])
    if ctx.quick:
        out["scaled_down"] = (
            f"quick mode: {len(ids)} nodes, {sizes['jobs']} jobs, "
            f"{sizes['window_s']} s window, PostgreSQL only"
        )
    store = "mysql" if mysql_available() else "sqlite"
    variants = [v for v in sizes["variants"] if v != "postgres" or postgres_available()]
    out["store_db"] = store
    out["nodes"] = len(ids)
    for variant in variants:
        ctx.log(f"B3: {len(ids)} nodes, Prefect server on {variant}, job store on {store}")
        out[f"prefect_{variant}"] = _one_variant(ctx, ids, variant, store, sizes)
    return out


def _node_ids(ctx: Context, count: int) -> list[str]:
    """`count` nodes: those already running (B1's), then new speed-1 nodes `gpu-N`."""
    have = list(ctx.nodes.nodes)
    if len(have) < count:
        fresh = [f"gpu-{i}" for i in range(1, 4 * count) if f"gpu-{i}" not in ctx.nodes.nodes]
        ctx.nodes.ensure([(i, 1.0) for i in fresh[: count - len(have)]])
    return list(ctx.nodes.nodes)[:count]


def _one_variant(
    ctx: Context, ids: list[str], prefect_db: str, store: str, sizes: dict[str, Any]
) -> dict[str, Any]:
    entries = [NodeEntry(i, ctx.nodes[i].url, ["delay"]) for i in ids]
    cp = ControlPlane(
        ctx.run_dir / f"b3-{prefect_db}",
        entries,
        prefect_db=prefect_db,
        store_db=store,
        gateway=True,
    )
    result: dict[str, Any] = {}
    try:
        cp.start()
        result["control_plane_start_s"] = cp.timings
        driver = FleetDriver(cp)
        sampler = RssSampler(cp)
        sampler.start()
        idle = sampler.sample()
        result["rss_idle_mb"] = {k: v / 2**20 for k, v in idle.items()}
        pids = {name: [pid] for name, pid in cp.pids().items()}
        batch = f"b3-{prefect_db}-{ctx.stamp}"
        with CpuMeter(pids) as meter:
            gateway_pid = cp.pids().get("gateway")
            gateway_cpu = process_cpu_s(gateway_pid) if gateway_pid else 0.0
            try:
                token = cp.bench_token(driver.db)
                result["submit"] = asyncio.run(
                    _rest_submit(cp.gateway_url, token, sizes["jobs"], batch)
                )
                result["submit"]["via"] = "REST POST /api/v2/tasks (httpx, uvicorn gateway)"
            except Exception as exc:
                ctx.log(f"B3: the gateway is not usable ({exc!r}); submitting with jobs.submit")
                result["gateway_error"] = repr(exc)
                result["submit"] = _direct_submit(driver, sizes["jobs"], batch)
                result["submit"]["via"] = "comfyfleet.jobs.submit (gateway unusable)"
            accepted = result["submit"].get("accepted") or 0
            if gateway_pid and accepted and "gateway_error" not in result:
                used = process_cpu_s(gateway_pid) - gateway_cpu
                result["submit"]["gateway_cpu_ms_per_job"] = used / accepted * 1000
            submitted_at = time.monotonic()
            done_at_submit = driver.counts(batch).get("completed", 0)
            time.sleep(sizes["window_s"])
            counts = driver.counts(batch)
            window = time.monotonic() - submitted_at
        result["window_s"] = window
        result["status_after_window"] = counts
        result["completed_per_s_in_window"] = (counts.get("completed", 0) - done_at_submit) / window
        result["ideal_completed_per_s"] = sum(ctx.speeds(ids).values()) / JOB_SECONDS
        result["cpu"] = meter.summary()
        sampler.stop()
        result["rss"] = sampler.summary()
        driver.close()
        cp.check_alive()
    except Exception as exc:
        ctx.log(f"B3 ({prefect_db}) failed: {exc!r}")
        result["error"] = repr(exc)
    finally:
        cp.stop()
        with contextlib.suppress(Exception):
            clear_queues(ctx.node_pairs(ids))
    return result


async def _rest_submit(url: str, token: str, n: int, batch: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    seeds = iter(range(n))
    latencies: list[float] = []
    errors: list[str] = []
    base = int(time.time()) * 1000 + 900_000

    async def worker(client: httpx.AsyncClient) -> None:
        for i in seeds:
            body = {
                "workflow": "delay",
                "params": {"seconds": JOB_SECONDS, "seed": base + i, "steps": 2},
                "batch_id": batch,
            }
            t = time.perf_counter()
            try:
                r = await client.post(f"{url}/api/v2/tasks", json=body, headers=headers)
                ok = r.status_code == 202
                if not ok and len(errors) < 5:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
            except httpx.HTTPError as exc:
                ok = False
                if len(errors) < 5:
                    errors.append(repr(exc))
            if ok:
                latencies.append(time.perf_counter() - t)

    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        probe = await client.post(
            f"{url}/api/v2/tasks",
            headers=headers,
            json={
                "workflow": "delay",
                "params": {"seconds": JOB_SECONDS, "seed": base - 1},
                "batch_id": batch,
            },
        )
        if probe.status_code != 202:
            raise RuntimeError(
                f"POST /api/v2/tasks answered {probe.status_code}: {probe.text[:300]}"
            )
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - t0
    return {
        "jobs": n,
        "accepted": len(latencies),
        "elapsed_s": elapsed,
        "jobs_per_s": len(latencies) / elapsed,
        "concurrency": CONCURRENCY,
        "request_latency_s": summarize(latencies),
        "errors": errors,
    }


def _direct_submit(driver: FleetDriver, n: int, batch: str) -> dict[str, Any]:
    base = int(time.time()) * 1000 + 950_000
    latencies = []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        driver.submit("delay", {"seconds": JOB_SECONDS, "seed": base + i, "steps": 2}, batch=batch)
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - t0
    return {
        "jobs": n,
        "accepted": n,
        "elapsed_s": elapsed,
        "jobs_per_s": n / elapsed,
        "concurrency": 1,
        "request_latency_s": summarize(latencies),
    }


class RssSampler:
    """Every second: RSS of each control-plane process (with its children)."""

    def __init__(self, cp: ControlPlane, interval: float = 1.0) -> None:
        self.cp, self.interval = cp, interval
        self.samples: list[dict[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> dict[str, int]:
        return tree_rss(self.cp.pids())

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.sample())
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def summary(self) -> dict[str, Any]:
        totals = [sum(s.values()) for s in self.samples]
        if not totals:
            return {}
        peak = self.samples[totals.index(max(totals))]
        return {
            "samples": len(totals),
            "total_peak_mb": max(totals) / 2**20,
            "total_mean_mb": sum(totals) / len(totals) / 2**20,
            "at_peak_mb": {k: v / 2**20 for k, v in peak.items()},
            "per_process_peak_mb": {
                name: max(s.get(name, 0) for s in self.samples) / 2**20 for name in peak
            },
            "counted": sorted(peak),
            "series_total_mb": [round(t / 2**20, 1) for t in totals],
            "not_counted": "ComfyUI nodes, PostgreSQL/MariaDB servers (shared services)",
        }


# -- routing (pure) ----------------------------------------------------------------------------


def simulated_views(n: int, rng: random.Random) -> list[NodeView]:
    """n healthy nodes with mixed load, capabilities, weights, priorities and checkpoints."""
    ckpts = ["sd15.safetensors", "sdxl.safetensors", "svd.safetensors"]
    caps = ["text_to_image", "text_to_image_sdxl", "image_to_video", "delay"]
    views = []
    for i in range(n):
        capacity = rng.choice([1, 2, 2, 4])
        views.append(
            NodeView(
                id=f"gpu-{i + 1:03d}",
                url=f"http://10.0.{i // 250}.{i % 250}:8188",
                capacity=capacity,
                in_flight=rng.randint(0, capacity),
                queue_depth=rng.randint(0, 2),
                capabilities=frozenset([*rng.sample(caps, rng.randint(2, 4)), "delay"]),
                models={"checkpoints": frozenset(rng.sample(ckpts, rng.randint(1, 3)))},
                weight=rng.choice([1.0, 2.0, 4.0]),
                priority=rng.randint(0, 2),
                last_checkpoint=rng.choice([*ckpts, None]),
            )
        )
    return views


def routing_times(*, iterations: int, sizes: tuple[int, ...] = (16, 100)) -> dict[str, Any]:
    """Per strategy and registry size: mean and p99 of one `Router.choose` call (ms)."""
    rng = random.Random(8)
    out: dict[str, Any] = {"iterations": iterations, "unit": "ms per decision"}
    job = JobView(
        id="j",
        capability="delay",
        required_models={"checkpoints": frozenset(["sd15.safetensors"])},
        checkpoint="sd15.safetensors",
    )
    backlog = {"sd15.safetensors": 40, "sdxl.safetensors": 5}
    for n in sizes:
        views = simulated_views(n, rng)
        per: dict[str, Any] = {}
        for strategy in STRATEGIES:
            router = Router(strategy, rng=random.Random(1))
            samples = []
            for _ in range(iterations):
                t = time.perf_counter()
                router.choose(job, views, backlog)
                samples.append((time.perf_counter() - t) * 1000)
            per[strategy] = {
                "mean": sum(samples) / len(samples),
                "p50": percentile(samples, 50),
                "p99": percentile(samples, 99),
                "max": max(samples),
            }
        out[f"{n}_nodes"] = per
    return out


def summary_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    routing = result.get("routing", {})
    for n in (16, 100):
        per = routing.get(f"{n}_nodes", {})
        if per:
            worst = max(per.items(), key=lambda kv: kv[1]["p99"])
            rows.append(
                (
                    "B3",
                    f"routing decision, {n} nodes (least_loaded)",
                    f"mean {per['least_loaded']['mean']:.3f} ms, "
                    f"p99 {per['least_loaded']['p99']:.3f} ms",
                    f"slowest strategy {worst[0]} p99 {worst[1]['p99']:.3f} ms",
                    "< 5 ms" if n == 100 else "",
                )
            )
    for variant in ("postgres", "sqlite"):
        r = result.get(f"prefect_{variant}")
        if not r:
            continue
        if "error" in r and "submit" not in r:
            rows.append(("B3", f"Prefect on {variant}", "failed", r["error"][:80], ""))
            continue
        s = r.get("submit", {})
        via = "REST" if s.get("via", "").startswith("REST") else "jobs.submit"
        rows.append(
            (
                "B3",
                f"{via} submit throughput ({result.get('nodes')} nodes, Prefect {variant})",
                f"{s.get('jobs_per_s', 0):.0f} jobs/s",
                f"{s.get('accepted', 0)} accepted, request p50 "
                f"{(s.get('request_latency_s') or {}).get('p50', float('nan')) * 1000:.0f} ms, "
                f"gateway CPU {s.get('gateway_cpu_ms_per_job', float('nan')):.0f} ms/job",
                ">= 100 jobs/s",
            )
        )
        rss = r.get("rss") or {}
        if rss:
            rows.append(
                (
                    "B3",
                    f"control-plane RSS peak (Prefect {variant})",
                    f"{rss['total_peak_mb']:.0f} MB",
                    ", ".join(f"{k} {v:.0f}" for k, v in rss["at_peak_mb"].items()),
                    "< 1500 MB",
                )
            )
        if "completed_per_s_in_window" in r:
            rows.append(
                (
                    "B3",
                    f"jobs completed/s while loaded (Prefect {variant})",
                    f"{r['completed_per_s_in_window']:.2f}/s",
                    f"ideal {r['ideal_completed_per_s']:.0f}/s "
                    f"({result.get('nodes')} nodes x 1 s jobs)",
                    "",
                )
            )
    return rows


def markdown(result: dict[str, Any]) -> str:
    routing = result.get("routing", {})
    lines = [
        f"Routing: `Router.choose` over simulated registries, {routing.get('iterations')} "
        "decisions per strategy (ms per decision).",
        "",
        "| strategy | 16 nodes mean | 16 nodes p99 | 100 nodes mean | 100 nodes p99 |",
        "|---|---|---|---|---|",
    ]
    for strategy in STRATEGIES:
        a = routing.get("16_nodes", {}).get(strategy, {})
        b = routing.get("100_nodes", {}).get(strategy, {})
        if a and b:
            lines.append(
                f"| {strategy} | {a['mean']:.3f} | {a['p99']:.3f} | {b['mean']:.3f} | "
                f"{b['p99']:.3f} |"
            )
    lines += [
        "",
        f"Load: {result.get('nodes')} nodes, job store on {result.get('store_db')}.",
        "",
        "| Prefect DB | via | accepted | jobs/s | request p50 ms | p95 ms | RSS peak MB "
        "(gateway, server, worker, service) | completed/s in window | other processes (cores) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant in ("postgres", "sqlite"):
        r = result.get(f"prefect_{variant}")
        if not r:
            continue
        if "submit" not in r:
            lines.append(f"| {variant} | failed: {r.get('error', '')[:120]} | | | | | | | |")
            continue
        s, rss = r["submit"], r.get("rss") or {}
        lat = s.get("request_latency_s") or {}
        peak = rss.get("at_peak_mb", {})
        parts = ", ".join(
            f"{peak.get(k, 0):.0f}"
            for k in ("gateway", "prefect-server", "worker", "fleet-service")
        )
        lines.append(
            f"| {variant} | {s.get('via', '')} | {s.get('accepted')} | "
            f"{s.get('jobs_per_s', 0):.1f} | {lat.get('p50', float('nan')) * 1000:.0f} | "
            f"{lat.get('p95', float('nan')) * 1000:.0f} | "
            f"{rss.get('total_peak_mb', 0):.0f} ({parts}) | "
            f"{r.get('completed_per_s_in_window', 0):.2f} | "
            f"{(r.get('cpu') or {}).get('other_processes_cores', 0):.2f} |"
        )
        if r.get("error"):
            lines.append(f"\n{variant}: {r['error'][:300]}")
    for variant in ("postgres", "sqlite"):
        r = result.get(f"prefect_{variant}") or {}
        if "status_after_window" in r:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(r["status_after_window"].items()))
            cpu = ", ".join(
                f"{k} {v:.1f}" for k, v in (r.get("cpu") or {}).get("cpu_s", {}).items()
            )
            gw = (r.get("submit") or {}).get("gateway_cpu_ms_per_job")
            lines.append(
                f"\nPrefect on {variant}: jobs after the {r.get('window_s', 0):.0f} s window: "
                f"{counts}. CPU seconds during submit + window: {cpu}"
                + (f"; gateway {gw:.1f} ms CPU per accepted job." if gw else ".")
            )
    return "\n".join(lines)
