"""Jobs through the whole control plane: jobs.submit → dispatcher → worker → real ComfyUI nodes."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from comfyfleet import jobs
from comfyfleet.catalog import ParamError
from comfyfleet.jobs import JobRequest

pytestmark = pytest.mark.integration


def delay(seconds: float, **params: object) -> JobRequest:
    priority = params.pop("priority", "normal")
    return JobRequest(workflow="delay", params={"seconds": seconds, **params}, priority=priority)


async def wait_all(db, ids: list[str], *, timeout: float = 240.0) -> list:
    deadline = time.monotonic() + timeout
    while True:
        done = [jobs.get(db, i) for i in ids]
        if all(j.status in ("completed", "failed", "cancelled") for j in done):
            return done
        if time.monotonic() > deadline:
            states = Counter(j.status for j in done)
            raise TimeoutError(f"jobs not finished after {timeout}s: {dict(states)}")
        await asyncio.sleep(0.3)


async def test_submitted_jobs_run_on_the_fleet_with_outputs_and_provenance(
    fleet_service, fleet_db, principals, comfy_fleet
) -> None:
    alice = principals["alice"]
    submitted = time.monotonic()
    ids = [jobs.submit(fleet_db, delay(0.5, seed=i), principal=alice).id for i in range(8)]
    done = await wait_all(fleet_db, ids)
    print(f"8 delay jobs of 0.5 s on {len(comfy_fleet)} nodes: {time.monotonic() - submitted:.1f}s")
    assert [j.status for j in done] == ["completed"] * 8, [(j.status, j.error) for j in done]
    nodes = Counter(j.node for j in done)
    assert set(nodes) == {n.id for n in comfy_fleet}, nodes  # spread over the fleet
    for job in done:
        [attempt] = job.attempts
        assert attempt.status == "completed" and attempt.flow_run_id
        [output] = job.outputs
        assert output.node == job.node and output.prompt_id == attempt.id
        assert Path(output.path).is_file() and output.size > 0
        assert job.gpu_seconds >= 0.5


async def test_text_to_image_job_through_the_dispatcher_uses_the_typed_flow(
    fleet_service, fleet_db, principals
) -> None:
    job = jobs.submit(
        fleet_db,
        JobRequest(workflow="sd15-basic", params={"prompt": "a red fox", "height": 80}),
        principal=principals["bob"],
    )
    [done] = await wait_all(fleet_db, [job.id])
    assert done.status == "completed", done.error
    [output] = done.outputs
    assert Image.open(output.path).size == (64, 80)
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        run = await client.read_flow_run(done.attempts[0].flow_run_id)
    assert run.name == f"t2i-{job.id}"
    assert {f"job:{job.id}", f"node:{done.node}", "user:bob", "workflow:sd15-basic"} <= set(
        run.tags
    )


def test_bad_parameters_are_rejected_before_anything_is_written(fleet_db, principals) -> None:
    before = len(jobs.list_for(fleet_db, principal=principals["alice"]))
    with pytest.raises(ParamError, match="seconds"):
        jobs.submit(fleet_db, delay(-1), principal=principals["alice"])
    with pytest.raises(ParamError, match="colour"):
        jobs.submit(fleet_db, delay(1, colour="red"), principal=principals["alice"])
    assert len(jobs.list_for(fleet_db, principal=principals["alice"])) == before


async def test_high_priority_job_starts_at_the_next_free_slot(
    fleet_service, fleet_db, principals, comfy_fleet
) -> None:
    alice = principals["alice"]
    slots = 2 * len(comfy_fleet)
    blockers = [jobs.submit(fleet_db, delay(3, seed=100 + i), principal=alice).id
                for i in range(slots)]  # fmt: skip
    await asyncio.sleep(1.5)  # every slot busy
    normals = [jobs.submit(fleet_db, delay(1, seed=200 + i), principal=alice).id
               for i in range(12)]  # fmt: skip
    high = jobs.submit(fleet_db, delay(0.2, seed=300, priority="high"), principal=alice).id
    done = await wait_all(fleet_db, [*blockers, *normals, high])
    assert all(j.status == "completed" for j in done)
    by_id = {j.id: j for j in done}
    high_start = by_id[high].started_at
    started_before = [n for n in normals if by_id[n].started_at < high_start]
    assert len(started_before) == 0, (
        f"{len(started_before)} normal jobs started before the high one"
    )


async def test_cancel_queued_and_running_jobs(
    fleet_service, fleet_db, principals, comfy_fleet
) -> None:
    alice = principals["alice"]
    running = jobs.submit(fleet_db, delay(30, seed=400, steps=30), principal=alice).id
    deadline = time.monotonic() + 60
    while jobs.get(fleet_db, running).status != "running":
        assert time.monotonic() < deadline, "the job never started"
        await asyncio.sleep(0.2)
    queued = [jobs.submit(fleet_db, delay(30, seed=500 + i), principal=alice).id for i in range(6)]
    last = queued[-1]
    assert jobs.cancel(fleet_db, last, principal=alice).status in (
        "cancelled",
        "dispatched",
        "running",
    )
    cancelled_at = time.monotonic()
    jobs.cancel(fleet_db, running, principal=alice)
    for job_id in queued[:-1]:
        jobs.cancel(fleet_db, job_id, principal=alice)
    done = await wait_all(fleet_db, [running, *queued], timeout=120)
    print(f"cancel → all cancelled in {time.monotonic() - cancelled_at:.1f}s")
    assert [j.status for j in done] == ["cancelled"] * 7, [(j.id, j.status) for j in done]
    run = jobs.get(fleet_db, running)
    assert run.attempts[-1].status == "cancelled"
    # the running prompt was interrupted on its node: nothing of ours is left running there
    from comfyfleet.comfyui import ComfyUIClient

    url = next(n.url for n in comfy_fleet if n.id == run.node)
    async with ComfyUIClient(url) as comfy:
        entry = await comfy.history(run.attempts[-1].id)
        assert entry is not None and entry.status_str == "error"


def test_users_see_only_their_own_jobs(fleet_db, principals) -> None:
    job = jobs.submit(fleet_db, delay(0.1, seed=600), principal=principals["alice"])
    from comfyfleet.store import NotFound

    with pytest.raises(NotFound):
        jobs.get(fleet_db, job.id, principal=principals["bob"])
    assert jobs.get(fleet_db, job.id, principal=principals["root"]).id == job.id
    jobs.cancel(fleet_db, job.id, principal=principals["alice"])
