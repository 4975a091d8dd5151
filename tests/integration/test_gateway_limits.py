"""Bounded inputs through the real gateway: string lengths, finite numbers, body limits, the
fleet's ceilings (`limits.*`) over every contract including the old service's format, an
upscale's output pixels, one-frame images. Every refusal is a 4xx naming the field, and nothing
is queued for it."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from PIL import Image

from comfyfleet.settings import get_settings
from tests.fixtures.gateway import REPO, Account, serve_gateway

pytestmark = pytest.mark.integration

LIMITS = {
    "max_width": 256,
    "max_height": 256,
    "max_steps": 10,
    "max_batch_size": 2,
    "max_frames": 8,
    "max_output_pixels": 512 * 512,
}


def image_b64(size: tuple[int, int] = (64, 64), frames: int = 1, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    pictures = [Image.new("RGB", size, color) for color in ("red", "blue", "green")[:frames]]
    pictures[0].save(buffer, format=fmt, save_all=frames > 1, append_images=pictures[1:])
    return base64.b64encode(buffer.getvalue()).decode()


def old_format_workflows(root: Path) -> Path:
    """A workflow in the old service's form (`workflow_file` + `parameter_mapping`)."""
    folder = root / "old" / "text_to_image"
    folder.mkdir(parents=True)
    shutil.copyfile(REPO / "workflows" / "text_to_image" / "sd15-basic.json", folder / "old.json")
    mapping = {
        "prompt": {"node_id": "6", "input_name": "text", "default_value": "a cat"},
        "width": {"node_id": "5", "input_name": "width", "default_value": 64},
        "height": {"node_id": "5", "input_name": "height", "default_value": 64},
        "batch_size": {"node_id": "5", "input_name": "batch_size", "default_value": 1},
        "steps": {"node_id": "3", "input_name": "steps", "default_value": 2},
    }
    contract = {"workflow_file": "old.json", "parameter_mapping": mapping}
    (folder / "old-basic.yaml").write_text(yaml.safe_dump(contract))
    return root / "old"


async def post(url: str, alice: Account, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        if isinstance(body, bytes):
            headers = {**alice.headers, "content-type": "application/json"}
            return await client.post(path, headers=headers, content=body, **kwargs)
        return await client.post(path, headers=alice.headers, json=body, **kwargs)


async def total_jobs(url: str, alice: Account) -> int:
    async with httpx.AsyncClient(base_url=url) as client:
        return (await client.get("/api/v2/tasks", headers=alice.headers)).json()["total"]


def refused(response: httpx.Response, field: str, words: str = "", status: int = 422) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field, body
    assert words in body["message"], body["message"]


@pytest.fixture
def gateway(tmp_path: Path, _migrated_sqlite: Path) -> Any:
    dirs = [
        str(REPO / "workflows"),
        str(REPO / "tests" / "workflows"),
        str(old_format_workflows(tmp_path)),
    ]
    with serve_gateway(tmp_path, _migrated_sqlite, limits=LIMITS, workflow_dirs=dirs) as served:
        yield served


async def test_long_strings_are_refused_on_every_submit_route(gateway: Any) -> None:
    url, _, alice = gateway
    long = "x" * 20_000
    cases = [
        ("/api/v2/tasks", {"workflow": "sd15-basic", "params": {"prompt": long}}, "prompt"),
        ("/api/v2/tasks", {"workflow": "old-basic", "params": {"prompt": long}}, "prompt"),
        ("/api/v2/tasks/batch", {"workflow": "sd15-basic", "prompts": ["ok", long]}, "prompts[1]"),
        ("/api/v2/tasks/text-to-image", {"prompt": long}, "prompt"),
        ("/api/v2/tasks/text-to-image-sdxl", {"prompt": "ok", "negative_prompt": long}, ""),
        ("/api/v2/tasks", {"workflow": "sd15-basic", "params": {"negative_prompt": long}}, ""),
    ]
    for path, body, field in cases:
        response = await post(url, alice, path, body)
        assert response.status_code == 422, (path, response.text)
        assert response.json()["field"] == (field or "negative_prompt"), response.json()
        assert "20000" in response.json()["message"] or "10000" in response.json()["message"]
    schema = await httpx.AsyncClient(base_url=url).get(
        "/api/v2/workflows/sd15-basic", headers=alice.headers
    )
    assert schema.json()["parameters"]["properties"]["prompt"]["maxLength"] == 10_000
    assert await total_jobs(url, alice) == 0


async def test_only_finite_numbers_are_accepted(gateway: Any) -> None:
    url, _, alice = gateway
    video = {"image": image_b64(), "duration": 1e308}
    refused(await post(url, alice, "/api/v2/tasks/image-to-video", video), "duration", "finite")
    raw = [
        ("/api/v2/tasks/text-to-image", b'{"prompt": "x", "cfg": NaN}', "cfg"),
        ("/api/v2/tasks/text-to-image", b'{"prompt": "x", "cfg": Infinity}', "cfg"),
        ("/api/v2/tasks", b'{"workflow": "sd15-basic", "params": {"cfg": -Infinity}}', "cfg"),
        ("/api/v2/tasks/image-to-video", b'{"image": "x", "duration": NaN}', "duration"),
        ("/api/v2/tasks", b'{"workflow": "sd15-basic", "params": {"steps": 1e308}}', "steps"),
    ]
    for path, body, field in raw:
        refused(await post(url, alice, path, body), field)
    assert await total_jobs(url, alice) == 0


async def test_fleet_ceilings_bound_every_contract_including_the_old_format(gateway: Any) -> None:
    url, _, alice = gateway
    over = [
        ("sd15-basic", {"width": 512}, "width", "above the maximum 256"),
        ("sd15-basic", {"height": 264}, "height", "above the maximum 256"),
        ("sd15-basic", {"steps": 11}, "steps", "above the maximum 10"),
        ("sd15-basic", {"batch_size": 3}, "batch_size", "above the maximum 2"),
        ("svd-basic", {"image": image_b64(), "frames": 9}, "frames", "above the maximum 8"),
        ("old-basic", {"width": 4096}, "width", "above the maximum 256"),
        ("old-basic", {"steps": 500}, "steps", "above the maximum 10"),
        ("old-basic", {"batch_size": 64}, "batch_size", "above the maximum 2"),
    ]
    for workflow, params, field, words in over:
        body = {"workflow": workflow, "params": params}
        refused(await post(url, alice, "/api/v2/tasks", body), field, words)
    # the old service's paths and bodies too: duration x fps = frames
    video = {"image": image_b64(), "duration": 2.0, "fps": 6}
    refused(await post(url, alice, "/api/v2/tasks/image-to-video", video), "duration", "12")
    flat = {"prompt": "a cat", "width": 1024, "workflow_name": "sd_basic"}
    refused(await post(url, alice, "/api/v2/tasks/text-to-image", flat), "width", "256")
    assert await total_jobs(url, alice) == 0
    async with httpx.AsyncClient(base_url=url) as client:
        old = (await client.get("/api/v2/workflows/old-basic", headers=alice.headers)).json()
    assert old["parameters"]["properties"]["width"]["maximum"] == 256
    within = {"workflow": "old-basic", "params": {"width": 256, "steps": 10}}
    assert (await post(url, alice, "/api/v2/tasks", within)).status_code == 202


async def test_body_limits_per_route(gateway: Any) -> None:
    url, _, alice = gateway
    big = {"prompt": "x", "padding": "y" * (1024 * 1024 + 10)}
    refused(await post(url, alice, "/api/v2/tasks/text-to-image", big), "body", "", 413)
    async with httpx.AsyncClient(base_url=url) as client:
        login = await client.post(
            "/api/v2/auth/login", json={"username": "alice", "password": "p" * 1_100_000}
        )
    refused(login, "body", "", 413)
    # a route that takes a base64 image keeps its larger limit: the image itself is judged
    image = {"image": "data:image/png;base64," + "A" * (2 * 1024 * 1024), "duration": 1.0}
    response = await post(url, alice, "/api/v2/tasks/image-to-video", image)
    assert response.status_code == 422 and response.json()["field"] == "image", response.text


async def test_an_upscale_stays_within_the_output_pixel_ceiling(gateway: Any) -> None:
    url, _, alice = gateway
    body = {"workflow": "sd15-upscale", "params": {"image": image_b64((256, 256)), "scale_by": 4}}
    refused(await post(url, alice, "/api/v2/tasks", body), "scale_by", "limits.max_output_pixels")
    assert await total_jobs(url, alice) == 0
    body["params"]["scale_by"] = 2.0  # 512 x 512: at the ceiling
    assert (await post(url, alice, "/api/v2/tasks", body)).status_code == 202


async def test_a_graph_that_loads_one_image_gets_one_frame(gateway: Any) -> None:
    url, _, alice = gateway
    for fmt in ("GIF", "WEBP"):
        animated = image_b64(frames=3, fmt=fmt)
        for workflow in ("sd15-upscale", "svd-basic"):
            body = {"workflow": workflow, "params": {"image": animated, "scale_by": 1.0}}
            if workflow == "svd-basic":
                del body["params"]["scale_by"]
            refused(await post(url, alice, "/api/v2/tasks", body), "image", "3 frames")
        video = {"image": animated, "duration": 0.5}
        refused(await post(url, alice, "/api/v2/tasks/image-to-video", video), "image", "frames")
        digest = hashlib.sha256(base64.b64decode(animated)).hexdigest()
        stored = list(get_settings().store.inputs_dir.glob(f"{digest}.*"))
        assert stored == [], f"the refused {fmt} was kept: {stored}"  # nothing stored for it
    assert await total_jobs(url, alice) == 0
    still = {"workflow": "svd-basic", "params": {"image": image_b64(frames=1, fmt="GIF")}}
    assert (await post(url, alice, "/api/v2/tasks", still)).status_code == 202


def test_limits_are_settings_with_safe_defaults() -> None:
    from comfyfleet.settings import LimitsSettings

    defaults = LimitsSettings()
    assert json.loads(defaults.model_dump_json()) == {
        "max_width": 2048,
        "max_height": 2048,
        "max_steps": 150,
        "max_batch_size": 8,
        "max_frames": 128,
        "max_output_pixels": 16 * 1024 * 1024,
    }
