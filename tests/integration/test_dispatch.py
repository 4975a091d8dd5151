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
from tests.fixtures.chaos import shift_working, wait_for

pytestmark = pytest.mark.integration


def delay(seconds: float, **params: object) -> JobRequest:
    priority = params.pop("priority", "normal")
    return JobRequest(workflow="delay", params={"seconds": seconds, **params}, priority=priority)


async def wait_all_placed(db, ids: list[str], *, timeout: float = 60.0) -> None:
    """Until every job holds a slot at once, running or queued on its node right behind the one
    running (one that ended before the last was placed fails the wait)."""
    deadline = time.monotonic() + timeout
    while True:
        states = Counter(jobs.get(db, i).status for i in ids)
        if states["running"] + states["dispatched"] == len(ids) and states["running"]:
            return
        ended = sum(states[s] for s in ("completed", "failed", "cancelled"))
        assert not ended, f"a job ended before all ran at once: {dict(states)}"
        assert time.monotonic() < deadline, f"not all running after {timeout}s: {dict(states)}"
        await asyncio.sleep(0.1)


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
    for node in comfy_fleet:  # every node is worked (a node without its shift gets nothing)
        await wait_for(lambda n=node.id: shift_working(fleet_db, n), timeout=120, what=node.id)
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
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    async with get_client() as client:  # one task run in the node's shift, named for the job
        run = await client.read_flow_run(done.attempts[0].flow_run_id)
        [task_run] = await client.read_task_runs(
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=[f"t2i-{job.id}"]))
        )
    assert run.name == f"shift-{done.node}" and task_run.flow_run_id == run.id
    assert {f"node:{done.node}", "workflow:sd15-basic"} <= set(task_run.tags)
    assert task_run.state is not None and task_run.state.is_completed()


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
    blockers = [jobs.submit(fleet_db, delay(6, seed=100 + i), principal=alice).id
                for i in range(slots)]  # fmt: skip
    catalog = jobs.load_catalog()  # read once: the normal and high jobs go in within moments
    await wait_all_placed(fleet_db, blockers)  # every slot busy
    normals = [jobs.submit(fleet_db, delay(1, seed=200 + i), principal=alice, catalog=catalog).id
               for i in range(12)]  # fmt: skip
    high = jobs.submit(
        fleet_db, delay(0.2, seed=300, priority="high"), principal=alice, catalog=catalog
    ).id
    done = await wait_all(fleet_db, [*blockers, *normals, high])
    assert all(j.status == "completed" for j in done)
    by_id = {j.id: j for j in done}
    # The dispatcher's choice is when a job gets its slot (`dispatched_at`); when its prompt then
    # reaches the node (`started_at`) also depends on that node's flow run, a few ms either way.
    high_placed = by_id[high].dispatched_at
    placed_before = [n for n in normals if by_id[n].dispatched_at < high_placed]
    assert len(placed_before) == 0, (
        f"{len(placed_before)} normal jobs got a slot before the high one"
    )
    assert high_placed >= min(by_id[b].finished_at for b in blockers)  # the next free slot


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
        entry = None
        for _ in range(50):  # ComfyUI records the interrupted prompt once its execution stops
            entry = await comfy.history(run.attempts[-1].id)
            if entry is not None:
                break
            await asyncio.sleep(0.2)
        assert entry is not None and entry.status_str == "error"


def test_users_see_only_their_own_jobs(fleet_db, principals) -> None:
    job = jobs.submit(fleet_db, delay(0.1, seed=600), principal=principals["alice"])
    from comfyfleet.store import NotFound

    with pytest.raises(NotFound):
        jobs.get(fleet_db, job.id, principal=principals["bob"])
    assert jobs.get(fleet_db, job.id, principal=principals["root"]).id == job.id
    jobs.cancel(fleet_db, job.id, principal=principals["alice"])
