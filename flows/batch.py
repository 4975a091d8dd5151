"""batch: many jobs of one workflow — inline parameter sets or a file of prompts — over the fleet.

Runs in the `comfyfleet-control` pool (it holds no GPU): it validates every item first (nothing is
queued if one is bad), queues one job per item under one batch id, follows them to the end, and
leaves a summary artifact (job, node, status, duration, outputs). If any job fails the run ends
Failed with a count, and the summary still lists every job: partial failure is reported, not
hidden.

    prefect deployment run 'batch/fleet' --params \
        '{"workflow": "sd15-basic", "items": [{"prompt": "a fox"}, {"prompt": "an owl"}]}'
    prefect deployment run 'batch/fleet' -p workflow=sd15-basic -p file=/data/prompts.csv

Files: `.csv` (a header row names the parameters), `.jsonl` (one JSON object per line),
`.yaml`/`.yml` (a list of mappings), `.txt` (one prompt per line). `defaults` apply to every item.
"""

from __future__ import annotations

import csv
import json
import uuid
from pathlib import Path
from typing import Any, Literal

import yaml
from prefect import flow, task
from prefect.artifacts import acreate_table_artifact
from prefect.runtime import flow_run
from prefect.states import Completed, Failed

from flows._routing import follow_jobs, submit_jobs


def read_items(path: Path) -> list[dict[str, Any]]:
    """Parameter sets from a file (see the module docstring for the formats)."""
    text = path.read_text()
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return [dict(row) for row in csv.DictReader(text.splitlines())]
    if suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if suffix in (".yaml", ".yml"):
        items = yaml.safe_load(text) or []
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ValueError(f"{path}: expected a YAML list of mappings")
        return items
    if suffix == ".txt":
        return [{"prompt": line.strip()} for line in text.splitlines() if line.strip()]
    raise ValueError(f"{path}: unsupported batch file type {suffix!r} (csv, jsonl, yaml, txt)")


@task(name="load-items")
def load_items(
    items: list[dict[str, Any]] | None, file: str | None, defaults: dict[str, Any] | None
) -> list[dict[str, Any]]:
    loaded = list(items or []) + (read_items(Path(file)) if file else [])
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
    params = load_items(items, file, defaults)
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
