"""Fleet health on real nodes: input sync and provenance; a dead node's pool is paused and its
waiting jobs move, and it is used again after its half-open probe; a flapping node is
quarantined until an admin enables it; with no eligible node a job waits, then fails with the
reason; kill → running elsewhere, over several trials; remove drains, then deletes.

The module runs the session's fleet service with fast health settings (probes every 0.5 s,
K = 2, cool-down 2 s, quarantine after more than 2 faults an hour) and adds a node `flappy` of
its own, which it kills, stops, disables and finally removes.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from comfyfleet import jobs
from comfyfleet.fleet.provision import pool_name
from comfyfleet.fleet.state import node_states
from comfyfleet.jobs import JobRequest
from comfyfleet.jobs.inputs import NODE_SUBFOLDER, InputStore
from comfyfleet.settings import get_settings
from tests.fixtures.chaos import service_env, shift_working, wait_for
from tests.integration.test_dispatch import delay, wait_all
from tests.integration.test_failover import wait_running

pytestmark = pytest.mark.integration

FAST = {
    "COMFYFLEET_HEALTH__PROBE_INTERVAL_S": "0.5",
    "COMFYFLEET_HEALTH__FAILURES_TO_OPEN": "2",
    "COMFYFLEET_HEALTH__OPEN_COOLDOWN_S": "2",
    "COMFYFLEET_HEALTH__QUARANTINE_FAULTS_PER_HOUR": "2",
}
FLAPPY = "flappy"


@pytest.fixture(scope="module")
async def flappy(fleet_service, fleet_db, extra_nodes) -> Any:
    """The node `flappy` (registered, with its own worker) under a fast fleet service, once its
    shift works it (before that the dispatcher gives it nothing)."""
    with service_env(fleet_service, **FAST):
        async with extra_nodes([FLAPPY]) as fleet:
            await wait_for(lambda: healthy(FLAPPY), timeout=60, what="flappy healthy")
            await wait_for(
                lambda: shift_working(fleet_db, FLAPPY), timeout=120, what="flappy's shift"
            )
            yield fleet


def state(node_id: str) -> Any:
    return next((s for s in node_states() if s.id == node_id), None)


def healthy(node_id: str) -> bool:
    node = state(node_id)
    return node is not None and node.healthy and not node.stale


async def pool_paused(node_id: str) -> bool:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return bool((await client.read_work_pool(pool_name(node_id))).is_paused)


async def cli(*args: str) -> str:
    """`comfyfleet …` as an operator runs it; its output (it must succeed)."""
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "comfyfleet", *args],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, f"comfyfleet {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buf, format="PNG")
    return buf.getvalue()


def on_node(node: Any, sha256: str) -> list[Path]:
    folder = node.process.input_dir / NODE_SUBFOLDER
    return sorted(folder.glob(f"{sha256}*")) if folder.is_dir() else []


async def test_input_sync_uploads_each_input_once_per_node_and_outputs_carry_provenance(
    fleet_service, fleet_db, principals, comfy_fleet
) -> None:
    store = InputStore(get_settings().store.inputs_dir)
    red, green, blue = (
        store.put(png(c), suffix=".png") for c in ((200, 30, 30), (30, 200, 30), (30, 30, 200))
    )
    a, b = comfy_fleet[0], comfy_fleet[1]

    def submit(image: Any, node: Any, seed: int) -> tuple[str, Any, Any]:
        request = JobRequest(workflow="sd15-img2img", params={"image": image.ref, "seed": seed},
                             pinned_node=node.id)  # fmt: skip
        return jobs.submit(fleet_db, request, principal=principals["alice"]).id, image, node

    first = [submit(red, a, 101), submit(green, a, 102), submit(blue, b, 103)]
    done = await wait_all(fleet_db, [i for i, _, _ in first], timeout=300)
    assert [j.status for j in done] == ["completed"] * 3, [j.error for j in done]
    uploaded = {
        (node.id, image.sha256): [(f, f.stat().st_mtime_ns) for f in on_node(node, image.sha256)]
        for _, image, node in first
    }  # fmt: skip
    # again on the same nodes (nothing to upload), and red on b for the first time
    second = [submit(red, a, 201), submit(green, a, 202), submit(blue, b, 203), submit(red, b, 204)]
    done += await wait_all(fleet_db, [i for i, _, _ in second], timeout=300)
    assert all(j.status == "completed" for j in done), [j.error for j in done]
    for (node_id, sha), files in uploaded.items():
        assert len(files) == 1, f"{node_id} holds {sha[:12]} {len(files)} times"
        [(path, mtime)] = files
        assert path.stat().st_mtime_ns == mtime, f"{node_id}: {sha[:12]} was uploaded again"
    counts = {n.id: sum(len(on_node(n, i.sha256)) for i in (red, green, blue)) for n in (a, b)}
    assert counts == {a.id: 2, b.id: 2}, counts  # 7 jobs, 4 (node, input) pairs, 4 uploads
    print(f"\ninput files after 7 jobs with 3 distinct inputs: {counts}")
    for job, (_, image, node) in zip(done, first + second, strict=True):
        [win] = [x for x in job.attempts if x.status == "completed"]
        [out] = job.outputs
        data = Path(out.path).read_bytes()
        assert (job.node, out.node, out.prompt_id, out.attempt_id) == (
            node.id,
            node.id,
            win.id,
            win.id,
        )
        assert out.sha256 == hashlib.sha256(data).hexdigest() and out.size == len(data)
        assert job.workflow == "sd15-img2img" and job.params["image"] == image.ref
        assert isinstance(job.params["seed"], int)
        assert job.started_at is not None and job.finished_at >= job.started_at


@pytest.mark.slow
async def test_a_dead_node_is_paused_its_jobs_move_and_it_returns_after_half_open(
    fleet_service, fleet_db, principals, comfy_fleet, flappy
) -> None:
    node = flappy.node(FLAPPY)
    slots = 2 * (len(comfy_fleet) + 1)
    ids = [jobs.submit(fleet_db, delay(4, seed=3000 + i), principal=principals["bob"]).id
           for i in range(slots)]  # fmt: skip

    def on_flappy() -> list[Any]:
        live = [a for i in ids for a in jobs.get(fleet_db, i).attempts]
        return [a for a in live if a.node == FLAPPY and a.status in ("pending", "running")]

    # flappy holds two: one executing, the next queued behind it on the node
    await wait_for(lambda: len(on_flappy()) == 2, timeout=180, what="2 on flappy")
    node.kill()
    killed = time.monotonic()
    await wait_for(lambda: pool_paused(FLAPPY), timeout=30, what="flappy's pool paused")
    paused_after = time.monotonic() - killed
    down = await wait_for(
        lambda: (s := state(FLAPPY)) and not s.healthy and s, timeout=10, what="flappy down"
    )
    assert down.circuit in ("open", "half_open") and down.last_error and down.paused
    done = await wait_all(fleet_db, ids, timeout=240)
    print(f"\nkill -9 of flappy → pool paused after {paused_after:.1f}s")
    assert all(j.status == "completed" for j in done), [(j.status, j.error) for j in done]
    moved = [j for j in done if j.attempts[0].node == FLAPPY]
    assert len(moved) == 2
    for job in moved:
        first, second = job.attempts
        assert first.status == "node_fault" and first.reason
        assert second.node != FLAPPY and second.status == "completed"
    await asyncio.to_thread(node.restart)
    await wait_for(lambda: healthy(FLAPPY), timeout=60, what="flappy healthy again")
    await wait_for(lambda: not_(pool_paused(FLAPPY)), timeout=30, what="flappy's pool resumed")
    log = fleet_service.log_path.read_text()
    assert f"node {FLAPPY}: circuit open → half_open" in log
    assert f"node {FLAPPY}: circuit half_open → closed" in log
    pinned = [
        jobs.submit(
            fleet_db,
            JobRequest(
                workflow="delay", params={"seconds": 0.3, "seed": 3100 + i}, pinned_node=FLAPPY
            ),
            principal=principals["bob"],
        ).id
        for i in range(2)
    ]
    back = await wait_all(fleet_db, pinned, timeout=120)
    assert [(j.status, j.node) for j in back] == [("completed", FLAPPY)] * 2


async def not_(awaitable: Any) -> bool:
    return not await awaitable


@pytest.mark.slow
async def test_a_flapping_node_is_quarantined_until_an_admin_enables_it(
    fleet_service, fleet_db, principals, flappy
) -> None:
    await cli("nodes", "enable", FLAPPY)  # a clean slate: earlier faults are forgiven
    await wait_for(
        lambda: healthy(FLAPPY) and state(FLAPPY).faults_last_hour == 0, timeout=30, what="clean"
    )
    pid = flappy.node(FLAPPY).process.pid
    try:
        for flap in range(3):  # N = 2: the third fault in the hour quarantines it
            os.kill(pid, signal.SIGSTOP)
            await wait_for(
                lambda: state(FLAPPY).circuit in ("open", "quarantined"), timeout=30,
                what=f"flap {flap}: circuit open",
            )  # fmt: skip
            os.kill(pid, signal.SIGCONT)
            if flap < 2:
                await wait_for(lambda: healthy(FLAPPY), timeout=30, what=f"flap {flap}: back")
    finally:
        os.kill(pid, signal.SIGCONT)
    await wait_for(lambda: state(FLAPPY).circuit == "quarantined", timeout=30, what="quarantine")
    # it answers probes again, yet stays out of rotation
    node = await wait_for(lambda: state(FLAPPY).reachable and state(FLAPPY), timeout=30,
                          what="answers probes again")  # fmt: skip
    assert node.reachable and not node.healthy and node.faults_last_hour == 3
    assert node.quarantined_since is not None
    assert await pool_paused(FLAPPY)
    job = jobs.submit(
        fleet_db, JobRequest(workflow="delay", params={"seconds": 0.3}, pinned_node=FLAPPY),
        principal=principals["alice"],
    )  # fmt: skip
    await asyncio.sleep(2)
    assert jobs.get(fleet_db, job.id).status == "queued"
    listing = await cli("nodes", "list")
    assert any(FLAPPY in line and "quarantined" in line for line in listing.splitlines())
    await cli("nodes", "enable", FLAPPY)
    [done] = await wait_all(fleet_db, [job.id], timeout=60)
    assert (done.status, done.node) == ("completed", FLAPPY)
    assert healthy(FLAPPY)


@pytest.mark.slow
async def test_with_no_eligible_node_a_job_waits_then_fails_with_the_reason(
    fleet_service, fleet_db, principals, flappy
) -> None:
    with service_env(fleet_service, **FAST, COMFYFLEET_JOBS__QUEUE_TIMEOUT_S="6"):
        await cli("nodes", "disable", FLAPPY)
        try:
            await wait_for(lambda: state(FLAPPY) and state(FLAPPY).state == "disabled",
                           timeout=30, what="flappy disabled")  # fmt: skip
            assert await pool_paused(FLAPPY)
            job = jobs.submit(
                fleet_db, JobRequest(workflow="delay", params={"seconds": 0.3}, pinned_node=FLAPPY),
                principal=principals["alice"],
            )  # fmt: skip
            await asyncio.sleep(3)
            waiting = jobs.get(fleet_db, job.id)
            assert waiting.status == "queued" and not waiting.attempts  # no silent fallback
            [done] = await wait_all(fleet_db, [job.id], timeout=60)
        finally:
            await cli("nodes", "enable", FLAPPY)
    assert done.status == "failed" and not done.attempts
    assert "queued for more than 6 s" in done.error, done.error
    await wait_for(lambda: healthy(FLAPPY), timeout=60, what="flappy back")


@pytest.mark.slow
async def test_kill_to_running_elsewhere_over_several_trials(
    fleet_service, fleet_db, principals, comfy_fleet, flappy
) -> None:
    handles = {n.id: n for n in [*comfy_fleet, *flappy.nodes]}
    times = []
    for trial in range(4):
        job = jobs.submit(
            fleet_db, delay(6, seed=4000 + trial, steps=12), principal=principals["alice"]
        )
        running = await wait_running(fleet_db, job.id)
        victim = handles[running.node]
        victim.kill()
        killed_wall = time.time()
        try:
            [done] = await wait_all(fleet_db, [job.id], timeout=120)
        finally:
            await asyncio.to_thread(victim.restart)
        assert done.status == "completed", done.error
        first, second = done.attempts
        assert first.node == victim.id and first.status == "node_fault" and second.node != victim.id
        times.append(second.started_at.timestamp() - killed_wall)
        print(f"\ntrial {trial}: kill -9 {victim.id} → running on {second.node} {times[-1]:.1f}s")
        await cli("nodes", "enable", victim.id)  # N = 2 here: repeated kills would quarantine it
        await wait_for(lambda v=victim.id: healthy(v), timeout=60, what=f"{victim.id} back")
    print(
        f"\nkill -9 → job running on another node: p50 {statistics.median(times):.1f}s, "
        f"max {max(times):.1f}s over {len(times)} trials ({', '.join(f'{t:.1f}' for t in times)})"
    )
    assert statistics.median(times) <= 10.0


@pytest.mark.slow
async def test_remove_drains_the_node_then_deletes_it(
    fleet_service, fleet_db, principals, flappy
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    await wait_for(lambda: healthy(FLAPPY), timeout=60, what="flappy healthy")
    models = await cli("nodes", "models")
    assert any(line.split()[:2] == ["checkpoints", "tiny-sd15.ckpt"] and FLAPPY in line
               for line in models.splitlines()), models  # fmt: skip
    job = jobs.submit(
        fleet_db, JobRequest(workflow="delay", params={"seconds": 20, "steps": 20},
                             pinned_node=FLAPPY),
        principal=principals["bob"],
    )  # fmt: skip
    await wait_running(fleet_db, job.id)
    remove = asyncio.create_task(cli("nodes", "remove", FLAPPY, "--timeout", "120"))
    await wait_for(
        lambda: getattr(state(FLAPPY), "state", None) == "draining", timeout=30, what="draining"
    )
    others = [jobs.submit(fleet_db, delay(0.3, seed=5000 + i), principal=principals["bob"]).id
              for i in range(4)]  # fmt: skip
    output = await remove
    assert "removed" in output
    [drained] = await wait_all(fleet_db, [job.id], timeout=5)  # remove waited for it
    assert (drained.status, drained.node) == ("completed", FLAPPY)  # in flight: it finished
    assert all(j.status == "completed" and j.node != FLAPPY
               for j in await wait_all(fleet_db, others, timeout=120))  # fmt: skip
    async with get_client() as client:
        with pytest.raises(ObjectNotFound):
            await client.read_work_pool(pool_name(FLAPPY))
        with pytest.raises(ObjectNotFound):
            await client.read_block_document_by_name(FLAPPY, block_type_slug="comfyui-node")
        with pytest.raises(ObjectNotFound):
            await client.read_deployment_by_name(f"comfy-workflow/{FLAPPY}")
    await wait_for(lambda: state(FLAPPY) is None, timeout=30, what="flappy forgotten")
    url = flappy.node(FLAPPY).url  # and back, the way an operator adds a node
    await cli("nodes", "add", FLAPPY, "--url", url, "--capacity", "1", "--capability", "delay")
    async with get_client() as client:
        await client.read_work_pool(pool_name(FLAPPY))
        block = await client.read_block_document_by_name(FLAPPY, block_type_slug="comfyui-node")
        assert block.data["capacity"] == 1
        await client.read_deployment_by_name(f"comfy-workflow/{FLAPPY}")
        await client.read_deployment_by_name(f"node-shift/{FLAPPY}")
    await wait_for(lambda: healthy(FLAPPY), timeout=60, what="flappy added and healthy")
