"""Flows that hold no GPU: routed `<flow>/fleet` entries, batches and scheduled batches."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import DeploymentScheduleCreate
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.schedules import IntervalSchedule

from comfyfleet import jobs
from comfyfleet.fleet.provision import CONTROL_POOL, deploy
from comfyfleet.store import list_jobs
from deployments import BATCH_ENTRYPOINT, flow_spec
from tests.integration.test_first_job import wait_final

pytestmark = pytest.mark.integration


async def job_task_runs(run_id, *, expect: int, timeout: float = 30.0) -> list:
    """The `job` task runs shown in flow run `run_id`, once all `expect` are recorded (the
    server records task runs from events, a moment after they happen)."""
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
            )
            found = [t for t in runs if "comfyfleet.job.id" in t.labels]
            done = [t for t in found if t.state_type == StateType.COMPLETED]
            if len(done) >= expect or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.3)


def test_routed_deployment_from_the_prefect_cli_runs_through_the_backlog(
    fleet_service, fleet_db
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "prefect", "deployment", "run", "text-to-image/fleet",
         "-p", "prompt=a red fox", "-p", "priority=high", "--watch", "--watch-timeout", "180"],
        capture_output=True, text=True, timeout=240, env=os.environ.copy(),
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "Completed" in out
    [job] = fleet_db.run(
        lambda s: list_jobs(s, workflow="sd15-basic", limit=1, with_details=True), readonly=True
    )
    assert job.status == "completed" and job.priority == 0 and job.owner.username == "prefect"
    assert job.request == {"prompt": "a red fox"}


async def test_batch_from_a_file_completes_and_a_failing_batch_is_reported(
    fleet_service, fleet_db, tmp_path
) -> None:
    from comfyfleet.settings import get_settings

    files_dir = get_settings().batch.files_dir  # the only place batch files are read from
    files_dir.mkdir(parents=True, exist_ok=True)
    ok = files_dir / "ok.jsonl"
    ok.write_text("\n".join(json.dumps({"seconds": 0.2, "seed": 9000 + i}) for i in range(4)))
    outside = tmp_path / "outside.jsonl"
    outside.write_text(ok.read_text())
    async with get_client() as client:
        dep = await client.read_deployment_by_name("batch/fleet")
        run = await client.create_flow_run_from_deployment(
            dep.id, parameters={"workflow": "delay", "file": ok.name}
        )
        refused = await client.create_flow_run_from_deployment(
            dep.id, parameters={"workflow": "delay", "file": str(outside)}
        )
        good = await wait_final(run.id, timeout=240)
        assert good.state.is_completed(), good.state
        elsewhere = await wait_final(refused.id, timeout=240)
        assert elsewhere.state.is_failed() and "batch.files_dir" in elsewhere.state.message
        broken = {"seconds": 0.1, "message": "boom", "seed": 1}
        failing = await client.create_flow_run_from_deployment(
            dep.id, parameters={"workflow": "fail", "items": [broken]}
        )
        bad = await wait_final(failing.id, timeout=240)
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        )
    assert bad.state.is_failed() and "1 of 1 jobs did not complete" in bad.state.message
    table = next(a for a in artifacts if a.type == "table")
    rows = json.loads(table.data)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"completed"}
    assert all(r["node"] and r["outputs"] for r in rows)
    batch_jobs = [jobs.get(fleet_db, r["job"]) for r in rows]
    assert len({j.batch_id for j in batch_jobs}) == 1 and batch_jobs[0].batch_id
    # each job's task run is a child of the batch run (though a node's shift ran it), labelled
    assert {j.parent_run for j in batch_jobs} == {str(run.id)}
    children = await job_task_runs(run.id, expect=len(batch_jobs))
    assert {t.labels["comfyfleet.job.id"] for t in children} == {j.id for j in batch_jobs}
    for t in children:
        j = next(j for j in batch_jobs if j.id == t.labels["comfyfleet.job.id"])
        assert t.name == f"wf-{j.id}" and t.state_type == StateType.COMPLETED
        assert t.labels["comfyfleet.node.id"] == j.node and f"node:{j.node}" in t.tags
        assert t.labels["comfyfleet.user.id"] == str(j.owner_id)
        assert t.labels["comfyfleet.workflow.id"] == "delay"


async def test_a_batch_with_a_bad_item_queues_nothing(fleet_service, fleet_db) -> None:
    before = fleet_db.run(lambda s: len(list_jobs(s, workflow="delay", limit=10_000)))
    async with get_client() as client:
        dep = await client.read_deployment_by_name("batch/fleet")
        run = await client.create_flow_run_from_deployment(
            dep.id,
            parameters={"workflow": "delay", "items": [{"seconds": 1}, {"seconds": -3}]},
        )
        final = await wait_final(run.id, timeout=120)
    assert final.state.is_failed() and "item 2" in final.state.message
    assert fleet_db.run(lambda s: len(list_jobs(s, workflow="delay", limit=10_000))) == before


async def test_scheduled_batch_deployment_fires_on_its_schedule(fleet_service, fleet_db) -> None:
    async with get_client() as client:
        dep_id = await deploy(
            client, flow_spec(BATCH_ENTRYPOINT), name="every-few-seconds", pool=CONTROL_POOL,
            parameters={"workflow": "delay", "items": [{"seconds": 0.1}]},
            tags=["batch", "scheduled"], description="test schedule",
            schedules=[DeploymentScheduleCreate(schedule=IntervalSchedule(
                interval=timedelta(seconds=5)))],
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            completed = []
            while not completed:
                assert time.monotonic() < deadline, "no scheduled batch run completed"
                await asyncio.sleep(1)
                completed = await client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep_id])),
                    flow_run_filter=FlowRunFilter(
                        state=FlowRunFilterState(
                            type=FlowRunFilterStateType(any_=[StateType.COMPLETED])
                        )
                    ),
                )
        finally:
            await client.delete_deployment(dep_id)
    assert completed[0].auto_scheduled
