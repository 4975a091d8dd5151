"""Every generation flow through Prefect on real ComfyUI nodes, and cancellation from Prefect."""

from __future__ import annotations

import asyncio
import hashlib
import time
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.states import Cancelling

from comfyfleet.comfyui import ComfyUIClient
from comfyfleet.jobs.inputs import NODE_SUBFOLDER
from tests.integration.test_first_job import job_of_run, wait_final

pytestmark = pytest.mark.integration


async def start(deployment: str, parameters: dict[str, Any]):
    async with get_client() as client:
        dep = await client.read_deployment_by_name(deployment)
        return await client.create_flow_run_from_deployment(dep.id, parameters=parameters)


def outputs_of(run_id: Any, pattern: str = "*") -> list[Path]:
    job = job_of_run(run_id)
    return sorted(Path(o.path) for o in job.outputs if fnmatch(o.name, pattern))


async def test_sdxl_flow_makes_a_png_of_the_requested_size(prefect_fleet, comfy_fleet) -> None:
    run = await start(
        f"text-to-image-sdxl/{comfy_fleet[0].id}", {"prompt": "a lighthouse", "width": 64}
    )
    final = await wait_final(run.id, timeout=300)
    assert final.state.is_completed(), final.state
    [png] = outputs_of(run.id, "*.png")
    assert Image.open(png).size == (64, 64)


def _still(tmp_path: Path, colour: tuple[int, int, int]) -> Path:
    """An input image where flows may read server files: `batch.files_dir`."""
    from comfyfleet.settings import get_settings

    folder = get_settings().batch.files_dir / tmp_path.name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"still-{colour[0]}.png"
    Image.new("RGB", (64, 64), colour).save(path)
    return path


async def test_image_to_video_syncs_the_input_once_and_makes_an_animation(
    prefect_fleet, comfy_fleet, tmp_path: Path
) -> None:
    node = comfy_fleet[0]
    still = _still(tmp_path, (200, 40, 40))
    inputs = node.process.input_dir / NODE_SUBFOLDER
    before = set(inputs.iterdir()) if inputs.exists() else set()  # other tests' inputs
    runs = []
    for seed in (1, 2):
        run = await start(f"image-to-video/{node.id}", {"image": str(still), "seed": seed})
        runs.append(await wait_final(run.id, timeout=300))
    for run in runs:
        assert run.state.is_completed(), run.state
        [video] = outputs_of(run.id, "*.webp")
        with Image.open(video) as img:
            assert img.is_animated and img.n_frames == 4
    synced = set(inputs.iterdir()) - before
    digest = hashlib.sha256(still.read_bytes()).hexdigest()
    assert [p.name for p in synced] == [f"{digest}.png"]  # uploaded once, by content hash


async def test_generic_flow_runs_a_test_workflow(prefect_fleet, comfy_fleet) -> None:
    run = await start(
        f"comfy-workflow/{comfy_fleet[1].id}",
        {"workflow": "delay", "params": {"seconds": 0.2, "width": 32, "height": 48}},
    )
    final = await wait_final(run.id)
    assert final.state.is_completed(), final.state
    [png] = outputs_of(run.id, "*.png")
    assert Image.open(png).size == (32, 48)


async def test_node_exception_fails_the_run_with_the_node_message(
    prefect_fleet, comfy_fleet
) -> None:
    run = await start(
        f"comfy-workflow/{comfy_fleet[1].id}",
        {"workflow": "fail", "params": {"seconds": 0.1, "message": "boom from the node"}},
    )
    final = await wait_final(run.id)
    assert final.state.is_failed()
    assert "boom from the node" in final.state.message
    assert "TestFail" in final.state.message


async def test_cancelling_from_prefect_interrupts_the_prompt_on_the_node(
    prefect_fleet, comfy_fleet
) -> None:
    node = comfy_fleet[1]
    run = await start(
        f"comfy-workflow/{node.id}",
        {"workflow": "delay", "params": {"seconds": 60, "steps": 60}},
    )
    prompt_id = None
    async with ComfyUIClient(node.url) as comfy:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until the node runs it
            queue = await comfy.queue()
            if queue.running:
                prompt_id = queue.running[0]
                break
            await asyncio.sleep(0.2)
        assert prompt_id is not None, "the delay prompt never started on the node"
        cancelled_at = time.monotonic()
        async with get_client() as client:
            await client.set_flow_run_state(run.id, Cancelling(), force=True)
        final = await wait_final(run.id, timeout=60)
        print(f"Cancelling → {final.state_name} in {time.monotonic() - cancelled_at:.2f}s")
        assert final.state.is_cancelled(), final.state
        async with get_client() as client:  # never reported Crashed on the way
            states = [s.type.value for s in await client.read_flow_run_states(run.id)]
        assert "CRASHED" not in states, states
        entry = None
        for _ in range(50):  # the interrupted prompt lands in the node's history
            entry = await comfy.history(prompt_id)
            if entry is not None:
                break
            await asyncio.sleep(0.2)
        assert entry is not None and entry.status_str == "error"
        assert (await comfy.queue()).running == []


async def test_cancelling_a_shift_from_prefect_hands_its_running_job_to_the_next_shift(
    fleet_service, fleet_db, principals
) -> None:
    from uuid import UUID

    from comfyfleet import jobs
    from comfyfleet.jobs import JobRequest

    request = JobRequest(workflow="delay", params={"seconds": 4, "steps": 8, "seed": 7100})
    job_id = jobs.submit(fleet_db, request, principal=principals["alice"]).id
    deadline = time.monotonic() + 60
    while (job := jobs.get(fleet_db, job_id)).status != "running":
        assert time.monotonic() < deadline, f"the job never started: {job.status}"
        await asyncio.sleep(0.1)
    shift = UUID(job.attempts[-1].flow_run_id)
    async with get_client() as client:
        await client.set_flow_run_state(shift, Cancelling(), force=True)
        final = await wait_final(shift, timeout=60)
        states = [s.type.value for s in await client.read_flow_run_states(shift)]
    assert final.state.is_cancelled() and "CRASHED" not in states, states
    deadline = time.monotonic() + 120
    while (job := jobs.get(fleet_db, job_id)).status not in ("completed", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"the handed-back job never ended: {job.status}"
        await asyncio.sleep(0.2)
    assert job.status == "completed" and job.outputs, (job.status, job.error)
    assert job.attempts[-1].flow_run_id != str(shift)  # the node's next shift finished it
