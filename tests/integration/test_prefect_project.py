"""prefect.yaml is the one definition of the control-plane deployments, applied with Prefect's own
`prefect deploy`; the ComfyFleet worker is a Prefect plugin (`--type comfyfleet`)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.states import Scheduled

from comfyfleet import jobs
from comfyfleet.fleet.provision import deploy, upsert_pool
from deployments import BATCH_ENTRYPOINT, PROJECT_FILE, flow_spec
from tests.fixtures.prefect import BATCH_DIR
from tests.integration.test_first_job import wait_final

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def prefect(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The Prefect CLI from the checkout, against the session's server."""
    env = {**os.environ, "COMFYFLEET_HOME": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=timeout, check=False,
    )  # fmt: skip


async def test_prefect_deploy_all_applies_the_project_file(prefect_fleet) -> None:
    done = prefect("--no-prompt", "deploy", "--all", "--prefect-file", str(PROJECT_FILE))
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("text-to-image", "text-to-image-sdxl", "image-to-video", "comfy-workflow"):
        assert f"'{name}/fleet' successfully created" in done.stdout
    assert "'batch/nightly-example' successfully created" in done.stdout
    inspect = prefect("deployment", "inspect", "batch/nightly-example")
    assert inspect.returncode == 0, inspect.stderr
    assert "0 2 * * *" in inspect.stdout and "'active': False" in inspect.stdout, inspect.stdout
    async with get_client() as client:
        dep = await client.read_deployment_by_name("batch/nightly-example")
        routed = await client.read_deployment_by_name("text-to-image/fleet")
    assert dep.work_pool_name == routed.work_pool_name == "comfyfleet-control"
    assert dep.parameters == {"workflow": "sd15-basic", "file": "nightly-example.txt"}
    [schedule] = dep.schedules
    assert schedule.schedule.timezone == "UTC" and not schedule.active
    # The pull step's `{{ $COMFYFLEET_HOME }}` is filled in when deploying: the checkout.
    assert dep.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
    ]


async def test_the_scheduled_example_batch_runs_its_prompt_file_on_the_fleet(
    fleet_service, fleet_db
) -> None:
    BATCH_DIR.mkdir(parents=True, exist_ok=True)
    (BATCH_DIR / "nightly-example.txt").write_text("a lighthouse at night\n\na red fox\n")
    async with get_client() as client:
        dep = await client.read_deployment_by_name("batch/nightly-example")
        [schedule] = dep.schedules
        await client.update_deployment_schedule(dep.id, schedule.id, active=True)
        try:
            # The scheduler makes the next nightly run (02:00 UTC); the test moves it to now.
            only_this = DeploymentFilter(id=DeploymentFilterId(any_=[dep.id]))
            scheduled = FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
            )
            deadline = time.monotonic() + 60
            runs = []
            while not runs:
                assert time.monotonic() < deadline, "the scheduler made no run of the schedule"
                await asyncio.sleep(0.5)
                runs = await client.read_flow_runs(
                    deployment_filter=only_this, flow_run_filter=scheduled, limit=1
                )
            [run] = runs
            assert run.auto_scheduled and run.expected_start_time.hour == 2
            await client.set_flow_run_state(
                run.id,
                Scheduled(scheduled_time=datetime.now(UTC) - timedelta(seconds=1)),
                force=True,
            )
            final = await wait_final(run.id, timeout=300)
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            )
        finally:
            await client.update_deployment_schedule(dep.id, schedule.id, active=False)
    assert final.state.is_completed(), final.state
    [table] = [a for a in artifacts if a.type == "table"]
    assert table.key.startswith("batch-")
    rows = json.loads(table.data)
    assert [r["status"] for r in rows] == ["completed", "completed"]
    made = [jobs.get(fleet_db, r["job"]) for r in rows]
    assert [j.request["prompt"] for j in made] == ["a lighthouse at night", "a red fox"]
    assert {j.workflow for j in made} == {"sd15-basic"}
    assert {j.owner.username for j in made} == {"prefect"}
    assert all(j.outputs for j in made)


async def test_prefect_worker_start_with_the_comfyfleet_type_runs_a_flow_run_once(
    fleet_service,
) -> None:
    pool = "plugin-run-once"
    async with get_client() as client:
        await upsert_pool(client, pool, limit=None, description="the worker plugin test")
        dep_id = await deploy(
            client, flow_spec(BATCH_ENTRYPOINT), name="plugin-run-once", pool=pool,
            parameters={"workflow": "delay", "items": [{"seconds": 0.1}]}, tags=["test"],
            description="run by `prefect worker start --type comfyfleet --run-once`",
        )  # fmt: skip
        run = await client.create_flow_run_from_deployment(dep_id)
    try:
        done = prefect(
            "worker", "start", "--pool", pool, "--type", "comfyfleet", "--run-once", timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr
        final = await wait_final(run.id, timeout=120)
        assert final.state.is_completed(), final.state
    finally:
        async with get_client() as client:
            await client.delete_deployment(dep_id)
            await client.delete_work_pool(pool)
