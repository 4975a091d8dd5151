"""The tasks every generation flow is made of; each does one unit of I/O against one node.

Task runs: `sync-inputs` (only when the job has input images), `submit`, `follow`,
`collect-outputs`. Looking up the node, rendering the graph and publishing the result artifact
are plain calls inside the flow run: a task run costs the Prefect server CPU for its states and
events on every attempt, and these steps have nothing to retry.

Retries are task-level and only for transient faults (node unreachable, timeouts, 5xx): a prompt
ComfyUI rejects, or a node that raises while executing, fails the run at once with the node's
message. Resubmitting is safe: the prompt id is the attempt id, and a retried submit first asks
the node whether it already has it.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    aupdate_progress_artifact,
)
from prefect.client.orchestration import get_client
from prefect.events import emit_event
from prefect.runtime import flow_run
from prefect.states import Cancelling

from blocks import ComfyUINode
from comfyfleet import attempts
from comfyfleet.catalog import Catalog, Workflow
from comfyfleet.comfyui import (
    ComfyUIClient,
    NodeUnavailable,
    Progress,
    is_node_fault,
    retry_if_transient,
)
from comfyfleet.inputs import REF_PREFIX, InputStore, sync_input
from comfyfleet.jobs import load_catalog
from comfyfleet.outputs import OutputRecord, store_output
from comfyfleet.settings import get_settings
from flows._routing import route

PROGRESS_EVENT = "comfy.progress"
_PROGRESS_INTERVAL_S = 0.2  # progress artifact / event throttle
_DB_PROGRESS_INTERVAL_S = 0.5  # durable progress in the job row
NODE_GONE_AFTER_S = 3.0
"""A node whose websocket cannot be re-established for this long has failed the attempt."""

_RETRY = dict(retries=3, retry_delay_seconds=[1, 2, 4], retry_jitter_factor=0.3,
              retry_condition_fn=retry_if_transient)  # fmt: skip


def run_name(prefix: str) -> Any:
    """A flow_run_name callable: `<prefix>-<job id>` (the flow run id for ad-hoc runs)."""

    def name() -> str:
        return f"{prefix}-{flow_run.parameters.get('job_id') or flow_run.id}"

    return name


_catalog: tuple[tuple[Any, ...], Catalog] | None = None


def _sources_signature(sources: list[Path]) -> tuple[Any, ...]:
    """What the catalog was read from, as (path, mtime, size) of every file: cheap to compute."""
    seen = []
    for source in sources:
        paths = sorted(Path(source).rglob("*")) if Path(source).is_dir() else [Path(source)]
        for path in paths:
            try:
                st = path.stat()
            except OSError:
                continue
            seen.append((str(path), st.st_mtime_ns, st.st_size))
    return tuple(seen)


def load_workflow(workflow: str) -> Workflow:
    """The workflow from the catalog, read once per process and again when a file changes
    (reading every contract costs ~20 ms: too much to do for every attempt)."""
    global _catalog
    settings = get_settings()
    signature = _sources_signature([Path(p) for p in settings.workflow_dirs])
    if _catalog is None or _catalog[0] != signature:
        _catalog = (signature, load_catalog(settings))
    return _catalog[1].get(workflow)


async def resolve_node(node: str) -> ComfyUINode:
    """The node's registry entry (its ComfyUINode block).

    A node disabled after the dispatcher chose it is unavailable, not broken: the attempt ends
    as a node fault, so the job goes back to the backlog for another node instead of failing.
    """
    block = await ComfyUINode.aload(node)
    if not block.enabled:
        raise NodeUnavailable(f"node {node} was disabled before the prompt was submitted")
    return block


def store_inputs(workflow: Workflow, request: dict[str, Any]) -> dict[str, Any]:
    """Image parameters given as local files (operators running flows from Prefect) go into the
    input store; the request then names them as the node will (`comfyfleet/<sha256>.<ext>`)."""
    store = InputStore(get_settings().store.inputs_dir)
    stored = dict(request)
    for name, spec in workflow.parameters.items():
        value = request.get(name)
        if spec.type == "image" and isinstance(value, str) and Path(value).is_absolute():
            stored[name] = store.put_file(Path(value)).ref
    return stored


def input_refs(workflow: Workflow, params: dict[str, Any]) -> list[str]:
    """The job's input images, as input store refs (`comfyfleet/<sha256>.<ext>`)."""
    refs = [params.get(name) for name, spec in workflow.parameters.items() if spec.type == "image"]
    return [ref for ref in refs if isinstance(ref, str) and ref.startswith(REF_PREFIX)]


@task(name="sync-inputs", **_RETRY)
async def sync_inputs(url: str, refs: list[str]) -> None:
    """Upload the job's input images that the node lacks (by content hash)."""
    store = InputStore(get_settings().store.inputs_dir)
    async with ComfyUIClient(url) as client:
        for ref in refs:
            await sync_input(client, store.resolve(ref))


@task(name="submit", **_RETRY)
async def submit(url: str, graph: dict[str, Any], prompt_id: str) -> None:
    """POST /prompt with our prompt id (idempotent: a node that already has it is left alone).

    The client id is the prompt id too: ComfyUI sends a prompt's messages only to the websocket
    of the client that submitted it, and `follow` (or an adopting run) connects under that id.
    """
    async with ComfyUIClient(url, client_id=prompt_id) as client:
        queue = await client.queue()
        if prompt_id in queue:
            return
        if await client.history(prompt_id):
            return
        await client.submit(graph, prompt_id=prompt_id)


class _ProgressReporter:
    """Relays ComfyUI step progress to a Prefect progress artifact, `comfy.job.<id>` events and
    (throttled further) the job row."""

    def __init__(self, info: attempts.AttemptInfo, artifact_id: Any) -> None:
        self.info, self.artifact_id = info, artifact_id
        self.job_id, self.node = info.job_id, info.node
        self._last = 0.0
        self._last_db = 0.0

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
        if message.value >= message.max or now - self._last_db >= _DB_PROGRESS_INTERVAL_S:
            self._last_db = now
            db = attempts.database(get_settings().database.url)
            await asyncio.to_thread(attempts.progress, db, self.info, message.value, message.max)


@task(name="follow")
async def follow(url: str, info: attempts.AttemptInfo) -> float:
    """Follow the prompt over the websocket to its end; returns its execution seconds.

    Cancelled (the run was cancelled in Prefect or through ComfyFleet) → the prompt is
    interrupted on the node, or deleted from its queue if it had not started.
    """
    artifact_id = await acreate_progress_artifact(
        progress=0.0, description=f"Sampling progress of job {info.job_id} on {info.node}"
    )
    reporter = _ProgressReporter(info, artifact_id)
    async with ComfyUIClient(
        url, client_id=info.attempt_id, unavailable_after=NODE_GONE_AFTER_S
    ) as client:
        try:
            result = await client.wait(info.attempt_id, on_message=reporter)
        except asyncio.CancelledError:
            await asyncio.shield(_stop_prompt(client, info.attempt_id))
            raise
    await aupdate_progress_artifact(artifact_id, progress=100.0)
    return result.duration_s or 0.0


async def _stop_prompt(client: ComfyUIClient, prompt_id: str) -> None:
    try:
        await client.delete_pending([prompt_id])
        await client.interrupt(prompt_id)
    except Exception as exc:  # best effort: the node may be gone
        get_run_logger().warning("could not stop prompt %s: %s", prompt_id, exc)


def attempt_dir(job_id: str, attempt_id: str) -> Path:
    return Path(get_settings().store.outputs_dir) / job_id / attempt_id


@task(name="collect-outputs", **_RETRY)
async def collect_outputs(
    url: str, prompt_id: str, job_id: str, node: str, output_nodes: list[str]
) -> list[OutputRecord]:
    """Download the attempt's output files from the node into the output store.

    Each attempt has its own folder (`<job>/<prompt id = attempt id>/`): two attempts of a job
    on two nodes name their files alike (each node counts from 00001), and a superseded attempt
    finishing late must not overwrite the files of the one that completed the job.
    """
    out_dir = attempt_dir(job_id, prompt_id)
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


@asynccontextmanager
async def _lease(db: Any, info: attempts.AttemptInfo) -> AsyncIterator[None]:
    """Renew the attempt's lease while the body runs; act on a cancel asked through ComfyFleet.

    A cancel request moves this flow run to Cancelling in Prefect, so the worker cancels it the
    same way as a cancel from the Prefect UI (the prompt is interrupted on the node).
    """

    async def keep() -> None:
        asked = False
        while True:
            await asyncio.sleep(attempts.LEASE_RENEW_S)
            live = await asyncio.to_thread(attempts.renew, db, info)
            if asked:
                continue
            if not live or await asyncio.to_thread(attempts.cancel_requested, db, info):
                asked = True
                async with get_client() as client:
                    await client.set_flow_run_state(flow_run.id, Cancelling(), force=True)

    keeper = asyncio.create_task(keep())
    try:
        yield
    finally:
        keeper.cancel()


async def generate(
    *, workflow: str, request: dict[str, Any], node: str, job_id: str | None,
    attempt_id: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One attempt of a job on one node: the body every generation flow shares."""
    db = attempts.database(get_settings().database.url)
    wf = load_workflow(workflow)
    request = store_inputs(wf, {k: v for k, v in request.items() if v is not None})
    info = await asyncio.to_thread(
        attempts.adopt_or_record, db, job_id=job_id, attempt_id=attempt_id, node=node,
        workflow=wf, request=request, flow_run_id=str(flow_run.id),
    )  # fmt: skip
    if await asyncio.to_thread(attempts.cancel_requested, db, info):
        await asyncio.to_thread(attempts.cancelled, db, info)
        return {"job_id": info.job_id, "attempt_id": info.attempt_id, "cancelled": True}
    try:
        target = await resolve_node(info.node)
        if info.workflow != wf.id:  # an attempt of a recorded job: its workflow is the store's
            wf = load_workflow(info.workflow)
        if refs := input_refs(wf, info.params):
            await sync_inputs(target.url, refs)
        rendered = wf.render(info.params, filename_prefix=f"comfyfleet/{info.job_id}")
        await submit(target.url, rendered.graph, info.attempt_id)
        if not await asyncio.to_thread(attempts.started, db, info):
            # Ended while it was being submitted (moved off a failing node, cancelled, or
            # re-attempted elsewhere): this prompt must not run as well.
            async with ComfyUIClient(target.url) as client:
                await _stop_prompt(client, info.attempt_id)
            return _superseded(info, "the attempt was ended before its prompt started")
        async with _lease(db, info):
            seconds = await follow(target.url, info)
            outputs = await collect_outputs(
                target.url, info.attempt_id, info.job_id, info.node, rendered.output_nodes
            )
            # Publish before completing: the router frees the node's slot when the attempt
            # completes, and the pool's slot frees when this run ends, so keep them close.
            try:
                await publish(info.job_id, info.node, info.workflow, rendered.params, outputs)
            except Exception as exc:  # an artifact is for people; the job's result stands
                get_run_logger().warning("could not publish the output artifact: %s", exc)
        if not await asyncio.to_thread(attempts.completed, db, info, outputs, seconds):
            shutil.rmtree(attempt_dir(info.job_id, info.attempt_id), ignore_errors=True)
            return _superseded(info, "the job's live attempt is another one; outputs discarded")
    except asyncio.CancelledError:
        if await asyncio.to_thread(attempts.cancel_requested, db, info):
            await asyncio.shield(asyncio.to_thread(attempts.cancelled, db, info))
        raise
    except Exception as exc:
        if is_node_fault(exc):
            status = await asyncio.to_thread(attempts.node_fault, db, info, str(exc))
            get_run_logger().warning("node %s failed the attempt (%s); job is %s",
                                     info.node, exc, status)  # fmt: skip
        else:
            await asyncio.to_thread(attempts.failed, db, info, str(exc))
        raise
    return {
        "job_id": info.job_id,
        "attempt_id": info.attempt_id,
        "node": info.node,
        "workflow": info.workflow,
        "params": rendered.params,
        "gpu_seconds": seconds,
        "outputs": [o.model_dump() for o in outputs],
    }


def _superseded(info: attempts.AttemptInfo, why: str) -> dict[str, Any]:
    get_run_logger().warning("attempt %s of job %s on %s superseded: %s",
                             info.attempt_id, info.job_id, info.node, why)  # fmt: skip
    return {"job_id": info.job_id, "attempt_id": info.attempt_id, "superseded": why}


async def run_job(
    *, workflow: str, request: dict[str, Any], node: str | None, job_id: str | None,
    attempt_id: str | None, priority: str,
) -> dict[str, Any]:  # fmt: skip
    """A generation flow's body: pinned to `node` (one attempt here), or routed (no node)."""
    if node is None:
        return await route(workflow=workflow, request=request, priority=priority)
    return await generate(
        workflow=workflow, request=request, node=node, job_id=job_id, attempt_id=attempt_id
    )
