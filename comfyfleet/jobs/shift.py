"""Node shifts: how the attempts given to a node are run there.

A node's **shift** is one long-lived Prefect flow run (`node-shift/<node>`, flows/node_shift.py)
that runs every attempt the dispatcher gives the node, each as a task run of its own (the Prefect
layer wraps `run_attempt` in a retrying task). The unit of work a job costs Prefect is one task
run, not a flow run: see README "Architecture". The store side (who works which node, how an
attempt passes to a shift exactly once) is comfyfleet.store.shifts.

- `run_attempt`: one attempt on one node, start to end — inputs synced, prompt submitted (prompt
  id = attempt id, so a resubmit finds it), followed over the websocket, outputs stored, the
  result recorded — returning an `Outcome`. Faults before the prompt reached the node raise
  `SubmitFailed` (the task retries those); everything else is recorded here.
- `WorkFeed`: one per worker process. It polls the store for the attempts given to the nodes of
  every shift in the process (one query for all of them, every `POLL_S` or at once when the
  `WORK` bell rings), hands each to its shift, relays cancels, and beats for every shift (their
  leases) every `BEAT_S`.
- `NodeShift`: the body of a shift run: claims the node, takes what the feed hands it, runs each
  attempt concurrently (the node's ComfyUI queues them: the next prompt is on the node before the
  current one ends, so the GPU does not wait for the control plane), and leaves the node when
  another shift took it over or when it is stopped (the attempts it holds are handed back).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import shutil
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from comfyfleet import bell
from comfyfleet.catalog import raw
from comfyfleet.comfyui import (
    ComfyUIClient,
    ComfyUIError,
    ExecutionStart,
    Message,
    PreviewFrame,
    Progress,
    PromptResult,
    is_node_fault,
    is_transient,
)
from comfyfleet.comfyui.follow import locate
from comfyfleet.jobs import attempts, load_workflow
from comfyfleet.jobs.inputs import InputStore, input_refs, sync_input
from comfyfleet.jobs.messages import MessageLog
from comfyfleet.jobs.outputs import (
    OutputRecord,
    attempt_dir,
    keep_only,
    store_output,
)
from comfyfleet.jobs.previews import PreviewWriter
from comfyfleet.settings import get_settings
from comfyfleet.store import Database, Work, beat, claim_node, end_shift, take_work, untake

logger = logging.getLogger(__name__)

POLL_S = 0.5
"""How often a worker process looks for new work when no bell rang."""
BEAT_S = 2.0
"""Shift heartbeats and attempt leases, renewed together."""
STALE_AFTER_S = 10.0
"""A shift that has not beaten for this long is gone (comfyfleet.fleet.recovery)."""
NODE_GONE_AFTER_S = 1.5
"""A node whose websocket cannot be re-established for this long has failed the attempt. A drop
with the node still up reconnects at once; a killed node refuses at once and a restarted one
has forgotten its prompts, so waiting longer only delays failover (B4: 3.0 s here was most of
the kill → running elsewhere time). A false alarm costs duplicate work, never a duplicate
output: the attempt is superseded."""
PROGRESS_DB_S = 2.0
"""Durable progress in the job row: at most this often (and the last step)."""
DOWNLOAD_TRIES = 3
HISTORY_SETTLE_TRIES, HISTORY_SETTLE_S = 20, 0.05
"""How long a finished prompt's history entry is waited for."""

Status = Literal["completed", "failed", "node_fault", "cancelled", "superseded"]


class SubmitFailed(Exception):
    """A transient fault before the prompt reached the node (unreachable, timeout, 5xx): safe
    to try again on the same node (the prompt id is the attempt id)."""


@dataclass
class Outcome:
    """How an attempt ended, as recorded in the store."""

    status: Status
    detail: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    """The parameters the graph was rendered with (defaults applied)."""
    outputs: list[OutputRecord] = field(default_factory=list)
    gpu_seconds: float = 0.0


class _Superseded(Exception):
    """The attempt was ended (moved, cancelled, re-attempted) before its prompt started."""


OnProgress = Callable[[int, int, str | None], Awaitable[None]]
"""`(value, max, comfy node id)` for each ComfyUI progress message (the Prefect layer throttles
and relays it as events)."""


async def stop_prompt(url: str, prompt_id: str) -> None:
    """Delete the prompt from the node's queue, or interrupt it if it runs (best effort)."""
    try:
        async with ComfyUIClient(url, timeout=5) as client:
            await client.delete_pending([prompt_id])
            await client.interrupt(prompt_id)
    except Exception as exc:  # the node may be gone
        logger.warning("could not stop prompt %s on %s: %s", prompt_id, url, exc)


async def run_attempt(
    db: Database, info: attempts.AttemptInfo, url: str, *, fresh: bool,
    on_progress: OnProgress | None = None,
) -> Outcome:  # fmt: skip
    """Run one attempt on the node at `url` to its end (see the module docstring). `fresh`: the
    attempt was never held before, so its prompt cannot be on the node yet (else the node is
    asked first, and a prompt it has is followed instead of submitted again)."""
    settings = get_settings()
    prepared = _prepare(info)
    prompt_id = info.attempt_id
    marked = False

    async def mark_started() -> bool:
        nonlocal marked
        if not marked:
            marked = True
            return await asyncio.to_thread(attempts.started, db, info)
        return True

    last_db = 0.0
    preview = PreviewWriter(info.job_id)  # live previews (comfyfleet.jobs.previews)
    log = MessageLog(info.job_id) if prepared.raw else None  # for /comfy/ws

    async def on_message(message: Message) -> None:
        nonlocal last_db
        if log is not None:
            log.write(message)
        if isinstance(message, PreviewFrame):
            await preview.aoffer(message.image)
        if isinstance(message, ExecutionStart) and not marked and not await mark_started():
            raise _Superseded  # stop following; handled below
        if isinstance(message, Progress):
            if not marked:
                await mark_started()
            if on_progress is not None:
                await on_progress(message.value, message.max, message.node)
            now = time.monotonic()
            if message.value >= message.max or now - last_db >= PROGRESS_DB_S:
                last_db = now
                await asyncio.to_thread(attempts.progress, db, info, message.value, message.max)

    try:
        async with contextlib.AsyncExitStack() as stack:
            client = await stack.enter_async_context(ComfyUIClient(
                url, client_id=prompt_id, unavailable_after=NODE_GONE_AFTER_S,
                no_progress_timeout=settings.jobs.no_progress_timeout_s,
            ))  # fmt: skip
            try:
                if prepared.raw:  # its /comfy/ws client gets every message: listen first
                    await stack.enter_async_context(client.listening())
                if fresh or await locate(client, prompt_id) is None:
                    if prepared.inputs:
                        store = InputStore(settings.store.inputs_dir)
                        for ref in prepared.inputs:
                            await sync_input(client, store.resolve(ref))
                    await client.submit(
                        prepared.graph, prompt_id=prompt_id, extra_data=prepared.extra_data
                    )
            except Exception as exc:
                if is_transient(exc):
                    raise SubmitFailed(f"{info.node}: {exc}") from exc
                raise
            try:
                result = await client.wait(prompt_id, on_message=on_message)
            except _Superseded:
                await stop_prompt(url, prompt_id)
                return Outcome("superseded", "the attempt ended before its prompt started")
            if not await mark_started():
                return Outcome("superseded", "the attempt ended while its prompt ran")
            outputs = await _collect(
                client, info, prepared.output_nodes, result, require_files=not prepared.raw
            )
        seconds = result.duration_s or 0.0
        if not await asyncio.to_thread(attempts.completed, db, info, outputs, seconds):
            shutil.rmtree(attempt_dir(info.job_id, info.attempt_id), ignore_errors=True)
            return Outcome("superseded", "the job's live attempt is another one; outputs dropped")
        return Outcome("completed", params=prepared.params, outputs=outputs, gpu_seconds=seconds)
    except asyncio.CancelledError:
        # One shielded cleanup: the engine running the task may cancel it again at every await,
        # and a cancel must still reach the node and the job.
        await asyncio.shield(_cancelled(db, info, url))
        raise
    except SubmitFailed:
        raise
    except Exception as exc:
        if is_node_fault(exc):
            status = await asyncio.to_thread(attempts.node_fault, db, info, str(exc))
            logger.warning("node %s failed attempt %s (%s); job is %s", info.node,
                           info.attempt_id, exc, status)  # fmt: skip
            return Outcome("node_fault", str(exc), params=prepared.params)
        await asyncio.to_thread(attempts.failed, db, info, str(exc))
        return Outcome("failed", str(exc), params=prepared.params)
    finally:
        preview.close()
        if log is not None:
            log.close()


@dataclass(frozen=True)
class _Prepared:
    """What is sent to the node for one attempt."""

    graph: dict[str, Any]
    params: dict[str, Any]  # the parameters it was rendered with (defaults applied)
    output_nodes: list[str]  # the nodes whose files are the job's outputs ([]: all of them)
    inputs: list[str]  # stored input refs the node must have
    extra_data: dict[str, Any] | None = None
    raw: bool = False  # a raw graph (no contract)


def _prepare(info: attempts.AttemptInfo) -> _Prepared:
    """The graph of a catalog workflow rendered from the job's parameters, or a raw graph as
    it was sent (its outputs: every file it makes)."""
    if info.workflow == raw.GRAPH_WORKFLOW:
        graph = info.params["graph"]
        return _Prepared(
            graph, {}, [], raw.input_refs(graph), info.params.get("extra_data"), raw=True
        )
    wf = load_workflow(info.workflow)
    rendered = wf.render(info.params, filename_prefix=f"comfyfleet/{info.job_id}")
    return _Prepared(
        rendered.graph, rendered.params, rendered.output_nodes, input_refs(wf, info.params)
    )


async def _cancelled(db: Database, info: attempts.AttemptInfo, url: str) -> None:
    """The attempt's task was cancelled: if its job asked for it, stop the prompt and end the
    job cancelled (else its shift is stopping: the attempt goes to the node's next shift)."""
    if await asyncio.to_thread(attempts.cancel_requested, db, info):
        await stop_prompt(url, info.attempt_id)
        await asyncio.to_thread(attempts.cancelled, db, info)


async def _collect(
    client: ComfyUIClient, info: attempts.AttemptInfo, output_nodes: list[str],
    result: PromptResult, *, require_files: bool = True,
) -> list[OutputRecord]:  # fmt: skip
    """The attempt's output files, downloaded from the node into the output store. Each attempt
    has its own folder (`<job>/<attempt>/`): two attempts on two nodes name files alike, and a
    superseded attempt finishing late must not overwrite the files of the one that completed.

    The files are listed from the prompt's history entry (it includes outputs ComfyUI served
    from its cache), which ComfyUI writes just after it sends `execution_success`: it is asked
    again briefly, and the outputs the websocket reported stand in if it never shows. A raw
    graph may make no file at all (`require_files` False): its outputs are then its messages."""
    out_dir = attempt_dir(info.job_id, info.attempt_id)
    refs = result.files
    for _ in range(HISTORY_SETTLE_TRIES):
        try:
            refs = await client.outputs(info.attempt_id)
            break
        except ComfyUIError:  # not in the history yet (still in the queue, or between the two)
            await asyncio.sleep(HISTORY_SETTLE_S)
    for tries in range(1, DOWNLOAD_TRIES + 1):
        try:
            records = [
                await store_output(client, ref, out_dir, node=info.node, prompt_id=info.attempt_id)
                for ref in refs
                if not output_nodes or ref.node_id in output_nodes
            ]
            break
        except Exception as exc:
            if tries == DOWNLOAD_TRIES or not is_transient(exc):
                raise
            await asyncio.sleep(tries)
    if not records and require_files:
        raise RuntimeError(f"prompt {info.attempt_id} on {info.node} finished without output files")
    if out_dir.is_dir():
        await asyncio.to_thread(keep_only, out_dir, {Path(r.path).name for r in records})
    return records


def info_of(work: Work) -> attempts.AttemptInfo:
    return attempts.AttemptInfo(work.job_id, work.attempt_id, work.node, work.workflow,
                                work.params)  # fmt: skip


# -- shifts ------------------------------------------------------------------------------------

RunWork = Callable[[Work], Awaitable[Any]]
"""Runs one attempt a shift took (the Prefect layer: a task run around `run_attempt`)."""


class NodeShift:
    """The body of one shift run (see the module docstring)."""

    def __init__(self, db: Database, *, node: str, shift_id: str, run: RunWork) -> None:
        self.db, self.node, self.shift_id, self.run_work = db, node, shift_id, run
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self.max_jobs: int | None = None
        self._context = contextvars.copy_context()
        self.running: dict[str, asyncio.Task[Any]] = {}
        self.done = 0
        self._leave = asyncio.Event()
        self.why = ""

    async def run(self, *, max_jobs: int | None = None) -> str:
        """Work the node until another shift takes it over, `max_jobs` were taken (the caller
        then hands over to a successor), or the run is cancelled. Returns why it ended."""
        claimed = await asyncio.to_thread(
            self.db.run,
            lambda s: claim_node(
                s,
                node=self.node,
                shift_id=self.shift_id,
                holder=self.holder,
                stale_after_s=STALE_AFTER_S,
            ),
        )
        if not claimed:
            return "another shift works the node"
        self.max_jobs = max_jobs
        # Work runs in this run's context (Prefect's flow run context: its task runs belong to
        # this run), not in the feed's, which the process's first shift started.
        self._context = contextvars.copy_context()
        feed = WorkFeed.of(self.db)
        feed.join(self)
        try:
            await self._leave.wait()
            if self.running:
                await asyncio.gather(*self.running.values(), return_exceptions=True)
            return self.why
        except asyncio.CancelledError:
            held = list(self.running)
            for task in self.running.values():
                task.cancel()
            await asyncio.gather(*self.running.values(), return_exceptions=True)
            await asyncio.shield(asyncio.to_thread(self._hand_back, held))
            raise
        finally:
            feed.leave(self)

    def _hand_back(self, held: list[str]) -> None:
        """Stopped: the attempts it held go back to the node's next shift, which follows their
        prompts; the node is free for it at once."""
        for attempt_id in held:
            self.db.run(lambda s, a=attempt_id: untake(s, attempt_id=a, lease_s=STALE_AFTER_S))
        self.db.run(lambda s: end_shift(s, node=self.node, shift_id=self.shift_id))

    @property
    def taking(self) -> bool:
        return not self._leave.is_set() and (self.max_jobs is None or self.done < self.max_jobs)

    def offer(self, work: Work) -> None:
        """The feed hands over an attempt this shift took in the store."""
        task = asyncio.get_running_loop().create_task(self._run(work), context=self._context.copy())
        self.running[work.attempt_id] = task
        self.done += 1
        if not self.taking and self.max_jobs is not None:
            self.leave("handing over after its jobs")

    async def _run(self, work: Work) -> None:
        try:
            await self.run_work(work)
        except asyncio.CancelledError:
            # A cancel can land before the attempt's body started (while Prefect sets up its
            # task run), where nothing else would record it: the job ends cancelled here. No
            # prompt was submitted then; once it was, `run_attempt` stopped it (idempotent).
            await asyncio.shield(asyncio.to_thread(self._end_if_cancelled, work))
            raise
        except Exception:  # recorded by the attempt itself; the shift goes on
            logger.debug("attempt %s on %s ended with an error", work.attempt_id, self.node,
                         exc_info=True)  # fmt: skip
        finally:
            self.running.pop(work.attempt_id, None)
            WorkFeed.of(self.db).ring_dispatch()

    def _end_if_cancelled(self, work: Work) -> None:
        info = info_of(work)
        if attempts.cancel_requested(self.db, info):
            attempts.cancelled(self.db, info)

    def cancel(self, attempt_id: str) -> None:
        """The attempt's job asks to be cancelled."""
        task = self.running.get(attempt_id)
        if task is not None:
            task.cancel()

    def leave(self, why: str) -> None:
        """Take no more work; the run ends once what it holds has ended."""
        if not self._leave.is_set():
            self.why = why
            self._leave.set()


class WorkFeed:
    """One per process and job store: new work and cancels for every shift of the process, and
    their heartbeats (see the module docstring)."""

    _feeds: dict[str, WorkFeed] = {}

    def __init__(self, db: Database) -> None:
        self.db = db
        self.shifts: dict[str, NodeShift] = {}
        self._task: asyncio.Task[None] | None = None
        self._bells = bell.bell_dir(str(db.url))
        self._cancelled: set[str] = set()

    @classmethod
    def of(cls, db: Database) -> WorkFeed:
        feed = cls._feeds.get(str(db.url))
        if feed is None:
            feed = cls._feeds[str(db.url)] = cls(db)
        return feed

    def join(self, shift: NodeShift) -> None:
        self.shifts[shift.node] = shift
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())
        self.ring_self()

    def leave(self, shift: NodeShift) -> None:
        if self.shifts.get(shift.node) is shift:
            del self.shifts[shift.node]
        if not self.shifts and self._task is not None:
            self._task.cancel()
            self._task = None

    def ring_self(self) -> None:
        bell.ring(self._bells, bell.WORK)

    def ring_dispatch(self) -> None:
        bell.ring(self._bells, bell.DISPATCH)

    async def _loop(self) -> None:
        doorbell = bell.Bell(self._bells, bell.WORK).open()
        last_beat = 0.0
        try:
            while True:
                try:
                    if time.monotonic() - last_beat >= BEAT_S:
                        last_beat = time.monotonic()
                        await asyncio.to_thread(self._beat)
                    await self._take()
                except asyncio.CancelledError:
                    raise
                except Exception:  # the database restarting, say: try again next round
                    logger.exception("work feed round failed; retrying")
                await doorbell.wait(POLL_S)
        finally:
            doorbell.close()

    def _beat(self) -> None:
        shifts = list(self.shifts.values())

        def write(session: Any) -> list[NodeShift]:
            return [
                s for s in shifts
                if not beat(session, node=s.node, shift_id=s.shift_id, lease_s=attempts.LEASE_S)
            ]  # fmt: skip

        for lost in self.db.run(write):
            lost.leave("another shift took the node over")

    async def _take(self) -> None:
        taking = {s.node: s.shift_id for s in self.shifts.values() if s.taking}
        held = {s.node: s.shift_id for s in self.shifts.values() if s.running}
        wanted = {**held, **taking}
        if not wanted:
            return
        work, cancels = await asyncio.to_thread(
            self.db.run,
            lambda s: take_work(
                s, shifts=wanted, lease_s=attempts.LEASE_S, nodes_taking=set(taking)
            ),
        )
        for item in work:
            shift = self.shifts.get(item.node)
            if shift is not None:
                shift.offer(item)
        for attempt_id in cancels:
            if attempt_id in self._cancelled:
                continue
            for shift in self.shifts.values():
                if attempt_id in shift.running:
                    self._cancelled.add(attempt_id)
                    shift.cancel(attempt_id)
        self._cancelled &= {a for s in self.shifts.values() for a in s.running}
