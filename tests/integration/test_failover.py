"""Faults on the real fleet: a node killed mid-job, a worker killed mid-job. Nothing is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from comfyfleet import jobs
from tests.integration.test_dispatch import delay, wait_all

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def wait_running(db, job_id: str, *, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        job = jobs.get(db, job_id)
        if job.status == "running" and job.progress_value > 0:
            return job
        assert time.monotonic() < deadline, f"job {job_id} never ran ({job.status})"
        await asyncio.sleep(0.1)


async def test_node_killed_mid_job_the_job_completes_on_another_node(
    fleet_service, fleet_db, principals, comfy_fleet
) -> None:
    job = jobs.submit(fleet_db, delay(6, seed=7001, steps=12), principal=principals["alice"])
    running = await wait_running(fleet_db, job.id)
    victim = next(n for n in comfy_fleet if n.id == running.node)
    victim.kill()
    killed = time.monotonic()
    try:
        [done] = await wait_all(fleet_db, [job.id], timeout=120)
    finally:
        victim.restart()
    assert done.status == "completed", done.error
    first, second = done.attempts
    assert first.node == victim.id and first.status == "node_fault"
    assert second.node != victim.id and second.status == "completed"
    assert len(done.outputs) == 1 and done.outputs[0].node == second.node
    elsewhere = second.started_at.timestamp() - (time.time() - (time.monotonic() - killed))
    print(f"kill -9 of {victim.id} → job running again on {second.node} after {elsewhere:.1f}s")


async def test_worker_killed_mid_job_the_prompt_is_adopted_and_nothing_runs_twice(
    fleet_service, prefect_fleet, fleet_db, principals
) -> None:
    job = jobs.submit(fleet_db, delay(8, seed=7002, steps=16), principal=principals["bob"])
    running = await wait_running(fleet_db, job.id)
    os.killpg(prefect_fleet.proc.pid, signal.SIGKILL)
    prefect_fleet.proc.wait()
    killed = time.monotonic()
    prefect_fleet.start()  # a supervisor restarts the worker; its old runs are orphans now
    [done] = await wait_all(fleet_db, [job.id], timeout=120)
    print(f"worker kill -9 → job {done.status} {time.monotonic() - killed:.1f}s later")
    assert done.status == "completed", done.error
    [attempt] = done.attempts  # adopted: the same attempt, the prompt ran once on its node
    assert attempt.status == "completed" and attempt.node == running.node
    assert len(done.outputs) == 1 and done.outputs[0].prompt_id == attempt.id
