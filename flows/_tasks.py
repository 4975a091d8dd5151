"""The tasks every generation flow is made of; each does one unit of I/O against one node.

Retries are task-level and only for transient faults (node unreachable, timeouts, 5xx): a prompt
ComfyUI rejects, or a node that raises while executing, fails the run at once with the node's
message. Resubmitting is safe: the prompt id is the attempt id, and a retried submit first asks
the node whether it already has it.
"""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    aupdate_progress_artifact,
)
from prefect.events import emit_event
from prefect.runtime import flow_run

from blocks import ComfyUINode
from comfyfleet.catalog import Catalog, RenderedPrompt, Workflow
from comfyfleet.comfyui import ComfyUIClient, Progress, retry_if_transient
from comfyfleet.inputs import InputStore, sync_input
from comfyfleet.outputs import OutputRecord, store_output
from comfyfleet.settings import get_settings

PROGRESS_EVENT = "comfy.progress"
_PROGRESS_INTERVAL_S = 0.2  # progress artifact / event throttle

_RETRY = dict(retries=3, retry_delay_seconds=[1, 2, 4], retry_jitter_factor=0.3,
              retry_condition_fn=retry_if_transient)  # fmt: skip


def run_name(prefix: str) -> Any:
    """A flow_run_name callable: `<prefix>-<job id>` (the flow run id for ad-hoc runs)."""

    def name() -> str:
        return f"{prefix}-{flow_run.parameters.get('job_id') or flow_run.id}"

    return name


def load_workflow(workflow: str) -> Workflow:
    settings = get_settings()
    catalog = Catalog.load(
        settings.workflow_dirs, fleet_defaults=settings.defaults, model_map=settings.models
    )
    return catalog.get(workflow)


@task(name="resolve-node")
async def resolve_node(node: str) -> ComfyUINode:
    """The node's registry entry (its ComfyUINode block)."""
    block = await ComfyUINode.aload(node)
    if not block.enabled:
        raise RuntimeError(f"node {node} is disabled")
    return block


@task(name="sync-inputs", **_RETRY)
async def sync_inputs(url: str, workflow: str, request: dict[str, Any]) -> dict[str, Any]:
    """Upload the request's input images the node lacks; returns the request with node names."""
    wf = load_workflow(workflow)
    store = InputStore(get_settings().store.inputs_dir)
    synced = dict(request)
    async with ComfyUIClient(url) as client:
        for name, spec in wf.parameters.items():
            if spec.type == "image" and isinstance(request.get(name), str):
                synced[name] = await sync_input(client, store.resolve(request[name]))
    return synced


@task(name="render")
def render(workflow: str, request: dict[str, Any], job_id: str) -> RenderedPrompt:
    """Validate the parameters against the workflow contract and build the ComfyUI graph."""
    return load_workflow(workflow).render(request, filename_prefix=f"comfyfleet/{job_id}")


@task(name="submit", **_RETRY)
async def submit(url: str, graph: dict[str, Any], prompt_id: str) -> None:
    """POST /prompt with our prompt id (idempotent: a node that already has it is left alone)."""
    async with ComfyUIClient(url) as client:
        queue = await client.queue()
        if prompt_id in queue.running or prompt_id in queue.pending:
            return
        if await client.history(prompt_id):
            return
        await client.submit(graph, prompt_id=prompt_id)


class _ProgressReporter:
    """Relays ComfyUI step progress to a Prefect progress artifact and `comfy.job.<id>` events."""

    def __init__(self, job_id: str, node: str, artifact_id: Any) -> None:
        self.job_id, self.node, self.artifact_id = job_id, node, artifact_id
        self._last = 0.0

    async def __call__(self, message: Any) -> None:
        if not isinstance(message, Progress):
            return
        now = time.monotonic()
        if message.value < message.max and now - self._last < _PROGRESS_INTERVAL_S:
            return
        self._last = now
        await aupdate_progress_artifact(
            self.artifact_id, progress=100.0 * message.value / max(message.max, 1)
        )
        emit_event(
            PROGRESS_EVENT,
            resource={"prefect.resource.id": f"comfy.job.{self.job_id}"},
            payload={"value": message.value, "max": message.max, "node": self.node,
                     "comfy_node": message.node},
        )  # fmt: skip


@task(name="follow", **_RETRY)
async def follow(url: str, prompt_id: str, job_id: str, node: str) -> float:
    """Follow the prompt over the websocket to its end; returns its execution seconds.

    Cancelled (the run was cancelled in Prefect or through ComfyFleet) → the prompt is
    interrupted on the node, or deleted from its queue if it had not started.
    """
    artifact_id = await acreate_progress_artifact(
        progress=0.0, description=f"Sampling progress of job {job_id} on {node}"
    )
    reporter = _ProgressReporter(job_id, node, artifact_id)
    async with ComfyUIClient(url) as client:
        try:
            result = await client.wait(prompt_id, on_message=reporter)
        except asyncio.CancelledError:
            await asyncio.shield(_stop_prompt(client, prompt_id))
            raise
    await aupdate_progress_artifact(artifact_id, progress=100.0)
    return result.duration_s or 0.0


async def _stop_prompt(client: ComfyUIClient, prompt_id: str) -> None:
    try:
        await client.delete_pending([prompt_id])
        await client.interrupt(prompt_id)
    except Exception as exc:  # best effort: the node may be gone
        get_run_logger().warning("could not stop prompt %s: %s", prompt_id, exc)


@task(name="collect-outputs", **_RETRY)
async def collect_outputs(
    url: str, prompt_id: str, job_id: str, node: str, output_nodes: list[str]
) -> list[OutputRecord]:
    """Download the job's output files from the node into the output store."""
    out_dir = Path(get_settings().store.outputs_dir) / job_id
    records: list[OutputRecord] = []
    async with ComfyUIClient(url) as client:
        for ref in await client.outputs(prompt_id):
            if output_nodes and ref.node_id not in output_nodes:
                continue
            records.append(await store_output(client, ref, out_dir, node=node, prompt_id=prompt_id))
    if not records:
        raise RuntimeError(f"prompt {prompt_id} on {node} finished without output files")
    get_run_logger().info("stored %d output(s) in %s", len(records), out_dir)
    return records


@task(name="publish")
async def publish(
    job_id: str, node: str, workflow: str, params: dict[str, Any], outputs: list[OutputRecord]
) -> None:
    """A markdown artifact a person wants to see: the images, where they came from, the params."""
    lines = [f"# Job `{job_id}`", "", f"Workflow `{workflow}` on node `{node}`.", ""]
    for out in outputs:
        if out.content_type.startswith("image/") and out.size <= 512 * 1024:
            data = base64.b64encode(Path(out.path).read_bytes()).decode()
            lines.append(f"![{out.name}](data:{out.content_type};base64,{data})")
    lines += ["", "| file | size | sha256 | node | prompt |", "|---|---|---|---|---|"]
    lines += [f"| `{o.path}` | {o.size} | `{o.sha256[:16]}…` | {o.node} | `{o.prompt_id}` |"
              for o in outputs]  # fmt: skip
    lines += ["", "| parameter | value |", "|---|---|"]
    lines += [f"| {k} | `{v}` |" for k, v in sorted(params.items())]
    await acreate_markdown_artifact(
        markdown="\n".join(lines),
        key=f"job-{job_id}".lower(),
        description=f"Outputs of job {job_id}",
    )


async def generate(
    *, workflow: str, request: dict[str, Any], node: str, job_id: str | None
) -> dict[str, Any]:
    """One attempt of a job on one node: the body every generation flow shares."""
    job_id = job_id or str(flow_run.id).replace("-", "")
    request = {k: v for k, v in request.items() if v is not None}
    target = await resolve_node(node)
    request = await sync_inputs(target.url, workflow, request)
    rendered = render(workflow, request, job_id)
    prompt_id = f"{job_id}-1"
    await submit(target.url, rendered.graph, prompt_id)
    seconds = await follow(target.url, prompt_id, job_id, node)
    outputs = await collect_outputs(target.url, prompt_id, job_id, node, rendered.output_nodes)
    await publish(job_id, node, workflow, rendered.params, outputs)
    return {
        "job_id": job_id,
        "node": node,
        "workflow": workflow,
        "params": rendered.params,
        "gpu_seconds": seconds,
        "outputs": [o.model_dump() for o in outputs],
    }
