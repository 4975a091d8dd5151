"""A real ComfyUI 0.3.75 on CPU: it starts, lists the tiny checkpoints, runs SD1.5, SDXL and SVD
graphs end to end, runs the test-only nodes, and forgets everything when killed.

Plain httpx on purpose: these tests pin the local node itself, not the project's client.
"""

from __future__ import annotations

import io
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from comfyfleet.local.node import TINY_CHECKPOINTS, ComfyUIInstall
from tests.fixtures.comfy import NodeHandle, start_nodes

pytestmark = pytest.mark.integration

Graph = dict[str, dict[str, Any]]


def _submit(url: str, graph: Graph) -> str:
    """POST /prompt; return the prompt id."""
    body = {"prompt": graph, "client_id": f"test-{uuid.uuid4().hex[:8]}"}
    response = httpx.post(f"{url}/prompt", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return str(response.json()["prompt_id"])


def _wait_history(url: str, prompt_id: str, timeout: float = 180.0) -> dict[str, Any]:
    """Poll /history/{id} until the job has ended; return its entry."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = httpx.get(f"{url}/history/{prompt_id}", timeout=10).json().get(prompt_id)
        if entry is not None:
            return dict(entry)
        time.sleep(0.1)
    raise AssertionError(f"prompt {prompt_id} did not finish within {timeout} s")


def _run(url: str, graph: Graph, timeout: float = 180.0) -> dict[str, Any]:
    """Run a graph to completion; fail with ComfyUI's messages unless it succeeded."""
    entry = _wait_history(url, _submit(url, graph), timeout)
    assert entry["status"]["status_str"] == "success", entry["status"]["messages"]
    return entry


def _fetch(url: str, item: dict[str, str]) -> bytes:
    """GET /view for one ``images[]`` item of a node's output."""
    params = {"filename": item["filename"], "subfolder": item["subfolder"], "type": item["type"]}
    response = httpx.get(f"{url}/view", params=params, timeout=30)
    assert response.status_code == 200
    return response.content


def _txt2img_graph(ckpt: str, seed: int, *, sdxl: bool = False) -> Graph:
    positive: dict[str, Any] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox"}}
    if sdxl:
        positive = {
            "class_type": "CLIPTextEncodeSDXL",
            "inputs": {
                "text_g": "a red fox",
                "text_l": "a red fox",
                **dict.fromkeys(("width", "height", "target_width", "target_height"), 64),
                "crop_w": 0,
                "crop_h": 0,
            },
        }
    positive["inputs"]["clip"] = ["1", 1]
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": positive,
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1},
        },
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "positive": ["2", 0],
                "negative": ["3", 0],
                "latent_image": ["4", 0],
                "seed": seed,
                "steps": 2,
                "cfg": 7.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
            },
        },
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "t2i"}},
    }


def test_node_reports_comfyui_0_3_75_on_cpu(comfy_node: NodeHandle) -> None:
    stats = httpx.get(f"{comfy_node.url}/system_stats", timeout=10).json()
    assert stats["system"]["comfyui_version"] == "0.3.75"
    assert stats["system"]["pytorch_version"].endswith("+cpu")
    assert stats["devices"][0]["type"] == "cpu"


def test_every_fleet_node_answers_on_its_own_port(comfy_fleet: list[NodeHandle]) -> None:
    assert [n.id for n in comfy_fleet] == [f"gpu-{i}" for i in range(1, len(comfy_fleet) + 1)]
    assert len({n.port for n in comfy_fleet}) == len(comfy_fleet)
    for node in comfy_fleet:
        assert httpx.get(f"{node.url}/system_stats", timeout=10).status_code == 200


def test_tiny_checkpoints_are_listed(comfy_node: NodeHandle) -> None:
    listed = httpx.get(f"{comfy_node.url}/models/checkpoints", timeout=10).json()
    assert sorted(listed) == sorted(TINY_CHECKPOINTS)


def test_test_nodes_are_registered(comfy_node: NodeHandle) -> None:
    info = httpx.get(f"{comfy_node.url}/object_info", timeout=30).json()
    assert info["TestDelay"]["output_node"] is True
    assert info["TestDelay"]["input"]["required"]["seconds"][0] == "FLOAT"
    assert info["TestFail"]["output_node"] is True
    assert "KSampler" in info and "SVD_img2vid_Conditioning" in info


def test_test_delay_alone_sleeps_and_saves_a_png(comfy_node: NodeHandle) -> None:
    seed = uuid.uuid4().int % 2**32
    graph = {
        "1": {
            "class_type": "TestDelay",
            "inputs": {"seconds": 0.4, "seed": seed, "width": 32, "height": 16},
        }
    }
    entry = _run(comfy_node.url, graph)
    output = entry["outputs"]["1"]
    assert output["test_delay"][0]["slept"] >= 0.4
    assert output["test_delay"][0]["seed"] == seed
    (item,) = output["images"]
    assert item["type"] == "output"
    assert (comfy_node.output_dir / item["subfolder"] / item["filename"]).is_file()
    assert Image.open(io.BytesIO(_fetch(comfy_node.url, item))).size == (32, 16)


def test_test_fail_is_an_execution_error(comfy_node: NodeHandle) -> None:
    message = f"boom-{uuid.uuid4().hex[:6]}"
    graph = {"1": {"class_type": "TestFail", "inputs": {"message": message}}}
    entry = _wait_history(comfy_node.url, _submit(comfy_node.url, graph))
    assert entry["status"]["status_str"] == "error"
    errors = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
    assert errors[0]["exception_type"] == "RuntimeError"
    assert errors[0]["exception_message"].strip() == message


def test_sd15_txt2img_writes_a_64x64_png(comfy_node: NodeHandle) -> None:
    entry = _run(comfy_node.url, _txt2img_graph("tiny-sd15.ckpt", uuid.uuid4().int % 2**32))
    (item,) = entry["outputs"]["7"]["images"]
    image = Image.open(io.BytesIO(_fetch(comfy_node.url, item)))
    assert (image.format, image.size) == ("PNG", (64, 64))


def test_sdxl_txt2img_writes_a_64x64_png(comfy_node: NodeHandle) -> None:
    graph = _txt2img_graph("tiny-sdxl.ckpt", uuid.uuid4().int % 2**32, sdxl=True)
    entry = _run(comfy_node.url, graph)
    (item,) = entry["outputs"]["7"]["images"]
    image = Image.open(io.BytesIO(_fetch(comfy_node.url, item)))
    assert (image.format, image.size) == ("PNG", (64, 64))


def test_svd_img2vid_writes_a_4_frame_webp(comfy_node: NodeHandle) -> None:
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 80, 40)).save(png, format="PNG")
    name = f"svd-{uuid.uuid4().hex[:8]}.png"
    files = {"image": (name, png.getvalue(), "image/png")}
    upload = httpx.post(
        f"{comfy_node.url}/upload/image", files=files, data={"subfolder": "tests"}, timeout=30
    )
    assert upload.status_code == 200, upload.text
    uploaded = upload.json()
    graph: Graph = {
        "1": {"class_type": "ImageOnlyCheckpointLoader", "inputs": {"ckpt_name": "tiny-svd.ckpt"}},
        "2": {
            "class_type": "LoadImage",
            "inputs": {"image": f"{uploaded['subfolder']}/{uploaded['name']}"},
        },
        "3": {
            "class_type": "SVD_img2vid_Conditioning",
            "inputs": {
                "clip_vision": ["1", 1],
                "init_image": ["2", 0],
                "vae": ["1", 2],
                "width": 64,
                "height": 64,
                "video_frames": 4,
                "motion_bucket_id": 127,
                "fps": 6,
                "augmentation_level": 0.0,
            },
        },
        "4": {
            "class_type": "VideoLinearCFGGuidance",
            "inputs": {"model": ["1", 0], "min_cfg": 1.0},
        },
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0],
                "positive": ["3", 0],
                "negative": ["3", 1],
                "latent_image": ["3", 2],
                "seed": uuid.uuid4().int % 2**32,
                "steps": 2,
                "cfg": 2.5,
                "sampler_name": "euler",
                "scheduler": "karras",
                "denoise": 1.0,
            },
        },
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {
            "class_type": "SaveAnimatedWEBP",
            "inputs": {
                "images": ["6", 0],
                "filename_prefix": "svd",
                "fps": 6.0,
                "lossless": False,
                "quality": 80,
                "method": "default",
            },
        },
    }
    entry = _run(comfy_node.url, graph)
    output = entry["outputs"]["7"]
    assert output["animated"] == [True]
    (item,) = output["images"]
    webp = Image.open(io.BytesIO(_fetch(comfy_node.url, item)))
    assert (webp.format, webp.size, webp.n_frames) == ("WEBP", (64, 64), 4)


def test_killed_node_restarts_with_empty_history(disposable_node: NodeHandle) -> None:
    url = disposable_node.url
    graph = {"1": {"class_type": "TestDelay", "inputs": {"seconds": 0.0, "steps": 1, "seed": 7}}}
    prompt_id = _run(url, graph)["prompt"][1]
    assert prompt_id in httpx.get(f"{url}/history", timeout=10).json()
    old_pid = disposable_node.process.pid

    disposable_node.kill()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/system_stats", timeout=2)
    stats = disposable_node.restart()

    assert stats["system"]["comfyui_version"] == "0.3.75"
    assert disposable_node.process.pid != old_pid
    assert disposable_node.url == url
    assert httpx.get(f"{url}/history", timeout=10).json() == {}
    assert httpx.get(f"{url}/history/{prompt_id}", timeout=10).json() == {}
    queue = httpx.get(f"{url}/queue", timeout=10).json()
    assert queue == {"queue_running": [], "queue_pending": []}


def test_interrupt_stops_test_delay_within_a_slice(comfy_node: NodeHandle) -> None:
    url = comfy_node.url
    graph = {
        "1": {
            "class_type": "TestDelay",
            "inputs": {"seconds": 60.0, "steps": 600, "seed": uuid.uuid4().int % 2**32},
        }
    }
    prompt_id = _submit(url, graph)
    deadline = time.monotonic() + 30
    while not httpx.get(f"{url}/queue", timeout=10).json()["queue_running"]:
        assert time.monotonic() < deadline, "TestDelay never started"
        time.sleep(0.05)
    started = time.monotonic()
    assert (
        httpx.post(f"{url}/interrupt", json={"prompt_id": prompt_id}, timeout=10).status_code == 200
    )
    entry = _wait_history(url, prompt_id, timeout=30)
    assert time.monotonic() - started < 5
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert entry["status"]["status_str"] == "error"
    assert "execution_interrupted" in kinds


def test_speed_scales_the_test_delay(
    comfy_install: ComfyUIInstall, comfy_session_dir: Path, pytestconfig: pytest.Config
) -> None:
    (fast,) = start_nodes(
        comfy_install, comfy_session_dir, ["speed-4x"], config=pytestconfig, speeds=[4.0]
    )
    try:
        graph = {"1": {"class_type": "TestDelay", "inputs": {"seconds": 2.0, "steps": 2}}}
        report = _run(fast.url, graph)["outputs"]["1"]["test_delay"][0]
    finally:
        fast.stop()
    assert report["factor"] == pytest.approx(0.25)
    assert 0.5 <= report["slept"] < 1.5
