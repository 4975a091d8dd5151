"""The task every job runs as, and the body the generation flows share.

A job's attempt on a node is one task run, `job` (named `t2i-<job>`, `sdxl-<job>`, `i2v-<job>`,
`wf-<job>`; tagged with its node and workflow), inside a flow run:

- attempts the dispatcher placed run in the node's shift (`node-shift/<node>`, flows/node_shift.py:
  one flow run per node for as long as its worker serves it);
- a pinned deployment `<flow>/<node>` run straight from Prefect (UI, CLI, schedule) records itself
  as a job of the `prefect` service user and runs its one attempt in its own flow run;
- a routed run (`<flow>/fleet`, no node) or a batch run queues jobs and follows them
  (flows/_routing.py); a node's shift runs each, but its task run is shown inside the run that
  queued it (its child in the Prefect UI).

Every `job` task run is labelled with the job, attempt, user (owner id), node and workflow ids.

The task retries only faults before the prompt reached the node (`SubmitFailed`: unreachable,
timeout, 5xx; a retry asks the node first, as the prompt id is the attempt id). A prompt ComfyUI
rejects, or a node that raises while executing, fails the job at once with the node's message; a
node that goes away ends the attempt as a node fault and the job goes to another node. What the
attempt does is comfyfleet.jobs.shift.run_attempt; this module adds what Prefect shows: the task
run, step progress as `comfy.progress` events (at most one a second, and the last step), and a
markdown artifact with the outputs (names, sizes, sha256, provenance and a link; no image bytes).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import prefect.task_engine
from prefect import Task, get_run_logger, tags
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import TaskRun
from prefect.context import FlowRunContext, TaskRunContext
from prefect.events import emit_event
from prefect.runtime import flow_run
from prefect.states import Cancelled, Cancelling

from comfyfleet.comfyui import NodeUnavailable
from comfyfleet.fleet.generation import run_prefix
from comfyfleet.fleet.node_block import ComfyUINode
from comfyfleet.jobs import attempts, load_workflow
from comfyfleet.jobs.inputs import store_inputs
from comfyfleet.jobs.shift import Outcome, SubmitFailed, info_of, run_attempt, stop_prompt
from comfyfleet.settings import get_settings
from comfyfleet.store import Work
from flows._routing import route

PROGRESS_EVENT = "comfy.progress"
PROGRESS_EVENT_S = 1.0
"""At most one progress event a second per job (and always the last step)."""


def run_name(prefix: str) -> Any:
    """A flow_run_name callable: `<prefix>-<flow run id>` (the run's job has that id)."""

    def name() -> str:
        return f"{prefix}-{_run_hex()}"

    return name


def _run_hex() -> str:
    return uuid.UUID(str(flow_run.id)).hex


async def resolve_node(node: str) -> ComfyUINode:
    """The node's registry entry (its ComfyUINode block).

    A node disabled after the dispatcher chose it is unavailable, not broken: the attempt ends
    as a node fault, so the job goes back to the backlog for another node instead of failing.
    """
    block = await ComfyUINode.aload(node)
    if not block.enabled:
        raise NodeUnavailable(f"node {node} was disabled before the prompt was submitted")
    return block


class ProgressEvents:
    """Step progress as `comfy.progress` events on resource `comfy.job.<id>` (what the gateway's
    SSE, Gradio and the CLI follow), throttled: a step at most every `PROGRESS_EVENT_S`, the
    first one that long after the attempt began (a job done sooner sends its last step only:
    one event, not two, for the short jobs that make up most of a GPU's work), and the last."""

    def __init__(self, info: attempts.AttemptInfo) -> None:
        self.info = info
        self._last = time.monotonic()

    async def __call__(self, value: int, maximum: int, comfy_node: str | None) -> None:
        now = time.monotonic()
        if value < maximum and now - self._last < PROGRESS_EVENT_S:
            return
        self._last = now
        emit_event(
            PROGRESS_EVENT,
            resource={"prefect.resource.id": f"comfy.job.{self.info.job_id}"},
            payload={"value": value, "max": maximum, "node": self.info.node,
                     "comfy_node": comfy_node},
        )  # fmt: skip


def _retry_submit(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only a fault before the prompt reached the node."""
    return isinstance(getattr(state, "data", None), SubmitFailed)


def _run_count() -> int:
    ctx = TaskRunContext.get()
    return ctx.task_run.run_count if ctx is not None else 1


def job_labels(work: Work) -> dict[str, str]:
    """Prefect labels of a job's task run: the ids a person filters by (one value per job, so
    labels rather than tags; the node and workflow are also tags, the few stable facets)."""
    return {
        "comfyfleet.job.id": work.job_id, "comfyfleet.attempt.id": work.attempt_id,
        "comfyfleet.user.id": str(work.owner_id), "comfyfleet.node.id": work.node,
        "comfyfleet.workflow.id": work.workflow,
    }  # fmt: skip


JOB_TAGS = ("node:", "workflow:")
"""The tags every job's task run carries (`node:<id>`, `workflow:<id>`)."""


def _job_tags_take_no_slots() -> None:
    """Prefect asks its API for a concurrency slot for each tag of each task run, limit or not:
    one request per job, queued behind the previous one for the same tags (40 concurrent task
    runs: 0.6–0.9 s instead of 0.25 s, 6–11 ms more worker CPU each, plus the server's
    transaction; the first prompts of a burst reached their nodes up to 1 s late). The fleet
    already decides how many jobs a node runs (its capacity) and which go first (the
    dispatcher); a Prefect tag limit on these tags would only hold a job inside a node's shift,
    on a slot the dispatcher counts as busy. So the job tags take no slot; any other tag keeps
    Prefect's behaviour (README, "What it is")."""
    original = prefect.task_engine._aconcurrency
    if getattr(original, "comfyfleet_job_tags", False):
        return

    def concurrency(names: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(names, list):
            names = [n for n in names if not n.removeprefix("tag:").startswith(JOB_TAGS)]
        return original(names, *args, **kwargs)

    concurrency.comfyfleet_job_tags = True  # type: ignore[attr-defined]
    prefect.task_engine._aconcurrency = concurrency  # type: ignore[attr-defined]


_job_tags_take_no_slots()


class JobTask(Task[..., Any]):
    """The `job` task: its task run carries `job_labels` from the moment it is created."""

    async def create_local_run(self, *args: Any, **kwargs: Any) -> TaskRun:
        run = await super().create_local_run(*args, **kwargs)
        work = (kwargs.get("parameters") or {}).get("work")
        if isinstance(work, Work):
            run.labels = {**(run.labels or {}), **job_labels(work)}
        return run


async def _job(work: Work, url: str, label: str, in_shift: bool = True) -> dict[str, Any]:
    """One attempt of a job on one node (see the module docstring)."""
    db = attempts.database(get_settings().database.url)
    info = info_of(work)
    fresh = work.fresh and _run_count() <= 1  # a retried submit may have reached the node
    outcome = await run_attempt(db, info, url, fresh=fresh, on_progress=ProgressEvents(info))
    if outcome.status == "completed":
        if in_shift:  # in the background: the node's slot frees at once, even if Prefect is slow
            _in_background(_publish_quietly(info, outcome))
        else:  # a pinned run is the job: it ends once its artifact is there
            await _publish_quietly(info, outcome)
    elif outcome.status in ("failed", "node_fault"):
        raise RuntimeError(f"job {info.job_id} on {info.node}: {outcome.status}: {outcome.detail}")
    return {
        "job_id": info.job_id, "attempt_id": info.attempt_id, "node": info.node,
        "workflow": info.workflow, "status": outcome.status, "detail": outcome.detail,
        "gpu_seconds": outcome.gpu_seconds, "outputs": [o.model_dump() for o in outcome.outputs],
    }  # fmt: skip


job = JobTask(
    fn=_job, name="job", task_run_name="{label}", retries=2, retry_delay_seconds=[1, 2],
    retry_condition_fn=_retry_submit, cache_policy=NO_CACHE, persist_result=False,
)  # fmt: skip


_background: set[asyncio.Task[Any]] = set()


def _in_background(coro: Any) -> None:
    """Run `coro` in this context (its task run's), keeping a reference until it ends."""
    running = asyncio.get_running_loop().create_task(coro)
    _background.add(running)
    running.add_done_callback(_background.discard)


async def _publish_quietly(info: attempts.AttemptInfo, outcome: Outcome) -> None:
    try:
        await publish(info, outcome)
    except Exception as exc:  # an artifact is for people; the job's result stands
        logging.getLogger(__name__).warning("job %s: could not publish the output artifact: %s",
                                            info.job_id, exc)  # fmt: skip


async def run_work(work: Work, url: str, *, in_shift: bool = True) -> dict[str, Any] | None:
    """Run an attempt as the `job` task run, tagged with its node and workflow; a submit that
    kept failing after the retries ends the attempt as a node fault."""
    label = f"{run_prefix(work.capability)}-{work.job_id}"
    try:
        async with _inside_parent_run(work):
            with tags(f"{JOB_TAGS[0]}{work.node}", f"{JOB_TAGS[1]}{work.workflow}"):
                return await job(work, url, label, in_shift)
    except SubmitFailed as exc:
        db = attempts.database(get_settings().database.url)
        await asyncio.to_thread(attempts.node_fault, db, info_of(work), str(exc))
        raise


@asynccontextmanager
async def _inside_parent_run(work: Work) -> AsyncIterator[None]:
    """A job that a routed or batch run queued is shown inside that run in the Prefect UI (its
    task run is the run's child; the shift that ran it is named by the `node:` tag). Otherwise,
    or if the run cannot be read, the task run stays in the current (shift's) run."""
    here = FlowRunContext.get()
    parent = None
    if (
        work.parent_run
        and here is not None
        and str(getattr(here.flow_run, "id", "")) != (work.parent_run)
    ):
        try:
            async with get_client() as client:
                parent = await client.read_flow_run(uuid.UUID(work.parent_run))
        except Exception as exc:  # shown in the shift instead; the job itself is unaffected
            logging.getLogger(__name__).warning(
                "job %s: its parent run %s is unreadable (%s)", work.job_id, work.parent_run, exc
            )
    if parent is None or here is None:
        yield
        return
    with here.model_copy(update={"flow_run": parent}):
        yield


def job_link(job_id: str) -> str:
    gateway = get_settings().gateway
    return f"http://{gateway.host}:{gateway.port}/api/v2/jobs/{job_id}"


async def publish(info: attempts.AttemptInfo, outcome: Outcome) -> None:
    """A markdown artifact a person wants to see: the outputs (a link to them, no bytes), where
    they came from, the parameters."""
    link = job_link(info.job_id)
    lines = [f"# Job `{info.job_id}`", "", f"Workflow `{info.workflow}` on node `{info.node}`, "
             f"{outcome.gpu_seconds:.2f} GPU-seconds. [The job and its outputs]({link}) "
             "(sign in to the gateway).", ""]  # fmt: skip
    lines += ["| file | size | sha256 | node | prompt |", "|---|---|---|---|---|"]
    lines += [f"| [{o.name}]({link}/outputs/{o.name}) | {o.size} | `{o.sha256[:16]}…` | {o.node} "
              f"| `{o.prompt_id}` |" for o in outcome.outputs]  # fmt: skip
    lines += ["", "| parameter | value |", "|---|---|"]
    lines += [f"| {k} | `{v}` |" for k, v in sorted(outcome.params.items())]
    await acreate_markdown_artifact(
        markdown="\n".join(lines), key=f"job-{info.job_id}".lower(),
        description=f"Outputs of job {info.job_id}",
    )  # fmt: skip


@asynccontextmanager
async def _lease(db: Any, info: attempts.AttemptInfo) -> AsyncIterator[None]:
    """Renew the attempt's lease while a pinned run runs it; a cancel asked through ComfyFleet
    moves the run to Cancelling, so the worker cancels it as a cancel from the Prefect UI (the
    prompt is then interrupted on the node)."""

    async def keep() -> None:
        asked = False
        while True:
            await asyncio.sleep(attempts.LEASE_RENEW_S)
            live = await asyncio.to_thread(attempts.renew, db, info)
            if asked:
                continue
            if not live or await asyncio.to_thread(attempts.cancel_requested, db, info):
                asked = True
                get_run_logger().warning(
                    "job %s: %s; stopping the run", info.job_id,
                    "cancel requested" if live else "the attempt is no longer the job's live one",
                )  # fmt: skip
                async with get_client() as client:
                    await client.set_flow_run_state(flow_run.id, Cancelling(), force=True)

    keeper = asyncio.create_task(keep())
    try:
        yield
    finally:
        keeper.cancel()


async def generate(*, workflow: str, request: dict[str, Any], node: str) -> Any:
    """A pinned run started from Prefect: the job is recorded (owned by the `prefect` service
    user, pinned to `node`, its id the run's id) and its one attempt runs here."""
    db = attempts.database(get_settings().database.url)
    wf = load_workflow(workflow)
    request = store_inputs(wf, {k: v for k, v in request.items() if v is not None})
    info = await asyncio.to_thread(
        attempts.adopt_or_record, db, job_id=_run_hex(), attempt_id=None, node=node,
        workflow=wf, request=request, flow_run_id=str(flow_run.id),
    )  # fmt: skip
    work = Work(info.attempt_id, info.job_id, node, info.workflow, wf.capability, info.params,
                0, fresh=True)  # fmt: skip
    try:
        target = await resolve_node(node)
    except NodeUnavailable as exc:
        await asyncio.to_thread(attempts.node_fault, db, info, str(exc))
        raise
    async with _lease(db, info):
        try:
            result = await run_work(work, target.url, in_shift=False)
        except asyncio.CancelledError:  # the run was cancelled (Prefect UI, or a job cancel)
            await asyncio.shield(stop_prompt(target.url, info.attempt_id))
            await asyncio.shield(asyncio.to_thread(attempts.cancelled, db, info))
            current = asyncio.current_task()
            if current is None or current.uncancel() > 0:  # cancelled more than once: stopping
                raise
            # The worker cancels a run's task once; the run ends Cancelled, not Crashed.
            return Cancelled(message="Cancelled by request; its prompt was interrupted.")
    return result or {}


async def run_job(
    *, workflow: str, request: dict[str, Any], node: str | None, priority: str
) -> Any:
    """A generation flow's body: pinned to `node` (one job, run here), or routed (no node)."""
    if node is None:
        return await route(workflow=workflow, request=request, priority=priority)
    return await generate(workflow=workflow, request=request, node=node)
