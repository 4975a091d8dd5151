"""batch: many jobs of one workflow — inline parameter sets or a file of prompts — over the fleet.

Runs in the `comfyfleet-control` pool (it holds no GPU): it validates every item first (nothing is
queued if one is bad), queues one job per item under one batch id, follows them to the end, and
leaves a summary artifact (job, node, status, duration, outputs). If any job fails the run ends
Failed with a count, and the summary still lists every job: partial failure is reported, not
hidden.

    prefect deployment run 'batch/fleet' --params \
        '{"workflow": "sd15-basic", "items": [{"prompt": "a fox"}, {"prompt": "an owl"}]}'
    prefect deployment run 'batch/fleet' -p workflow=sd15-basic -p file=prompts.csv

`file` is a path inside `batch.files_dir` (default var/batch): `.csv` (a header row names the
parameters), `.jsonl` (one JSON object per line), `.yaml`/`.yml` (a list of mappings), `.txt` (one
prompt per line), read by comfyfleet.jobs.batch_files. `defaults` apply to every item. Jobs belong
to the `prefect` service user unless `user` names one. prefect.yaml schedules it
(`batch/nightly-example`).
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from prefect import flow, task
from prefect.artifacts import acreate_table_artifact
from prefect.runtime import flow_run
from prefect.states import Completed, Failed

from comfyfleet import jobs
from comfyfleet.jobs.batch_files import read_items, resolve_file, typed_items
from comfyfleet.settings import get_settings
from flows._routing import follow_jobs, submit_jobs


@task(name="load-items")
def load_items(
    workflow: str, items: list[dict[str, Any]] | None, file: str | None,
    defaults: dict[str, Any] | None,
) -> list[dict[str, Any]]:  # fmt: skip
    loaded = list(items or [])
    if file:
        path = resolve_file(file, files_dir=get_settings().batch.files_dir)
        wf = jobs.load_catalog().get(workflow)
        loaded += typed_items(
            read_items(path), suffix=path.suffix,
            parse=lambda name, text: wf.parse_params({name: text})[name],
        )  # fmt: skip
    if not loaded:
        raise ValueError("a batch needs `items` or a `file` with at least one parameter set")
    return [{**(defaults or {}), **item} for item in loaded]


def _duration(job: dict[str, Any]) -> str:
    from datetime import datetime

    if job["started_at"] and job["finished_at"]:
        started = datetime.fromisoformat(job["started_at"])
        return f"{(datetime.fromisoformat(job['finished_at']) - started).total_seconds():.1f}s"
    return ""


@flow(name="batch", flow_run_name="batch-{workflow}")
async def batch(
    workflow: str,
    items: list[dict[str, Any]] | None = None,
    file: str | None = None,
    defaults: dict[str, Any] | None = None,
    priority: Literal["high", "normal", "low"] = "normal",
    user: str | None = None,
    timeout_s: float | None = None,
) -> Any:
    """Run one job per parameter set of `workflow` over the fleet and report them together."""
    params = load_items(workflow, items, file, defaults)
    batch_id = uuid.uuid4().hex
    job_ids = submit_jobs(workflow, params, priority=priority, username=user, batch_id=batch_id)
    results = await follow_jobs(job_ids, timeout_s=timeout_s)
    table = [
        {
            "job": j["id"], "status": j["status"], "node": j["node"] or "",
            "duration": _duration(j), "outputs": ", ".join(o["name"] for o in j["outputs"]),
            "error": (j["error"] or "")[:200],
        }
        for j in results
    ]  # fmt: skip
    await acreate_table_artifact(
        table=table, key=f"batch-{batch_id}", description=f"Batch {batch_id} of {workflow}"
    )
    failed = [j for j in results if j["status"] != "completed"]
    summary = {"batch_id": batch_id, "jobs": results, "flow_run": str(flow_run.id)}
    if failed:
        return Failed(message=f"{len(failed)} of {len(results)} jobs did not complete",
                      data=summary)  # fmt: skip
    return Completed(message=f"{len(results)} jobs completed", data=summary)
