"""ComfyUIClient against real ComfyUI 0.3.75 CPU nodes (tests/fixtures/comfy.py) running the
test-only TestDelay / TestFail nodes and the tiny checkpoints."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import random
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from comfyfleet.comfyui import (
    ComfyUIClient,
    ExecutionFailed,
    ExecutionStart,
    ExecutionSuccess,
    Interrupted,
    Message,
    NodeUnavailable,
    Progress,
    PromptLost,
    PromptRejected,
)
from tests.fixtures.comfy import NodeHandle

pytestmark = pytest.mark.integration

Graph = dict[str, dict[str, Any]]
GUARD_S = 120.0


def delay_graph(seconds: float, *, steps: int = 4, save: bool = True) -> Graph:
    """TestDelay (a fresh seed, so ComfyUI's cache never answers) → SaveImage."""
    graph: Graph = {
        "1": {
            "class_type": "TestDelay",
            "inputs": {
                "seconds": seconds,
                "seed": random.randrange(2**48),
                "steps": steps,
                "width": 8,
                "height": 8,
            },
        }
    }
    if save:
        graph["2"] = {
            "class_type": "SaveImage",
            "inputs": {"images": ["1", 0], "filename_prefix": "client-it"},
        }
    return graph


def png_bytes(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


async def wait_running(comfy: ComfyUIClient, prompt_id: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while prompt_id not in (await comfy.queue()).running:
        assert time.monotonic() < deadline, f"{prompt_id} never started"
        await asyncio.sleep(0.05)


async def test_run_returns_outputs_and_reports_progress(comfy_node: NodeHandle) -> None:
    seen: list[Message] = []
    async with ComfyUIClient(comfy_node.url) as comfy:
        result = await asyncio.wait_for(
            comfy.run(delay_graph(0.4), on_message=seen.append), GUARD_S
        )
    progress = [(m.value, m.max) for m in seen if isinstance(m, Progress) and m.node == "1"]
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert isinstance(seen[-1], ExecutionSuccess)
    assert any(isinstance(m, ExecutionStart) for m in seen)
    assert set(result.outputs) == {"1", "2"}
    assert result.outputs["1"]["test_delay"][0]["steps"] == 4
    assert [f.node_id for f in result.files] == ["1", "2"]
    assert result.duration_s is not None and 0.3 < result.duration_s < 30
    assert result.cached_nodes == []


async def test_identical_resubmission_is_reported_as_cached(comfy_node: NodeHandle) -> None:
    graph = delay_graph(0.1)
    async with ComfyUIClient(comfy_node.url) as comfy:
        first = await asyncio.wait_for(comfy.run(graph), GUARD_S)
        again = await asyncio.wait_for(comfy.run(graph), GUARD_S)
    assert first.cached_nodes == []
    assert sorted(again.cached_nodes) == ["1", "2"]
    assert again.outputs["2"] == first.outputs["2"]


async def test_submit_then_wait_after_it_finished_resolves_from_history(
    comfy_node: NodeHandle,
) -> None:
    async with ComfyUIClient(comfy_node.url) as comfy:
        submitted = await comfy.submit(delay_graph(0.1))
        deadline = time.monotonic() + GUARD_S
        while await comfy.history(submitted.prompt_id) is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        result = await asyncio.wait_for(comfy.wait(submitted.prompt_id), GUARD_S)
    assert set(result.outputs) == {"1", "2"}
    assert result.started_at is not None and result.finished_at is not None


async def test_submit_then_wait_while_running_follows_to_the_end(comfy_node: NodeHandle) -> None:
    seen: list[Message] = []
    async with ComfyUIClient(comfy_node.url) as comfy:
        submitted = await comfy.submit(delay_graph(1.5, steps=6))
        result = await asyncio.wait_for(
            comfy.wait(submitted.prompt_id, on_message=seen.append), GUARD_S
        )
    assert set(result.outputs) == {"1", "2"}
    assert isinstance(seen[-1], ExecutionSuccess)


async def test_value_below_min_is_rejected_with_node_errors(comfy_node: NodeHandle) -> None:
    graph = delay_graph(0.1)
    graph["1"]["inputs"]["seconds"] = -5.0
    async with ComfyUIClient(comfy_node.url) as comfy:
        with pytest.raises(PromptRejected) as caught:
            await comfy.submit(graph)
    assert caught.value.node_errors["1"]["class_type"] == "TestDelay"
    assert "node 1 (TestDelay) input 'seconds'" in str(caught.value)
    assert "smaller than min" in str(caught.value)


async def test_unknown_class_type_is_rejected(comfy_node: NodeHandle) -> None:
    graph = delay_graph(0.1)
    graph["3"] = {"class_type": "NoSuchNode", "inputs": {}}
    async with ComfyUIClient(comfy_node.url) as comfy:
        with pytest.raises(PromptRejected) as caught:
            await comfy.submit(graph)
    assert caught.value.error_type == "invalid_prompt"
    assert "NoSuchNode" in str(caught.value)


async def test_missing_checkpoint_is_rejected_naming_the_input(comfy_node: NodeHandle) -> None:
    graph: Graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "missing.ckpt"}},
        "2": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1},
        },
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}},
    }
    async with ComfyUIClient(comfy_node.url) as comfy:
        with pytest.raises(PromptRejected) as caught:
            await comfy.submit(graph)
    [problem] = caught.value.problems
    assert (problem.node_id, problem.class_type) == ("1", "CheckpointLoaderSimple")
    assert problem.input_name == "ckpt_name"
    assert "missing.ckpt" in str(caught.value)


async def test_graph_without_outputs_is_rejected(comfy_node: NodeHandle) -> None:
    graph: Graph = {
        "1": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1},
        }
    }
    async with ComfyUIClient(comfy_node.url) as comfy:
        with pytest.raises(PromptRejected) as caught:
            await comfy.submit(graph)
    assert caught.value.error_type == "prompt_no_outputs"
    assert caught.value.node_errors == {}


async def test_failing_node_raises_execution_failed(comfy_node: NodeHandle) -> None:
    graph = delay_graph(0.1, save=False)
    graph["2"] = {"class_type": "TestFail", "inputs": {"message": "boom", "image": ["1", 0]}}
    async with ComfyUIClient(comfy_node.url) as comfy:
        with pytest.raises(ExecutionFailed) as caught:
            await asyncio.wait_for(comfy.run(graph), GUARD_S)
    exc = caught.value
    assert (exc.node_id, exc.node_type, exc.exception_type) == ("2", "TestFail", "RuntimeError")
    assert "boom" in exc.exception_message and "boom" in str(exc)
    assert exc.executed == ["1"]


async def test_interrupt_by_prompt_id_stops_the_running_prompt(comfy_node: NodeHandle) -> None:
    started = asyncio.Event()

    def on_message(message: Message) -> None:
        if isinstance(message, Progress):
            started.set()

    async with ComfyUIClient(comfy_node.url) as comfy:
        prompt_id = str(uuid.uuid4())
        run = asyncio.create_task(
            comfy.run(delay_graph(30, steps=300), prompt_id=prompt_id, on_message=on_message)
        )
        await asyncio.wait_for(started.wait(), GUARD_S)
        asked = time.monotonic()
        await comfy.interrupt(prompt_id)
        with pytest.raises(Interrupted) as caught:
            await asyncio.wait_for(run, GUARD_S)
        took = time.monotonic() - asked
    print(f"\ninterrupt → Interrupted in {took:.2f} s")
    assert (caught.value.node_id, caught.value.node_type) == ("1", "TestDelay")
    assert took < 10


async def test_queue_orders_pending_and_delete_pending_removes_them(
    comfy_node: NodeHandle,
) -> None:
    async with ComfyUIClient(comfy_node.url) as comfy:
        running = await comfy.submit(delay_graph(20, steps=200))
        try:
            await wait_running(comfy, running.prompt_id)
            b = await comfy.submit(delay_graph(0.1))
            c = await comfy.submit(delay_graph(0.1))
            d = await comfy.submit(delay_graph(0.1), front=True)
            queue = await comfy.queue()
            assert queue.running == [running.prompt_id]
            assert queue.pending == [d.prompt_id, b.prompt_id, c.prompt_id]
            assert queue.position(c.prompt_id) == 3

            await comfy.delete_pending([b.prompt_id, d.prompt_id])
            queue = await comfy.queue()
            assert queue.pending == [c.prompt_id]
            assert queue.running == [running.prompt_id]  # delete leaves the running one alone
            with pytest.raises(PromptLost):
                await asyncio.wait_for(comfy.wait(b.prompt_id), GUARD_S)
        finally:
            await comfy.delete_pending([p for p in (await comfy.queue()).pending])
            await comfy.interrupt(running.prompt_id)
        with pytest.raises(Interrupted):
            await asyncio.wait_for(comfy.wait(running.prompt_id), GUARD_S)
        assert (await comfy.queue()).pending == []


async def test_upload_image_then_has_input_and_load_it(comfy_node: NodeHandle) -> None:
    subfolder = f"it-{uuid.uuid4().hex[:8]}"
    red, blue = png_bytes((255, 0, 0)), png_bytes((0, 0, 255))
    async with ComfyUIClient(comfy_node.url) as comfy:
        assert not await comfy.has_input("probe.png", subfolder=subfolder)
        uploaded = await comfy.upload_image(red, name="probe.png", subfolder=subfolder)
        assert (uploaded.name, uploaded.subfolder, uploaded.type) == (
            "probe.png",
            subfolder,
            "input",
        )
        assert await comfy.has_input("probe.png", subfolder=subfolder)
        same = await comfy.upload_image(red, name="probe.png", subfolder=subfolder)
        assert same.name == "probe.png"
        clash = await comfy.upload_image(blue, name="probe.png", subfolder=subfolder)
        assert clash.name == "probe (1).png"
        replaced = await comfy.upload_image(
            blue, name="probe.png", subfolder=subfolder, overwrite=True
        )
        assert replaced.name == "probe.png"

        graph: Graph = {
            "1": {"class_type": "LoadImage", "inputs": {"image": uploaded.ref}},
            "2": {
                "class_type": "SaveImage",
                "inputs": {"images": ["1", 0], "filename_prefix": "l"},
            },
        }
        result = await asyncio.wait_for(comfy.run(graph), GUARD_S)
    assert [f.kind for f in result.files] == ["images"]


async def test_outputs_and_download_match_the_files_on_the_node(
    comfy_node: NodeHandle, tmp_path: Path
) -> None:
    async with ComfyUIClient(comfy_node.url) as comfy:
        result = await asyncio.wait_for(comfy.run(delay_graph(0.1)), GUARD_S)
        files = await comfy.outputs(result.prompt_id)
        assert files == result.files
        saved = next(f for f in files if f.node_id == "2")
        assert (saved.type, saved.kind, saved.animated) == ("output", "images", False)
        downloaded = await comfy.download(saved, tmp_path)
    on_node = (comfy_node.output_dir / saved.subfolder / saved.filename).read_bytes()
    assert downloaded.path == tmp_path / saved.filename
    assert downloaded.sha256 == hashlib.sha256(on_node).hexdigest()
    assert downloaded.size == len(on_node)
    assert downloaded.content_type == "image/png"


async def test_node_information(comfy_node: NodeHandle) -> None:
    async with ComfyUIClient(comfy_node.url) as comfy:
        stats = await comfy.system_stats()
        delay = await comfy.object_info("TestDelay")
        unknown = await comfy.object_info("NoSuchNode")
        everything = await comfy.object_info()
        folders = await comfy.models()
        checkpoints = await comfy.models("checkpoints")
    assert stats["system"]["comfyui_version"] == "0.3.75"
    assert delay["TestDelay"]["output_node"] is True
    assert unknown == {}
    assert {"TestDelay", "TestFail", "KSampler", "SaveImage"} <= set(everything)
    assert "checkpoints" in folders
    assert {"tiny-sd15.ckpt", "tiny-sdxl.ckpt", "tiny-svd.ckpt"} <= set(checkpoints)


async def test_unreachable_node_raises_node_unavailable() -> None:
    async with ComfyUIClient("http://127.0.0.1:9", timeout=2) as comfy:
        with pytest.raises(NodeUnavailable):
            await comfy.system_stats()
        with pytest.raises(NodeUnavailable):
            await comfy.run(delay_graph(0.1))


async def _kill_mid_prompt(
    node: NodeHandle, comfy: ComfyUIClient, caplog: pytest.LogCaptureFixture
) -> tuple[asyncio.Task[Any], float]:
    """Start a long prompt, SIGKILL the node once it reports progress; (the run, kill time)."""
    started = asyncio.Event()

    def on_message(message: Message) -> None:
        if isinstance(message, Progress):
            started.set()

    caplog.set_level(logging.INFO, logger="comfyfleet.comfyui")
    run = asyncio.create_task(comfy.run(delay_graph(60, steps=600), on_message=on_message))
    await asyncio.wait_for(started.wait(), GUARD_S)
    killed_at = time.time()
    await asyncio.to_thread(node.kill)
    return run, killed_at


def _drop_logged_after(caplog: pytest.LogCaptureFixture, killed_at: float) -> float | None:
    for record in caplog.records:
        if "dropped" in record.getMessage():
            return record.created - killed_at
    return None


async def test_node_killed_and_restarted_mid_prompt_raises_prompt_lost(
    disposable_node: NodeHandle, caplog: pytest.LogCaptureFixture
) -> None:
    async with ComfyUIClient(disposable_node.url, unavailable_after=120) as comfy:
        run, killed_at = await _kill_mid_prompt(disposable_node, comfy, caplog)
        await asyncio.sleep(0.5)
        assert not run.done()  # reconnecting, not failed
        restart_began = time.time()
        await asyncio.to_thread(disposable_node.restart)
        restarted_at = time.time()
        with pytest.raises(PromptLost):
            await asyncio.wait_for(run, GUARD_S)
        detected_at = time.time()
    drop = _drop_logged_after(caplog, killed_at)
    print(
        f"\nkill -9 → socket drop noticed {drop:.3f} s; restart took "
        f"{restarted_at - restart_began:.1f} s; kill → PromptLost {detected_at - killed_at:.1f} s "
        f"(restart ready → PromptLost {detected_at - restarted_at:.2f} s)"
    )
    assert drop is not None and drop < 5


async def test_node_killed_and_staying_down_raises_node_unavailable(
    disposable_node: NodeHandle, caplog: pytest.LogCaptureFixture
) -> None:
    async with ComfyUIClient(disposable_node.url, unavailable_after=3) as comfy:
        run, killed_at = await _kill_mid_prompt(disposable_node, comfy, caplog)
        with pytest.raises(NodeUnavailable):
            await asyncio.wait_for(run, GUARD_S)
        detected = time.time() - killed_at
    drop = _drop_logged_after(caplog, killed_at)
    print(f"\nkill -9 → socket drop noticed {drop:.3f} s; → NodeUnavailable {detected:.2f} s")
    assert drop is not None and drop < 5
    assert 2.5 < detected < 15
