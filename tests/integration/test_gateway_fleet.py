"""End to end through the gateway on the real CPU fleet (Prefect server, worker, fleet service,
ComfyUI test nodes): REST submit → ComfyUI → outputs; SSE with live k/N steps from ComfyUI."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.fixtures.gateway import Account
from tests.integration.test_gateway import collect

pytestmark = pytest.mark.integration


async def test_rest_job_runs_on_the_fleet_and_streams_real_progress(
    fleet_gateway: Any, fleet_accounts: dict[str, Account]
) -> None:
    alice = fleet_accounts["alice"]
    async with httpx.AsyncClient(base_url=fleet_gateway.url, timeout=120) as client:
        started = time.monotonic()
        submitted = await client.post(
            "/api/v2/tasks",
            headers=alice.headers,
            json={"workflow": "delay", "params": {"seconds": 2, "steps": 5}},
        )
        assert submitted.status_code == 202, submitted.text
        job = submitted.json()
        events = await collect(
            f"{fleet_gateway.url}/api/v2/tasks/{job['id']}/events", alice.headers, timeout=120
        )
        elapsed = time.monotonic() - started
        steps = {(e.data["value"], e.data["max"]) for e in events if e.event == "progress"}
        assert len({s for s in steps if s[1] == 5}) >= 2, events
        assert events[-1].data == {"status": "completed"}, events
        outputs = events[-2].data["outputs"]
        download = await client.get(outputs[0]["url"], headers=alice.headers)
        assert download.status_code == 200 and download.content[:4] == b"\x89PNG"
        print(f"[gateway] delay job (2 s of node work) submit -> end event: {elapsed:.2f} s")
        sync = await client.post(
            "/api/v2/tasks/text-to-image?wait=true&timeout=120",
            headers=alice.headers,
            json={"prompt": "a red fox", "steps": 2},
        )
        assert sync.status_code == 200, sync.text
        assert sync.json()["status"] == "completed" and sync.json()["outputs"]


async def test_image_to_video_upload_runs_on_the_fleet(
    fleet_gateway: Any, fleet_accounts: dict[str, Account]
) -> None:
    from tests.unit.api.test_tasks import png_bytes

    bob = fleet_accounts["bob"]
    async with httpx.AsyncClient(base_url=fleet_gateway.url, timeout=180) as client:
        response = await client.post(
            "/api/v2/tasks/image-to-video/upload?wait=true&timeout=170",
            headers=bob.headers,
            files={"image": ("in.png", png_bytes("purple", 64), "image/png")},
            data={"frames": "2", "fps": "4"},
        )
        assert response.status_code == 200, response.text
        job = response.json()
        assert job["status"] == "completed", job
        assert job["params"]["frames"] == 2 and job["params"]["image"].startswith("comfyfleet/")
        video = await client.get(job["outputs"][0]["url"], headers=bob.headers)
        assert video.status_code == 200 and video.content[8:12] == b"WEBP"
