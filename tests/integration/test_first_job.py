"""First job end to end: a real Prefect server, the ComfyFleet worker, a real ComfyUI node."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from uuid import UUID

import pytest
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.client.schemas.objects import FlowRun

from comfyfleet.store import Database, get_job
from comfyfleet.store.models import Attempt, Job

pytestmark = pytest.mark.integration


async def wait_final(flow_run_id: UUID, *, timeout: float = 180.0) -> FlowRun:
    async with get_client() as client:
        deadline = time.monotonic() + timeout
        while True:
            run = await client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"flow run {flow_run_id} still {run.state_name}")
            await asyncio.sleep(0.25)


def job_of_run(flow_run_id: UUID) -> Job:
    """The job a flow run was an attempt of, with its attempts and outputs (from the store)."""
    from sqlalchemy import select

    db = Database.from_settings()
    try:
        with db.session(readonly=True) as session:
            attempt = session.scalars(
                select(Attempt).where(Attempt.flow_run_id == str(flow_run_id))
            ).one()
            return get_job(session, job_id=attempt.job_id, with_details=True)
    finally:
        db.dispose()


def _pngs(flow_run_id: UUID) -> list[Path]:
    job = job_of_run(flow_run_id)
    return sorted(Path(o.path) for o in job.outputs if o.name.endswith(".png"))


async def test_text_to_image_run_through_prefect_completes_with_png_and_artifacts(
    prefect_fleet, comfy_fleet
) -> None:
    node = comfy_fleet[0].id
    async with get_client() as client:
        deployment = await client.read_deployment_by_name(f"text-to-image/{node}")
        created = time.monotonic()
        # A seed of its own: a graph the node ran before is served from ComfyUI's cache in no
        # time, and this test checks that real execution time is accounted.
        seed = secrets.randbelow(2**31)
        run = await client.create_flow_run_from_deployment(
            deployment.id,
            parameters={"prompt": "a red fox", "width": 64, "height": 96, "seed": seed},
        )
    final = await wait_final(run.id)
    print(f"create → Completed in {time.monotonic() - created:.2f}s")
    assert final.state is not None and final.state.is_completed(), final.state

    pngs = _pngs(run.id)
    assert pngs, "no PNG stored for the job"
    with Image.open(pngs[0]) as img:
        assert img.format == "PNG"
        assert img.size == (64, 96)

    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        )
    [markdown] = artifacts  # the outputs, linked: no image bytes in Prefect's database
    assert markdown.type == "markdown" and pngs[0].name in str(markdown.data)
    async with get_client() as client:  # nor in any artifact the session wrote so far
        everything = await client.read_artifacts(limit=200)
    holding = [a.key for a in everything if "data:image" in str(a.data) or "base64," in str(a.data)]
    assert everything and not holding

    job = job_of_run(run.id)  # recorded as a job of the `prefect` service user, with provenance
    assert job.status == "completed" and job.owner.username == "prefect"
    assert job.pinned_node == node and job.node == node and job.gpu_seconds > 0
    assert job.id == run.id.hex  # the run and its job are one thing
    [attempt] = job.attempts
    assert attempt.status == "completed" and attempt.flow_run_id == str(run.id)
    [output] = job.outputs
    assert output.node == node and output.prompt_id == attempt.id
    assert output.sha256 == hashlib.sha256(pngs[0].read_bytes()).hexdigest()


async def test_rejected_prompt_fails_the_run_at_once_with_the_reason(
    prefect_fleet, comfy_fleet
) -> None:
    node = comfy_fleet[0].id
    async with get_client() as client:
        deployment = await client.read_deployment_by_name(f"text-to-image/{node}")
        run = await client.create_flow_run_from_deployment(
            deployment.id,
            parameters={"prompt": "x", "checkpoint": "no-such-model.safetensors"},
        )
    final = await wait_final(run.id)
    assert final.state is not None and final.state.is_failed()
    assert "no-such-model.safetensors" in (final.state.message or "")
    async with get_client() as client:
        task_runs = await client.read_task_runs()
    jobs = [t for t in task_runs if t.flow_run_id == run.id]
    assert [t.name for t in jobs] == [f"t2i-{run.id.hex}"]
    assert jobs[0].run_count == 1, "a rejected prompt was retried"


def test_prefect_cli_deployment_run_pinned_to_a_node(prefect_fleet, comfy_fleet) -> None:
    node = comfy_fleet[-1].id
    result = subprocess.run(
        [sys.executable, "-m", "prefect", "deployment", "run", f"text-to-image/{node}",
         "-p", "prompt=a red fox", "--watch", "--watch-timeout", "180"],
        capture_output=True, text=True, timeout=240, env=os.environ.copy(),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Completed" in result.stdout + result.stderr
