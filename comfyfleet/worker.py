"""The ComfyFleet Prefect worker type: flow runs execute inside the worker process.

Generation flows are I/O-bound (HTTP and a websocket to a ComfyUI node). The stock process worker
spends ≈2.3 s and ~150 MB booting a Python process per run on these machines; this worker loads
each deployment's flow once and runs every flow run as an asyncio task in its own process with
`prefect.flow_engine.run_flow_async`, so states, task retries, logs and the run page behave as
usual.

One process per host serves every pool of the nodes that host runs: `ComfyFleetWorker` instances
(one per pool, as Prefect's `BaseWorker` polls one pool) share one event loop.

Run it with `python -m comfyfleet.worker --pool comfyui-gpu-1 [--pool …]`, or with
`--pools-matching 'comfyui-*'` to serve every node pool, including those added later.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import functools
import logging
import math
import os
import re
import socket
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio
import anyio.abc
from prefect.client.schemas.objects import FlowRun
from prefect.events.clients import get_events_subscriber
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventRelatedFilter,
)
from prefect.exceptions import MissingFlowError
from prefect.flow_engine import run_flow_async
from prefect.flows import Flow, load_flow_from_entrypoint
from prefect.states import Cancelled
from prefect.utilities.callables import get_call_parameters, parameters_to_args_kwargs
from prefect.workers.base import (
    BaseJobConfiguration,
    BaseVariables,
    BaseWorker,
    BaseWorkerResult,
)

from comfyfleet.settings import REPO_ROOT

logger = logging.getLogger(__name__)

WORKER_TYPE = "comfyfleet"
_CANCELLATION_POLL_S = 10.0  # fallback when the event stream is down


class InProcessJobConfiguration(BaseJobConfiguration):
    """Nothing to configure: the run shares the worker's process and environment."""


class InProcessVariables(BaseVariables):
    """The pool's job variables (the base ones: env, labels, name, command — unused here)."""


class InProcessResult(BaseWorkerResult):
    """Outcome of one in-process flow run (`status_code` 0 unless the engine itself broke)."""


def load_flow(entrypoint: str, *, base: str | Path | None = None) -> Flow[..., Any]:
    """The flow of a deployment entrypoint like `flows/text_to_image.py:text_to_image`, loaded
    with Prefect's own loader (`load_flow_from_entrypoint`), once per process. A relative path is
    taken from `base` (the deployment's `path`; default: the working directory)."""
    path, _, name = entrypoint.rpartition(":")
    file = Path(path) if base is None else Path(base) / path
    return _load_flow(str(file.resolve()), name)


@functools.cache
def _load_flow(path: str, name: str) -> Flow[..., Any]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"no flow file {path}")
    try:
        flow = load_flow_from_entrypoint(f"{path}:{name}", use_placeholder_flow=False)
    except MissingFlowError as exc:
        raise TypeError(f"{path}:{name} is not a Prefect flow ({exc})") from None
    if not flow.isasync:
        raise TypeError(f"{path}:{name} must be an async flow to run in-process")
    return flow


HOME_ENV = "COMFYFLEET_HOME"
"""The checkout flow code runs from (prefect.yaml's pull step); default: this worker's checkout."""
_ENV_PLACEHOLDER = re.compile(r"\{\{\s*\$([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def code_directory(pull_steps: list[dict[str, Any]] | None) -> str | None:
    """The directory a deployment's `set_working_directory` pull step names (prefect.yaml's
    deployments: `{{ $COMFYFLEET_HOME }}`), its `{{ $VAR }}` placeholders filled from the
    environment. Read, not run: running the step would change this whole process's directory."""
    env = {HOME_ENV: str(REPO_ROOT), **os.environ}
    for step in pull_steps or []:
        for name, spec in step.items():
            if name.endswith("set_working_directory") and isinstance(spec, dict):
                return _ENV_PLACEHOLDER.sub(lambda m: env.get(m[1], ""), spec["directory"])
    return None


class ComfyFleetWorker(BaseWorker[InProcessJobConfiguration, InProcessVariables, InProcessResult]):
    """Polls one work pool and runs its flow runs as tasks of this process."""

    type = WORKER_TYPE
    job_configuration = InProcessJobConfiguration
    job_configuration_variables = InProcessVariables
    _description = "Runs ComfyFleet flow runs inside the worker process (no process per run)."

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._flows: dict[UUID, Flow[..., Any]] = {}
        self._running: dict[UUID, asyncio.Task[Any]] = {}
        self._cancel_asked: set[UUID] = set()

    async def setup(self) -> None:
        await super().setup()
        # The server counts a run against the pool's limit only once it is Pending, and the base
        # worker proposes Pending in a background task after the poll returns: a second poll in
        # that gap (an event wake-up racing the loop) gets runs for the same free slot again
        # (seen: 5 running in a pool of 4). A local limiter sized to the pool closes the gap.
        self._limiter = anyio.CapacityLimiter(math.inf)

    async def sync_with_backend(self) -> None:
        """Heartbeat and pool refresh; the local limit follows the pool's concurrency limit."""
        await super().sync_with_backend()
        if self._work_pool is not None and self._limiter is not None:
            limit = self._work_pool.concurrency_limit
            self._limiter.total_tokens = math.inf if limit is None else max(limit, 1)

    async def _flow_for(self, flow_run: FlowRun) -> Flow[..., Any]:
        if flow_run.deployment_id is None:
            raise ValueError(f"flow run {flow_run.id} has no deployment; nothing to load")
        cached = self._flows.get(flow_run.deployment_id)
        if cached is None:
            deployment = await self.client.read_deployment(flow_run.deployment_id)
            if not deployment.entrypoint:
                raise ValueError(f"deployment {deployment.name!r} has no entrypoint")
            cached = self._flows[flow_run.deployment_id] = load_flow(
                deployment.entrypoint,
                base=deployment.path or code_directory(deployment.pull_steps),
            )
        return cached

    async def run(
        self,
        flow_run: FlowRun,
        configuration: InProcessJobConfiguration,
        task_status: anyio.abc.TaskStatus[str] | None = None,
    ) -> InProcessResult:
        flow = await self._flow_for(flow_run)
        args, kwargs = parameters_to_args_kwargs(flow.fn, flow_run.parameters or {})
        parameters = get_call_parameters(flow.fn, args, kwargs)
        identifier = f"{socket.gethostname()}:{os.getpid()}:{flow_run.id}"
        if task_status is not None:
            task_status.started(identifier)
        # Its own asyncio task, cancelled once on request (an anyio cancel scope would cancel it
        # again at every await, so the flow's cleanup could not finish and the engine would report
        # Crashed): the flow interrupts its prompt and ends Cancelled itself.
        running = asyncio.ensure_future(
            run_flow_async(flow, flow_run=flow_run, parameters=parameters, return_type="state")
        )
        self._running[flow_run.id] = running
        try:
            state = await running
        except asyncio.CancelledError:
            if flow_run.id not in self._cancel_asked or _cancelling(asyncio.current_task()):
                raise  # this worker is stopping, not the run
            state = None
        finally:
            self._running.pop(flow_run.id, None)
        if flow_run.id in self._cancel_asked:
            self._cancel_asked.discard(flow_run.id)
            if state is None or not state.is_cancelled():  # it ended before it saw the cancel
                await self._mark_cancelled(flow_run.id)
        return InProcessResult(identifier=identifier, status_code=0)

    async def _cancel_run(self, flow_run_id: UUID) -> None:
        """A run moved to Cancelling: cancel its task here, once (flows interrupt ComfyUI on
        cancel and end Cancelled)."""
        running = self._running.get(flow_run_id)
        if running is None:
            await super()._cancel_run(flow_run_id)
            return
        if flow_run_id in self._cancel_asked:
            return
        logger.info("cancelling in-process flow run %s", flow_run_id)
        self._cancel_asked.add(flow_run_id)
        running.cancel()

    async def _mark_cancelled(self, flow_run_id: UUID) -> None:
        await self.client.set_flow_run_state(
            flow_run_id, Cancelled(message="Cancelled by request; the worker stopped the run."),
            force=True,
        )  # fmt: skip

    async def kill_infrastructure(
        self,
        infrastructure_pid: str,
        configuration: InProcessJobConfiguration,
        grace_seconds: int = 30,
    ) -> None:
        """Pending runs have no infrastructure of their own; cancelling them needs nothing."""


_background: set[asyncio.Task[Any]] = set()


def _cancelling(task: asyncio.Task[Any] | None) -> bool:
    return task is not None and task.cancelling() > 0


def _spawn(coro: Any) -> None:
    """Run a coroutine in the background, keeping a reference until it ends."""
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _follow_events(workers: dict[str, ComfyFleetWorker]) -> None:
    """React to Prefect events at once; polling stays as the fallback.

    - `prefect.flow-run.Scheduled` in one of our pools → poll that pool now (a 1 s poll alone
      adds 0.5 s on average to every dispatch; the event arrives in ~10 ms, measured).
    - `prefect.flow-run.Cancelling` → cancel the run's task if it runs here (its flow then
      interrupts the prompt on the node), or mark a not-yet-started run Cancelled.
    """
    event_filter = EventFilter(
        event=EventNameFilter(name=["prefect.flow-run.Scheduled", "prefect.flow-run.Cancelling"]),
        related=EventRelatedFilter(role=["work-pool"]),
    )
    while True:
        try:
            async with get_events_subscriber(filter=event_filter) as subscriber:
                async for event in subscriber:
                    pools = {r.id for r in event.related if r.role == "work-pool"}
                    for worker in list(workers.values()):
                        pool = worker._work_pool  # set once the worker synced
                        if pool is None or f"prefect.work-pool.{pool.id}" not in pools:
                            continue
                        if event.event.endswith(".Scheduled"):
                            _spawn(worker.get_and_submit_flow_runs())
                        else:
                            run_id = UUID(event.resource.id.removeprefix("prefect.flow-run."))
                            _spawn(worker._cancel_run(run_id))
        except Exception as exc:  # the server restarted or the socket broke: polling covers
            logger.warning("event stream unavailable (%s); retrying in 5 s", exc)
            await asyncio.sleep(5)


async def _poll_cancellations(workers: dict[str, ComfyFleetWorker]) -> None:
    """Fallback for missed events: every few seconds, cancel our running runs now Cancelling."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    while True:
        await asyncio.sleep(_CANCELLATION_POLL_S)
        running = {run_id: w for w in list(workers.values()) for run_id in w._running}
        if not running:
            continue
        try:
            async with get_client() as client:
                runs = await client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        id=FlowRunFilterId(any_=list(running)),
                        state=FlowRunFilterState(
                            type=FlowRunFilterStateType(any_=[StateType.CANCELLING])
                        ),
                    )
                )
        except Exception as exc:
            logger.warning("cancellation poll failed: %s", exc)
            continue
        for run in runs:
            await running[run.id]._cancel_run(run.id)


DISCOVER_EVERY_S = 5.0
RESTART_AFTER_S = 5.0


async def _pool_exists(pool: str) -> bool | None:
    """Whether the pool is on the server (None: the server did not say)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        async with get_client() as client:
            await client.read_work_pool(pool)
    except ObjectNotFound:
        return False
    except Exception:
        return None
    return True


def _first_error(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


async def serve(pools: list[str], *, name: str | None = None, matching: str | None = None) -> None:
    """Run one ComfyFleetWorker per pool in this process until cancelled.

    With `matching` (a glob such as `comfyui-*`), pools of this worker type created later (a node
    added at run time or joined) are served too, within `DISCOVER_EVERY_S`, and a pool that was
    deleted (its node removed) stops being served.
    """
    host = name or socket.gethostname()
    workers: dict[str, ComfyFleetWorker] = {}
    scopes: dict[str, anyio.CancelScope] = {}

    async def run_worker(pool: str) -> None:
        """Serve `pool`; a worker that fails (the server restarting, its pool deleted: Prefect's
        heartbeat then raises) must not take the other pools down with it. The pool's cancel
        scope spans the restarts, so discovery neither serves it twice nor misses a deletion."""
        with anyio.CancelScope() as scopes[pool]:
            try:
                while True:
                    worker = workers[pool] = ComfyFleetWorker(
                        work_pool_name=pool, name=f"{host}-{pool}", create_pool_if_not_found=False
                    )
                    try:
                        await worker.start()
                        return
                    except Exception as exc:
                        if pool not in pools and await _pool_exists(pool) is False:
                            logger.info("work pool %s is gone; no longer serving it", pool)
                            return
                        logger.warning("worker for %s stopped (%s); restarting in %g s",
                                       pool, _first_error(exc), RESTART_AFTER_S)  # fmt: skip
                    finally:
                        workers.pop(pool, None)
                    await asyncio.sleep(RESTART_AFTER_S)
            finally:
                scopes.pop(pool, None)

    async with anyio.create_task_group() as tg:
        for pool in pools:
            tg.start_soon(run_worker, pool)
        tg.start_soon(_follow_events, workers)
        tg.start_soon(_poll_cancellations, workers)
        if matching:
            tg.start_soon(_discover_pools, matching, set(pools), scopes, tg, run_worker)


async def _discover_pools(
    matching: str, fixed: set[str], scopes: dict[str, anyio.CancelScope],
    tg: anyio.abc.TaskGroup, run_worker: Any,
) -> None:  # fmt: skip
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterType

    only_ours = WorkPoolFilter(type=WorkPoolFilterType(any_=[WORKER_TYPE]))
    while True:
        try:
            async with get_client() as client:
                found = {p.name for p in await client.read_work_pools(work_pool_filter=only_ours)}
        except Exception as exc:
            logger.warning("could not list work pools: %s", exc)
        else:
            wanted = {name for name in found if fnmatch.fnmatchcase(name, matching)} | fixed
            for pool in sorted(wanted - scopes.keys()):
                logger.info("serving work pool %s", pool)
                tg.start_soon(run_worker, pool)
            for pool in sorted(scopes.keys() - found - fixed):
                logger.info("work pool %s is gone; no longer serving it", pool)
                scopes[pool].cancel()
        await asyncio.sleep(DISCOVER_EVERY_S)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m comfyfleet.worker", description=__doc__)
    parser.add_argument("--pool", action="append", default=[], help="work pool (repeatable)")
    parser.add_argument(
        "--pools-matching", metavar="GLOB",
        help="also serve every pool of this worker type whose name matches, e.g. 'comfyui-*', "
        "including pools created while it runs",
    )  # fmt: skip
    parser.add_argument("--name", help="worker name prefix (default: host name)")
    args = parser.parse_args(argv)
    if not args.pool and not args.pools_matching:
        parser.error("give at least one --pool or --pools-matching")
    from comfyfleet.logs import configure_logging

    configure_logging()
    asyncio.run(serve(args.pool, name=args.name, matching=args.pools_matching))


if __name__ == "__main__":
    main()
