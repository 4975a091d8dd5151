"""The in-process worker: dispatch latency, and real concurrency up to the pool's limit."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from comfyfleet.fleet.provision import deploy, upsert_pool
from deployments import flow_spec
from tests.integration.test_first_job import wait_final

pytestmark = pytest.mark.integration

POOL = "test-inprocess"  # served by no test worker until this module starts one


@pytest.fixture(scope="module")
def probe_pool(prefect_fleet, tmp_path_factory):
    from tests.fixtures.prefect import SESSION_DIR, WorkerProcess

    async def setup() -> object:
        async with get_client() as client:
            await upsert_pool(client, POOL, limit=4, description="in-process worker probe")
            return await deploy(
                client, flow_spec("tests/support/probe_flows.py:probe_sleep"), name="probe",
                pool=POOL, parameters={}, tags=["test"],
                description="latency and concurrency probe",
            )  # fmt: skip

    async def worker_synced() -> None:
        """The worker has synced its pool (its heartbeat is on the server): it polls now."""
        deadline = time.monotonic() + 60
        async with get_client() as client:
            while not await client.read_workers_for_work_pool(work_pool_name=POOL):
                assert time.monotonic() < deadline, f"no worker on {POOL}:\n{worker.log_tail()}"
                await asyncio.sleep(0.2)

    deployment_id = asyncio.run(setup())
    worker = WorkerProcess([POOL], SESSION_DIR / "probe-worker.log")
    worker.start()
    asyncio.run(worker_synced())
    yield deployment_id, tmp_path_factory.mktemp("probe")
    worker.stop()


async def test_eight_runs_at_once_overlap_up_to_the_pool_limit(probe_pool) -> None:
    deployment_id, out = probe_pool
    created = time.time()
    async with get_client() as client:
        runs = [
            await client.create_flow_run_from_deployment(
                deployment_id, parameters={"tag": f"c{i}", "out_dir": str(out), "seconds": 2.0}
            )
            for i in range(8)
        ]
    finals = [await wait_final(r.id, timeout=120) for r in runs]
    assert all(f.state.is_completed() for f in finals)
    spans = [json.loads((Path(out) / f"c{i}.json").read_text()) for i in range(8)]
    edges = sorted([(s["start"], 1) for s in spans] + [(s["end"], -1) for s in spans])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    starts = sorted(s["start"] - created for s in spans)
    print(f"8 runs, pool limit 4: peak overlap {peak}; starts after create: "
          + ", ".join(f"{s:.2f}" for s in starts))  # fmt: skip
    assert peak == 4


async def test_create_to_first_line_latency_is_reported(probe_pool) -> None:
    deployment_id, out = probe_pool
    latencies = []
    async with get_client() as client:
        for i in range(6):
            created = time.time()
            run = await client.create_flow_run_from_deployment(
                deployment_id, parameters={"tag": f"l{i}", "out_dir": str(out), "seconds": 0.0}
            )
            await wait_final(run.id, timeout=60)
            latencies.append(json.loads((Path(out) / f"l{i}.json").read_text())["start"] - created)
    print(f"create → flow line 1: median {statistics.median(latencies):.2f}s, "
          f"max {max(latencies):.2f}s over {len(latencies)} runs")  # fmt: skip
    assert len(latencies) == 6


async def test_a_worker_serving_a_pattern_picks_up_pools_created_later(
    prefect_fleet, tmp_path
) -> None:
    """A node added at run time gets a pool; a worker started with `--pools-matching` serves it
    without a restart, and stops serving it once the pool is deleted."""
    from tests.fixtures.prefect import SESSION_DIR, WorkerProcess

    pool = f"test-late-{int(time.time())}"
    worker = WorkerProcess([], SESSION_DIR / "late-worker.log", matching="test-late-*")
    worker.start()
    try:
        async with get_client() as client:
            await upsert_pool(client, pool, limit=2, description="created after the worker")
            deployment_id = await deploy(
                client, flow_spec("tests/support/probe_flows.py:probe_sleep"), name="late",
                pool=pool,
                parameters={}, tags=["test"], description="pool discovery probe",
            )  # fmt: skip
            run = await client.create_flow_run_from_deployment(
                deployment_id, parameters={"tag": "late", "out_dir": str(tmp_path), "seconds": 0}
            )
        final = await wait_final(run.id, timeout=60)
        assert final.state.is_completed(), worker.log_tail()
        assert (tmp_path / "late.json").exists()
        assert f"serving work pool {pool}" in worker.log_tail(200)
        async with get_client() as client:
            await client.delete_work_pool(pool)
        deadline = time.monotonic() + 20
        while f"work pool {pool} is gone" not in worker.log_tail(200):
            assert time.monotonic() < deadline, worker.log_tail()
            await asyncio.sleep(0.5)
    finally:
        worker.stop()
