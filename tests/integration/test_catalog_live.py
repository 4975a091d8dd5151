"""Every bundled workflow on a real ComfyUI 0.3.75 (CPU, tiny checkpoints), over plain HTTP.

Each graph is rendered by the catalog, must pass ComfyUI's own /prompt validation, and must run
to the end with outputs of the requested shape. Live `check_against` must agree with the node.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from PIL import Image

from comfyfleet.catalog import Catalog, RenderedPrompt
from tests.fixtures.comfy import NodeHandle

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SOURCES = [REPO / "workflows", REPO / "tests" / "workflows"]
TINY_MODELS = {"sd15": "tiny-sd15.ckpt", "sdxl": "tiny-sdxl.ckpt", "svd": "tiny-svd.ckpt"}
TINY_DEFAULTS: dict[str, dict[str, Any]] = {
    "sd15-basic": {"width": 64, "height": 64, "steps": 2},
    "sdxl-basic": {"width": 64, "height": 64, "steps": 2},
    "svd-basic": {"width": 64, "height": 64, "steps": 2, "frames": 4},
    "sd15-img2img": {"width": 64, "height": 64, "steps": 2},
    "sd15-upscale": {"steps": 2},
    "delay": {"seconds": 0.1},
    "fail": {"seconds": 0.05},
}
RUN_TIMEOUT_S = 300.0


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load(SOURCES, fleet_defaults=TINY_DEFAULTS, model_map=TINY_MODELS)


@pytest.fixture
async def http(comfy_node: NodeHandle) -> Any:
    async with httpx.AsyncClient(base_url=comfy_node.url, timeout=60.0) as client:
        yield client


async def upload_png(
    http: httpx.AsyncClient, size: tuple[int, int], colour: tuple[int, ...]
) -> str:
    """Upload a PNG under its content-hash name, as the flows do; the name to render with."""
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    content = buffer.getvalue()
    name = f"{hashlib.sha256(content).hexdigest()[:20]}.png"
    response = await http.post(
        "/upload/image",
        files={"image": (name, content, "image/png")},
        data={"type": "input", "subfolder": "catalog-test"},
    )
    response.raise_for_status()
    body = response.json()
    return f"{body['subfolder']}/{body['name']}"


async def submit(http: httpx.AsyncClient, rendered: RenderedPrompt) -> str:
    response = await http.post("/prompt", json={"prompt": rendered.graph, "client_id": "catalog"})
    assert response.status_code == 200, f"ComfyUI rejected {rendered.workflow}: {response.text}"
    body = response.json()
    assert body["node_errors"] == {}
    return body["prompt_id"]


async def finished(http: httpx.AsyncClient, prompt_id: str) -> dict[str, Any]:
    """Poll /history until the prompt has ended; its history entry."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        entry = (await http.get(f"/history/{prompt_id}")).json().get(prompt_id)
        if entry is not None:
            return entry
        await asyncio.sleep(0.25)
    raise AssertionError(f"prompt {prompt_id} did not finish in {RUN_TIMEOUT_S} s")


async def run(
    http: httpx.AsyncClient, rendered: RenderedPrompt
) -> tuple[list[Image.Image], dict[str, Any]]:
    """Submit, wait for success, open every file of the workflow's output nodes.

    Returns the images and the graph ComfyUI ran (from its history).
    """
    entry = await finished(http, await submit(http, rendered))
    assert entry["status"]["status_str"] == "success", entry["status"]
    images = []
    for node_id in rendered.output_nodes:
        for ref in entry["outputs"].get(node_id, {}).get("images", []):
            response = await http.get("/view", params=ref)
            response.raise_for_status()
            images.append(Image.open(io.BytesIO(response.content)))
    assert images, f"{rendered.workflow}: no output files in {entry['outputs']}"
    return images, entry["prompt"][2]


# -- every bundled workflow runs ---------------------------------------------------------------


def test_every_workflow_has_a_live_run_below(catalog: Catalog) -> None:
    covered = {
        "sd15-basic",
        "sdxl-basic",
        "svd-basic",
        "sd15-img2img",
        "sd15-upscale",
        "delay",
        "fail",
    }
    assert set(catalog.ids()) == covered


async def test_sd15_makes_pngs_of_the_requested_size(
    catalog: Catalog, http: httpx.AsyncClient
) -> None:
    rendered = catalog.get("sd15-basic").render(
        {"prompt": "a red fox", "width": 72, "height": 64, "batch_size": 2}
    )
    images, ran = await run(http, rendered)
    assert [(i.format, i.size) for i in images] == [("PNG", (72, 64))] * 2
    assert 0 <= rendered.params["seed"] < 2**53  # random, recorded, and what ran
    assert ran["3"]["inputs"]["seed"] == rendered.params["seed"]
    assert ran["6"]["inputs"]["text"] == "a red fox"


async def test_sdxl_makes_a_png_of_the_requested_size(
    catalog: Catalog, http: httpx.AsyncClient
) -> None:
    rendered = catalog.get("sdxl-basic").render({"width": 64, "height": 80, "seed": 5})
    images, _ = await run(http, rendered)
    assert [(i.format, i.size) for i in images] == [("PNG", (64, 80))]


async def test_svd_makes_an_animated_webp_with_the_requested_frames(
    catalog: Catalog, http: httpx.AsyncClient
) -> None:
    name = await upload_png(http, (96, 64), (30, 120, 200))
    rendered = catalog.get("svd-basic").render({"image": name, "frames": 5, "fps": 8})
    assert rendered.images == {"image": name}
    (video,), _ = await run(http, rendered)
    assert video.format == "WEBP"
    assert video.size == (64, 64)
    assert video.is_animated and video.n_frames == 5


async def test_img2img_makes_a_png_of_the_requested_size(
    catalog: Catalog, http: httpx.AsyncClient
) -> None:
    name = await upload_png(http, (96, 96), (200, 60, 40))
    rendered = catalog.get("sd15-img2img").render({"image": name, "width": 64, "height": 72})
    images, _ = await run(http, rendered)
    assert [(i.format, i.size) for i in images] == [("PNG", (64, 72))]


async def test_upscale_scales_the_input(catalog: Catalog, http: httpx.AsyncClient) -> None:
    name = await upload_png(http, (48, 40), (90, 160, 60))
    rendered = catalog.get("sd15-upscale").render({"image": name, "scale_by": 2.0})
    images, _ = await run(http, rendered)
    assert [(i.format, i.size) for i in images] == [("PNG", (96, 80))]


async def test_delay_workflow_runs_and_saves_its_image(
    catalog: Catalog, http: httpx.AsyncClient
) -> None:
    rendered = catalog.get("delay").render({"seconds": 0.2, "width": 8, "height": 6})
    images, _ = await run(http, rendered)
    assert [(i.format, i.size) for i in images] == [("PNG", (8, 6))]


async def test_fail_workflow_validates_then_fails_in_the_node(
    catalog: Catalog, http: httpx.AsyncClient
) -> None:
    rendered = catalog.get("fail").render({"message": "catalog says boom"})
    entry = await finished(http, await submit(http, rendered))
    assert entry["status"]["status_str"] == "error"
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors and errors[0]["node_type"] == "TestFail"
    assert errors[0]["exception_message"].strip() == "catalog says boom"


# -- live validation agrees with the node --------------------------------------------------------


async def node_facts(http: httpx.AsyncClient) -> tuple[dict[str, Any], dict[str, list[str]]]:
    object_info = (await http.get("/object_info")).json()
    models = {"checkpoints": (await http.get("/models/checkpoints")).json()}
    return object_info, models


async def test_every_workflow_passes_the_live_check(
    catalog: Catalog, http: httpx.AsyncClient
) -> None:
    object_info, models = await node_facts(http)
    assert {w.id: w.check_against(object_info, models) for w in catalog} == {
        w: [] for w in catalog.ids()
    }


async def test_a_missing_model_is_reported_and_comfyui_agrees(http: httpx.AsyncClient) -> None:
    catalog = Catalog.load(
        SOURCES, fleet_defaults=TINY_DEFAULTS, model_map={**TINY_MODELS, "sd15": "missing.ckpt"}
    )
    workflow = catalog.get("sd15-basic")
    object_info, models = await node_facts(http)
    problems = workflow.check_against(object_info, models)
    assert len(problems) == 1
    assert problems[0].startswith("model checkpoints/missing.ckpt is missing on this node")
    response = await http.post("/prompt", json={"prompt": workflow.render().graph})
    assert response.status_code == 400
    errors = response.json()["node_errors"]["4"]["errors"]
    assert errors[0]["type"] == "value_not_in_list"


async def test_an_unknown_class_type_is_reported_and_comfyui_agrees(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    folder = tmp_path / "custom"
    folder.mkdir()
    graph = json.loads((REPO / "tests/workflows/delay/delay.json").read_text())
    graph["2"] = {
        "inputs": {"image": ["1", 0]},
        "class_type": "NoSuchUpscaler",
        "_meta": {"title": "Upscaler"},
    }
    (folder / "exotic.json").write_text(json.dumps(graph))
    (folder / "exotic.yaml").write_text(
        yaml.safe_dump(
            {
                "outputs": ["Delay"],
                "parameters": {
                    "seconds": {
                        "type": "float",
                        "default": 0.1,
                        "node": "Delay",
                        "input": "seconds",
                    }
                },
            }
        )
    )
    workflow = Catalog.load([tmp_path]).get("exotic")
    object_info, models = await node_facts(http)
    assert workflow.check_against(object_info, models) == [
        "node 2 'Upscaler' (NoSuchUpscaler): class_type 'NoSuchUpscaler' is not installed on "
        "this node"
    ]
    response = await http.post("/prompt", json={"prompt": workflow.render().graph})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_prompt"


def test_cli_workflows_check_prints_a_table(tmp_path: Path, comfy_node: NodeHandle) -> None:
    config = tmp_path / "comfyfleet.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "workflow_dirs": [str(s) for s in SOURCES],
                "defaults": TINY_DEFAULTS,
                "models": TINY_MODELS,
            }
        )
    )
    env = {**os.environ, "COMFYFLEET_CONFIG": str(config)}
    result = subprocess.run(
        [sys.executable, "-m", "comfyfleet", "workflows", "check", "--node", comfy_node.url],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("WORKFLOW"))
    rows = [line.split() for line in lines[header + 2 :] if line.strip()]
    assert sorted(row[0] for row in rows) == sorted(
        ["delay", "fail", "sd15-basic", "sd15-img2img", "sd15-upscale", "sdxl-basic", "svd-basic"]
    )
    assert all(row[2:] == [comfy_node.url, "ok"] for row in rows), result.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(config.read_text().replace("tiny-sdxl.ckpt", "sdxl-missing.safetensors"))
    env["COMFYFLEET_CONFIG"] = str(bad)
    result = subprocess.run(
        [sys.executable, "-m", "comfyfleet", "workflows", "check", "--node", comfy_node.url],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "FAIL (1)" in result.stdout
    assert "model checkpoints/sdxl-missing.safetensors is missing" in result.stdout
