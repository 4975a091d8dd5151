"""Recovery: node shifts kept running, lost attempts handed on, stranded ones moved, stale jobs
expired (the fleet service runs `Recovery.check` every `ATTEMPT_CHECK_S`).

- **Shifts** (`keep_shifts`): every node in rotation has a shift run (`node-shift/<node>`). A
  node with no shift, or whose shift stopped beating (worker killed, host lost, run cancelled),
  gets a new run, reserved in the store first so only one is asked for. A run still waiting for a
  worker (Scheduled, Pending) is waited for, not doubled, and so is a run Running for less than
  `FIRST_BEAT_S` that has not claimed its node yet (a worker starting a hundred shifts at once
  takes a while to reach each one's first beat); a run that stopped beating while Running is
  marked Crashed in Prefect.
- **Lost attempts**: an attempt whose lease expired lost its holder (a shift, or a pinned run
  started from Prefect). If its node is in rotation and the prompt is still there (running,
  queued, or in its history), the attempt goes back to the node's shift, which follows that
  prompt to its end (`untake`: nothing runs twice, the prompt id is the attempt id). Otherwise the
  attempt ends as a node fault (its prompt, if any, stopped) and the job goes back to the backlog.
- **Stranded attempts**: an attempt no shift took within `STRANDED_S` (its node's shift never
  came) goes back to the backlog for another node.
- Jobs queued longer than `jobs.queue_timeout_s` fail with the reason (no silent fallback: a job
  no node can take waits, then fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any, Protocol

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed

from comfyfleet.comfyui import ComfyUIClient
from comfyfleet.fleet.monitor import Monitor
from comfyfleet.fleet.provision import SHIFT_FLOW
from comfyfleet.jobs.shift import STALE_AFTER_S
from comfyfleet.settings import NodeConfig
from comfyfleet.store import (
    Database,
    end_shift,
    expire_queued_jobs,
    expired_leases,
    move_untaken,
    node_shifts,
    requeue_job_after_node_fault,
    reserve,
    untake,
    untaken_attempts,
    utcnow,
)

logger = logging.getLogger(__name__)

SHIFT_CHECK_S = 1.0
QUEUE_EXPIRY_CHECK_S = 5.0
STRANDED_S = 30.0
"""An attempt no shift took within this long leaves its node."""
HANDBACK_LEASE_S = 30.0
"""Time the node's shift has to take back an attempt handed back to it."""
WAITING = (StateType.SCHEDULED, StateType.PENDING, StateType.PAUSED)
FIRST_BEAT_S = 120.0
"""A shift run Running this long without claiming its node is lost (see the module docstring)."""


class Fleet(Protocol):
    """What recovery needs to know of the fleet (the fleet service is one)."""

    nodes: list[NodeConfig]
    monitor: Monitor

    def out_of_rotation(self, node: NodeConfig) -> str | None: ...


class Recovery:
    """Shifts, lost and stranded attempts, stale jobs (see the module docstring); owned by the
    leader."""

    def __init__(self, *, db: Database, fleet: Fleet, queue_timeout_s: float) -> None:
        self.db, self.fleet = db, fleet
        self.queue_timeout_s = queue_timeout_s
        self._deployments: dict[str, Any] = {}
        self._last_expiry = 0.0
        self._last_shifts = 0.0

    async def check(self, client: PrefectClient) -> None:
        """One round: shifts, expired leases, stranded attempts, jobs queued too long."""
        if time.monotonic() - self._last_shifts >= SHIFT_CHECK_S:
            self._last_shifts = time.monotonic()
            await self.keep_shifts(client)
        expired = await asyncio.to_thread(self.db.run, expired_leases, readonly=True)
        if expired:
            rows = await asyncio.to_thread(self.db.run, node_shifts, readonly=True)
            now = utcnow()
            working = {n for n, r in rows.items() if r.live(stale_after_s=STALE_AFTER_S, now=now)}
        for attempt in expired:
            try:
                await self._orphaned(attempt, why="lease expired", shift=attempt.node in working)
            except Exception:  # one attempt must not hold up the others
                logger.exception("attempt %s: lease expiry not handled; retrying", attempt.id)
        await self.move_stranded()
        if time.monotonic() - self._last_expiry >= QUEUE_EXPIRY_CHECK_S:
            self._last_expiry = time.monotonic()
            await self.expire_queued()

    # -- shifts ------------------------------------------------------------------------------

    async def keep_shifts(self, client: PrefectClient) -> None:
        """A shift run for every node in rotation that has none working it."""
        rows = await asyncio.to_thread(self.db.run, node_shifts, readonly=True)
        now = utcnow()
        for node in self.fleet.nodes:
            if self.fleet.out_of_rotation(node) is not None:
                continue
            row = rows.get(node.id)
            if row is not None and row.live(stale_after_s=STALE_AFTER_S, now=now):
                continue
            try:
                await self._new_shift(client, node.id, row)
            except Exception as exc:  # the node's deployment missing, Prefect down: next round
                logger.warning("node %s: no shift started (%s)", node.id, exc)

    async def _new_shift(self, client: PrefectClient, node: str, row: Any) -> None:
        if row is not None:
            run = None
            with contextlib.suppress(ObjectNotFound, ValueError):
                run = await client.read_flow_run(row.shift_id)
            if run is not None and run.state_type in WAITING:
                return  # waits for a worker: starting another would not help
            if run is not None and _starting(run, row, utcnow()):
                return  # on its way to its first beat
            if run is not None and run.state_type == StateType.RUNNING:
                with contextlib.suppress(Exception):
                    await client.set_flow_run_state(
                        run.id, Crashed(message="the shift stopped beating: worker lost"),
                        force=True,
                    )  # fmt: skip
        dep = await self._deployment(client, node)
        run = await client.create_flow_run_from_deployment(
            dep, parameters={"node": node}, tags=[f"node:{node}", "shift"]
        )
        reserved = await asyncio.to_thread(
            self.db.run,
            lambda s: reserve(s, node=node, shift_id=str(run.id), stale_after_s=STALE_AFTER_S),
        )
        if not reserved:  # a shift started meanwhile
            with contextlib.suppress(Exception):
                await client.delete_flow_run(run.id)
            return
        logger.info("node %s: shift %s started", node, run.name)

    async def _deployment(self, client: PrefectClient, node: str) -> Any:
        dep = self._deployments.get(node)
        if dep is None:
            found = await client.read_deployment_by_name(f"{SHIFT_FLOW.name}/{node}")
            dep = self._deployments[node] = found.id
        return dep

    def forget(self, node: str) -> None:
        """The node was removed or re-added: its deployment id changes."""
        self._deployments.pop(node, None)

    async def end_shift(self, node: str) -> None:
        """The node's shift leaves (the node changed): its next one starts with the new
        settings; what the old one holds runs to its end."""
        rows = await asyncio.to_thread(self.db.run, node_shifts, readonly=True)
        if node in rows:
            shift_id = rows[node].shift_id
            await asyncio.to_thread(
                self.db.run, lambda s: end_shift(s, node=node, shift_id=shift_id)
            )
        self.forget(node)

    # -- attempts ----------------------------------------------------------------------------

    async def move_stranded(self) -> None:
        """Attempts no shift took within `STRANDED_S` go back to the backlog."""
        now = utcnow()
        stranded = [
            a for a in await asyncio.to_thread(self.db.run, untaken_attempts, readonly=True)
            if (now - _aware(a.created_at)).total_seconds() >= STRANDED_S
        ]  # fmt: skip
        for attempt in stranded:
            why = f"{attempt.node}: no shift took the attempt within {STRANDED_S:g} s"
            status = await asyncio.to_thread(
                self.db.run, lambda s, a=attempt, w=why: move_untaken(s, attempt_id=a.id, reason=w)
            )
            if status is not None:
                logger.warning("attempt %s moved off %s; job %s is %s", attempt.id,
                               attempt.node, attempt.job_id, status)  # fmt: skip

    async def expire_queued(self) -> None:
        timeout = self.queue_timeout_s
        expired = await asyncio.to_thread(
            self.db.run, lambda s: expire_queued_jobs(s, older_than_s=timeout)
        )
        for job_id in expired:
            logger.warning("job %s failed: queued for more than %g s with no node for it",
                           job_id, timeout)  # fmt: skip

    async def _orphaned(self, attempt: Any, *, why: str, shift: bool) -> None:
        """The attempt's holder is gone: hand it back to the node's shift if the node is in
        rotation and has its prompt or a live shift (which submits it if it is not there), else
        requeue the job."""
        in_rotation = self._in_rotation(attempt.node)
        health = self.fleet.monitor.nodes.get(attempt.node)
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
        if in_rotation and (on_node or shift):
            handed = await asyncio.to_thread(
                self.db.run,
                lambda s: untake(s, attempt_id=attempt.id, lease_s=HANDBACK_LEASE_S),
            )
            if handed:
                logger.warning("attempt %s on %s: %s; handed back to the node's shift",
                               attempt.id, attempt.node, why)  # fmt: skip
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

    def _in_rotation(self, node_id: str) -> bool:
        node = next((n for n in self.fleet.nodes if n.id == node_id), None)
        return node is not None and self.fleet.out_of_rotation(node) is None


def _starting(run: Any, row: Any, now: datetime) -> bool:
    """A shift run that is Running but has not claimed its node yet, started < FIRST_BEAT_S ago."""
    if run.state_type != StateType.RUNNING or row.holder or run.start_time is None:
        return False
    return (now - _aware(run.start_time)).total_seconds() < FIRST_BEAT_S


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
