"""The fleet service: the one control process (monitor, dispatcher, attempt watcher).

Exactly one is active: leadership is a database lock (MySQL/MariaDB `GET_LOCK`; for SQLite, a
file lock beside the database, which is single-host anyway). A second instance waits as standby.

Loops:
- health, every `health.probe_interval_s`: re-read the registry (the `ComfyUINode` blocks;
  every `REGISTRY_REFRESH_S`), probe every node (comfyfleet.fleet.monitor), hand the monitor
  the store's facts (attempt faults of the last hour, admin releases from the audit log, the
  checkpoint each node ran last), then act on it:
  - pools follow the nodes: a node out of rotation (circuit open or half-open, quarantined, or
    disabled) has its pool `comfyui-<id>` paused, so the Prefect UI shows it and no worker
    starts its runs; it is resumed once the node is back (after its half-open trial probe);
  - attempts of a node out of rotation that have not started move: their Scheduled/Pending flow
    run is cancelled (not forced: a worker that took it first wins), the attempt ends
    `node_fault` and the job goes back to the backlog for another node;
  - the node-state snapshot is written (comfyfleet.fleet.registry: `node_states()` reads it).
- dispatcher, every `DISPATCH_INTERVAL_S`: queued jobs → attempts on free nodes.
- attempts, every `ATTEMPT_CHECK_S`:
  - an attempt whose lease expired lost its flow (worker killed, host lost). If its prompt is
    still on the node (running, queued, or finished in its history) and the node is in rotation,
    the attempt is adopted: a new flow run for the same attempt id, whose submit finds the
    prompt and follows it to the end. Otherwise the attempt ends as a node fault (the prompt,
    if any, is deleted/interrupted on the node) and the job goes back to the backlog;
  - an attempt that has not started is watched through its flow run. A run that ended without
    recording anything (crashed on submission, say), or that a worker took but whose worker
    process is gone (the ComfyFleet worker records `host:pid` as the run's infrastructure pid;
    on another host, or before the pid is set, a run that has not started its prompt within
    `PRESTART_BUDGET_S` counts as stuck), gets a new flow run for the same attempt on the same
    node: safe even if the old run still lives, as both would follow the same prompt id, and
    the old run is told to stop. When the node is out of rotation (or after `MAX_RERUNS`) the
    attempt is handled as lost, as above. A run cancelled in Prefect cancels its job; an
    attempt whose run was never created gets it (same idempotency key);
  - jobs queued longer than `jobs.queue_timeout_s` fail with the reason (no silent fallback:
    a job no node can take waits, then fails).

Run it with `python -m comfyfleet.fleet`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelling, Crashed
from sqlalchemy import and_, func, select, text

from comfyfleet.comfyui import ComfyUIClient
from comfyfleet.config_reload import CHECK_S as CONFIG_CHECK_S
from comfyfleet.config_reload import ConfigWatcher
from comfyfleet.fleet.dispatcher import Dispatcher
from comfyfleet.fleet.monitor import FAULT_WINDOW_S, Monitor
from comfyfleet.fleet.registry import (
    MOVED,
    NodeState,
    move_pending,
    node_status,
    pending_attempts,
    pool_name,
    read_nodes,
    read_runs,
    set_pool_paused,
    state_path,
    utc,
    write_snapshot,
)
from comfyfleet.fleet.router import Router
from comfyfleet.jobs import load_catalog
from comfyfleet.settings import NodeConfig, Settings, get_settings
from comfyfleet.store import (
    Attempt,
    AuditEntry,
    Database,
    Job,
    cancel_job,
    expire_queued_jobs,
    expired_leases,
    get_attempt,
    get_job,
    live_attempts_by_node,
    renew_lease,
    requeue_job_after_node_fault,
    set_attempt_flow_run,
    upgrade,
    utcnow,
)
from comfyfleet.webhooks import deliver_due

logger = logging.getLogger(__name__)

WEBHOOK_CHECK_S = 2.0
DISPATCH_INTERVAL_S = 0.25
ATTEMPT_CHECK_S = 1.0
WATCH_PENDING_S = 2.0
REGISTRY_REFRESH_S = 5.0
QUEUE_EXPIRY_CHECK_S = 5.0
ADOPTION_LEASE_S = 30.0  # time the adopting flow run has to start and take over the lease
PENDING_CHECK_AFTER_S = 3.0  # a fresh attempt's run is left alone this long
PRESTART_BUDGET_S = 30.0  # a run taken by a worker we cannot check must start its prompt by then
MAX_RERUNS = 3  # new flow runs for one attempt before it counts as lost


@contextlib.contextmanager
def leadership(db: Database) -> Iterator[Any]:
    """Hold the leader lock for the life of the block (blocks until acquired)."""
    if db.is_mysql:
        with db.engine.connect() as conn:
            while conn.execute(text("SELECT GET_LOCK('comfyfleet-leader', 5)")).scalar() != 1:
                logger.info("another fleet service leads; standing by")
            try:
                yield conn
            finally:
                conn.execute(text("SELECT RELEASE_LOCK('comfyfleet-leader')"))
        return
    path = Path(str(db.url.database or "comfyfleet")).with_suffix(".leader")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(str(os.getpid()))
        fh.flush()
        yield fh


@dataclass
class FleetFacts:
    """What the job store says about the nodes (one read per health round)."""

    in_flight: dict[str, int] = field(default_factory=dict)
    faults: dict[str, list[float]] = field(default_factory=dict)  # started attempts → node_fault
    releases: dict[str, float] = field(default_factory=dict)  # last `node.enable` audit entry
    last_run: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)


def worker_alive(run: Any) -> bool | None:
    """Whether the process running a flow run still exists: the ComfyFleet worker records
    `host:pid:run` as the run's infrastructure pid. None when it cannot tell (no pid yet, another
    host: then a time budget decides)."""
    host, _, rest = (getattr(run, "infrastructure_pid", None) or "").partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_facts(session: Any) -> FleetFacts:
    since = utcnow() - timedelta(seconds=FAULT_WINDOW_S)
    facts = FleetFacts(in_flight=live_attempts_by_node(session))
    for node, finished in session.execute(
        select(Attempt.node, Attempt.finished_at).where(
            Attempt.status == "node_fault", Attempt.started_at.is_not(None),
            Attempt.finished_at >= since,
        )
    ):  # fmt: skip
        facts.faults.setdefault(node, []).append(finished.timestamp())
    for target, at in session.execute(
        select(AuditEntry.target, func.max(AuditEntry.at))
        .where(AuditEntry.action == "node.enable", AuditEntry.at >= since)
        .group_by(AuditEntry.target)
    ):
        facts.releases[target] = at.timestamp()
    latest = (
        select(Attempt.node, func.max(Attempt.started_at).label("at"))
        .where(Attempt.started_at.is_not(None))
        .group_by(Attempt.node)
        .subquery()
    )
    for node, workflow, params in session.execute(
        select(Attempt.node, Job.workflow, Job.params)
        .join(latest, and_(Attempt.node == latest.c.node, Attempt.started_at == latest.c.at))
        .join(Job, Job.id == Attempt.job_id)
    ):
        facts.last_run[node] = (workflow, params or {})
    return facts


class FleetService:
    def __init__(self, settings: Settings | None = None, *, db: Database | None = None) -> None:
        self.settings = settings or get_settings()
        self.db = db or Database.from_settings(self.settings)
        self.monitor = Monitor(self.settings.health)
        self.router = Router(self.settings.routing.strategy)
        self.catalog = load_catalog(self.settings)
        self.nodes: list[NodeConfig] = []
        self.paused: dict[str, bool] = {}
        self.facts = FleetFacts()
        self.state_file = state_path(self.settings)
        self.config = ConfigWatcher(self.settings)
        self._adoptions: dict[str, int] = {}
        self._reruns: dict[str, int] = {}
        self._last_expiry = 0.0
        self._last_refresh = 0.0
        self._last_watch = 0.0

    # -- registry and health ---------------------------------------------------------------

    async def refresh_registry(self, client: PrefectClient) -> None:
        nodes = await read_nodes(client)
        known = {n.id for n in nodes}
        for node_id in list(self.monitor.nodes):
            if node_id not in known:
                logger.info("node %s left the registry", node_id)
                self.monitor.forget(node_id)
                self.paused.pop(node_id, None)
        for node in nodes:
            if node.id not in self.monitor.nodes:
                logger.info("node %s (%s) joined the registry", node.id, node.url)
            self.monitor.track(node.id, node.url)
        self.nodes = nodes

    async def health_round(self, client: PrefectClient) -> None:
        """One round: probes, store facts, pools, moves, snapshot. The registry is re-read and
        the pools compared with Prefect's view every `REGISTRY_REFRESH_S` (both at once, so a
        pool paused by `nodes disable` is never resumed from a stale registry); in between only
        changes are written."""
        full = time.monotonic() - self._last_refresh >= REGISTRY_REFRESH_S
        if full:
            await self.refresh_registry(client)
            self._last_refresh = time.monotonic()
        await self.monitor.probe_all()
        self.facts = facts = await asyncio.to_thread(self.db.run, read_facts, readonly=True)
        for node in self.nodes:
            self.monitor.record_attempt_faults(
                node.id, facts.faults.get(node.id, ()), released_at=facts.releases.get(node.id)
            )
            self.monitor.nodes[node.id].last_checkpoint = self._checkpoint(node.id)
        await self.sync_pools(client, read=full)
        for node in self.nodes:
            why = self.out_of_rotation(node)
            if why is not None:
                await move_pending(client, self.db, node.id, why=why)
        await asyncio.to_thread(self.write_snapshot)

    def _checkpoint(self, node_id: str) -> str | None:
        last = self.facts.last_run.get(node_id)
        if last is None:
            return None
        try:
            ckpts = self.catalog.get(last[0]).models_for(last[1]).get("checkpoints") or []
        except Exception:  # a workflow removed from the catalog since
            return None
        return ckpts[0] if ckpts else None

    def out_of_rotation(self, node: NodeConfig) -> str | None:
        """Why the node gets no attempts now (None: it is in rotation)."""
        health = self.monitor.nodes.get(node.id)
        if not node.enabled:
            return "node disabled"
        if health is None:
            return "not probed yet"
        if health.quarantined:
            return "node quarantined"
        if health.state != "closed":
            return f"circuit {health.state}: {health.last_error or 'probe failed'}"
        if health.last_seen is None:
            return "never answered a probe"
        return None

    async def sync_pools(self, client: PrefectClient, *, read: bool = True) -> None:
        """Pause the pools of nodes out of rotation, resume the others. `read`: compare with
        the pools as Prefect has them (else with what this service last set)."""
        names = {pool_name(n.id): n for n in self.nodes}
        if not names:
            return
        if read:
            pools = await client.read_work_pools(
                work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=list(names)))
            )
            actual = {names[p.name].id: bool(p.is_paused) for p in pools}
        else:
            actual = {n.id: self.paused[n.id] for n in self.nodes if n.id in self.paused}
        for node in self.nodes:
            if node.id not in actual:
                continue  # no pool (yet)
            why = self.out_of_rotation(node)
            paused = why is not None
            if actual[node.id] != paused:
                if not await set_pool_paused(client, node.id, paused):
                    continue
                logger.warning("pool %s %s (%s)", pool_name(node.id),
                               "paused" if paused else "resumed",
                               why or "node back in rotation")  # fmt: skip
            self.paused[node.id] = paused

    def states(self) -> list[NodeState]:
        """Every node as this service sees it now."""
        now = time.time()
        states = []
        for node in self.nodes:
            health = self.monitor.nodes.get(node.id)
            if health is None:
                continue
            busy = self.facts.in_flight.get(node.id, 0)
            reachable = None if health.probes == 0 and health.failures == 0 else (
                health.failures == 0
            )  # fmt: skip
            status = node_status(enabled=node.enabled, in_flight=busy, answers=reachable)
            states.append(NodeState(
                **node.model_dump(), draining=status == "draining", state=status,
                circuit="quarantined" if health.quarantined else health.state,
                healthy=self.out_of_rotation(node) is None, paused=self.paused.get(node.id),
                reachable=reachable, in_flight=busy,
                queue_depth=health.queue_depth if health.last_seen else None,
                load=max(busy, health.queue_depth) / max(node.capacity, 1),
                models={k: sorted(v) for k, v in health.models.items()} if health.models else None,
                last_checkpoint=health.last_checkpoint, last_error=health.last_error,
                last_seen=utc(health.last_seen), state_since=utc(health.state_since),
                faults_last_hour=len(health.fault_times(now)),
                quarantined_since=utc(health.quarantined_at), updated_at=utc(now),
            ))  # fmt: skip
        return states

    def write_snapshot(self) -> None:
        write_snapshot(
            self.state_file, self.states(), probe_interval_s=self.settings.health.probe_interval_s
        )

    # -- the service -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        await asyncio.to_thread(upgrade, self.db)
        with leadership(self.db):
            logger.info("fleet service leading (strategy %s; node state in %s)",
                        self.router.strategy, self.state_file)  # fmt: skip
            async with get_client() as client:
                self.dispatcher = dispatcher = Dispatcher(
                    db=self.db, client=client, router=self.router, monitor=self.monitor,
                    catalog=self.catalog,
                )  # fmt: skip
                await self.health_round(client)
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    asyncio.get_running_loop().add_signal_handler(
                        signal.SIGHUP, self.config.request
                    )
                loops = [
                    self._every(
                        self.settings.health.probe_interval_s,
                        lambda: self.health_round(client), stop,
                    ),
                    self._every(DISPATCH_INTERVAL_S, lambda: dispatcher.tick(self.nodes), stop),
                    self._every(ATTEMPT_CHECK_S, lambda: self.check_attempts(client), stop),
                    self._every(CONFIG_CHECK_S, lambda: self.reload_config(client), stop),
                    # job-end webhooks, durable: whatever is due (new, or a retry) goes out
                    self._every(WEBHOOK_CHECK_S, lambda: deliver_due(self.db), stop),
                ]  # fmt: skip
                await asyncio.gather(*loops)
        await self.monitor.aclose()

    async def reload_config(self, client: PrefectClient) -> None:
        """Apply a changed config file (comfyfleet.config_reload); SIGHUP asks for it now."""
        if await self.config.check(client, self.db, router=self.router):
            self._last_refresh = 0.0  # re-read the registry in the next health round

    async def _every(self, interval: float, work: Any, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await work()
            except Exception:
                logger.exception("fleet service loop %s failed; continuing", work)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)

    # -- attempts ----------------------------------------------------------------------------

    async def check_attempts(self, client: PrefectClient) -> None:
        for attempt in await asyncio.to_thread(self.db.run, expired_leases, readonly=True):
            try:
                await self._orphaned(client, attempt, why="lease expired")
            except Exception:  # one attempt must not hold up the others
                logger.exception("attempt %s: lease expiry not handled; retrying", attempt.id)
        if time.monotonic() - self._last_watch >= WATCH_PENDING_S:
            self._last_watch = time.monotonic()
            await self.watch_pending(client)
        if time.monotonic() - self._last_expiry >= QUEUE_EXPIRY_CHECK_S:
            self._last_expiry = time.monotonic()
            await self.expire_queued()

    async def expire_queued(self) -> None:
        timeout = self.settings.jobs.queue_timeout_s
        expired = await asyncio.to_thread(
            self.db.run, lambda s: expire_queued_jobs(s, older_than_s=timeout)
        )
        for job_id in expired:
            logger.warning("job %s failed: queued for more than %g s with no node for it",
                           job_id, timeout)  # fmt: skip

    async def watch_pending(self, client: PrefectClient) -> None:
        """Attempts that have not started: is their flow run still on its way?"""
        now = utcnow()
        attempts = [
            a for a in await asyncio.to_thread(self.db.run, pending_attempts, readonly=True)
            if (now - a.created_at).total_seconds() >= PENDING_CHECK_AFTER_S
        ]  # fmt: skip
        if not attempts:
            return
        runs = await read_runs(client, [a.flow_run_id for a in attempts if a.flow_run_id])
        for attempt in attempts:
            try:
                await self._watch(client, attempt, runs.get(str(attempt.flow_run_id)), now)
            except Exception:  # one attempt must not hold up the others
                logger.exception("attempt %s: not-started check failed; retrying", attempt.id)

    async def _watch(self, client: PrefectClient, attempt: Any, run: Any, now: Any) -> None:
        """One attempt that has not started, and its flow run (None: not found)."""
        age = (now - attempt.created_at).total_seconds()
        if not attempt.flow_run_id:
            if age >= PRESTART_BUDGET_S:
                await self._recreate_run(attempt)
            return
        kind = run.state_type if run is not None else None
        if kind in (StateType.SCHEDULED, StateType.PAUSED):
            return  # waits for a worker (moved by the health round if the node is out)
        if kind in (StateType.PENDING, StateType.RUNNING):
            alive = worker_alive(run)
            since = run.start_time or (run.state.timestamp if run.state else None)
            taken = (now - since).total_seconds() if since is not None else age
            if alive or (alive is None and taken < PRESTART_BUDGET_S):
                return
            if not await asyncio.to_thread(self._still_pending, attempt.id):
                return
            why = (
                "its worker process is gone" if alive is False
                else f"its flow run did not start the prompt within {PRESTART_BUDGET_S:g} s"
            )  # fmt: skip
            await self._restart_attempt(client, attempt, why=why, worker_dead=alive is False)
            return
        if not await asyncio.to_thread(self._still_pending, attempt.id):
            return  # moved or started meanwhile (the health round runs beside this check)
        message = (run.state.message or "") if run is not None and run.state else ""
        if kind in (StateType.CANCELLED, StateType.CANCELLING):
            if message.startswith(MOVED):  # moved, but the requeue did not happen: do it now
                await asyncio.to_thread(
                    self.db.run,
                    lambda s: requeue_job_after_node_fault(
                        s, job_id=attempt.job_id, attempt_id=attempt.id,
                        reason=f"{attempt.node}: {message}",
                    ),
                )  # fmt: skip
            else:
                await self._cancelled_in_prefect(attempt)
            return
        ended = kind.value.lower() if kind else "missing"
        await self._restart_attempt(
            client, attempt, why=f"its flow run ended {ended}", worker_dead=True
        )

    def _still_pending(self, attempt_id: str) -> bool:
        attempt = self.db.run(lambda s: get_attempt(s, attempt_id=attempt_id), readonly=True)
        return attempt is not None and attempt.status == "pending"

    async def _restart_attempt(
        self, client: PrefectClient, attempt: Any, *, why: str, worker_dead: bool
    ) -> None:
        """An attempt whose flow run is gone (or stuck) before it started the prompt: a new
        flow run for the same attempt on the same node (safe even if the old one still lives:
        same prompt id, and the old run is told to stop); after `MAX_RERUNS`, or when the node
        is out of rotation, the attempt is handled as lost."""
        node = next((n for n in self.nodes if n.id == attempt.node), None)
        n = self._reruns.get(attempt.id, 0)
        if node is None or self.out_of_rotation(node) is not None or n >= MAX_RERUNS:
            await self._orphaned(client, attempt, why=why, run_alive=not worker_dead)
            return
        job = await asyncio.to_thread(
            self.db.run, lambda s: get_job(s, job_id=attempt.job_id), readonly=True
        )
        if job is None or job.status not in ("dispatched", "running"):
            return
        self._reruns[attempt.id] = n + 1
        try:
            run = await self.dispatcher.start_flow_run(
                job, node=attempt.node, attempt_id=attempt.id,
                idempotency_key=f"{attempt.id}-rerun-{n + 1}", tags=["rerun"],
            )  # fmt: skip
        except Exception as exc:  # the node's deployment is gone, say: handle it as lost
            logger.warning("attempt %s: no new flow run on %s (%s)", attempt.id, attempt.node, exc)
            await self._orphaned(client, attempt, why=why, run_alive=not worker_dead)
            return
        await self._stop_run(client, attempt.flow_run_id, why=why, alive=not worker_dead)
        await asyncio.to_thread(
            self.db.run,
            lambda s: set_attempt_flow_run(s, attempt_id=attempt.id, flow_run_id=str(run.id)),
        )
        logger.warning("attempt %s on %s: %s; new flow run %s for it", attempt.id, attempt.node,
                       why, run.name)  # fmt: skip

    async def _stop_run(self, client: PrefectClient, run_id: Any, *, why: str, alive: bool) -> None:
        """Say in Prefect that a run is lost (Crashed), or make a live one stop (Cancelling)."""
        if not run_id:
            return
        state = (
            Cancelling(message=f"stopped by the fleet service: {why}")
            if alive else Crashed(message=f"{why}: worker lost")
        )  # fmt: skip
        with contextlib.suppress(Exception):
            await client.set_flow_run_state(run_id, state, force=True)

    async def _cancelled_in_prefect(self, attempt: Any) -> None:
        done = await asyncio.to_thread(
            self.db.run,
            lambda s: cancel_job(s, job_id=attempt.job_id, reason="flow run cancelled in Prefect"),
        )
        if done:
            logger.warning(
                "job %s cancelled: its flow run was cancelled in Prefect", attempt.job_id
            )

    async def _recreate_run(self, attempt: Any) -> None:
        """The dispatcher recorded the attempt but its flow run was never set (creation failed):
        create it (the same idempotency key returns the run if it did exist)."""
        job = await asyncio.to_thread(
            self.db.run, lambda s: get_job(s, job_id=attempt.job_id), readonly=True
        )
        if job is None or job.status not in ("dispatched", "running"):
            return
        run = await self.dispatcher.start_flow_run(
            job, node=attempt.node, attempt_id=attempt.id, idempotency_key=attempt.id,
            tags=["recovered"],
        )  # fmt: skip
        await asyncio.to_thread(
            self.db.run,
            lambda s: set_attempt_flow_run(s, attempt_id=attempt.id, flow_run_id=str(run.id)),
        )
        logger.warning("attempt %s had no flow run; now %s", attempt.id, run.name)

    async def _orphaned(
        self, client: PrefectClient, attempt: Any, *, why: str, run_alive: bool = False
    ) -> None:
        """The attempt's flow is gone: adopt its prompt if the node still runs it, else requeue."""
        node = next((n for n in self.nodes if n.id == attempt.node), None)
        in_rotation = node is not None and self.out_of_rotation(node) is None
        health = self.monitor.nodes.get(attempt.node)
        on_node = False
        if health is not None:
            try:
                async with ComfyUIClient(health.url, timeout=3) as comfy:
                    queue = await comfy.queue()
                    on_node = attempt.id in queue or await comfy.history(attempt.id) is not None
                    if on_node and not in_rotation:
                        await comfy.delete_pending([attempt.id])
                        await comfy.interrupt(attempt.id)
            except Exception as exc:
                logger.info("node %s unreachable for orphan %s: %s", attempt.node, attempt.id, exc)
        await self._stop_run(client, attempt.flow_run_id, why=why, alive=run_alive)
        if on_node and in_rotation:
            await self._adopt(attempt)
            return
        reason = f"{attempt.node}: {why}" + (
            "; the node is out of rotation" if on_node else "; the prompt is not on the node"
        )
        status = await asyncio.to_thread(
            self.db.run,
            lambda s: requeue_job_after_node_fault(
                s, job_id=attempt.job_id, attempt_id=attempt.id, reason=reason
            ),
        )
        logger.warning("attempt %s lost on %s (%s); job %s is %s", attempt.id, attempt.node, why,
                       attempt.job_id, status)  # fmt: skip

    async def _adopt(self, attempt: Any) -> None:
        """A new flow run for the same attempt: it finds the prompt on the node and follows it."""
        n = self._adoptions[attempt.id] = self._adoptions.get(attempt.id, 0) + 1
        await asyncio.to_thread(
            self.db.run,
            lambda s: renew_lease(s, attempt_id=attempt.id, lease_s=ADOPTION_LEASE_S),
        )
        job = await asyncio.to_thread(
            self.db.run, lambda s: get_job(s, job_id=attempt.job_id), readonly=True
        )
        run = await self.dispatcher.start_flow_run(
            job, node=attempt.node, attempt_id=attempt.id,
            idempotency_key=f"{attempt.id}-adopt-{n}", tags=["adopted"],
        )  # fmt: skip
        await asyncio.to_thread(
            self.db.run,
            lambda s: set_attempt_flow_run(s, attempt_id=attempt.id, flow_run_id=str(run.id)),
        )
        logger.warning(
            "attempt %s adopted by flow run %s on %s", attempt.id, run.name, attempt.node
        )


def main() -> None:
    from comfyfleet.logs import configure_logging

    configure_logging()
    asyncio.run(FleetService().run())
