"""The fleet service: the one control process, and its leader loop (monitor, dispatcher,
attempt recovery, config reload, webhook retries).

Exactly one is active (comfyfleet.fleet.leader: a database lock); a second instance waits as
standby.

Loops:
- health, every `health.probe_interval_s`: re-read the registry (the `ComfyUINode` blocks;
  every `REGISTRY_REFRESH_S`), probe every node (comfyfleet.fleet.monitor), hand the monitor
  the store's facts (attempt faults of the last hour, admin releases from the audit log, the
  checkpoint each node ran last), then act on it:
  - pools follow the nodes: a node out of rotation (circuit open or half-open, quarantined, or
    disabled) has its pool `comfyui-<id>` paused, so the Prefect UI shows it and no worker
    starts its runs; it is resumed once the node is back (after its half-open trial probe);
  - attempts given to a node out of rotation that its shift has not taken move: the attempt
    ends `node_fault` and the job goes back to the backlog for another node;
  - the node-state snapshot is written (comfyfleet.fleet.state: `node_states()` reads it),
    and the nodes' inventories beside it when one changed (`node_inventories()` reads them;
    admins' `node.refresh` requests from the audit log make the monitor read one again).
- dispatcher, every `DISPATCH_POLL_S` and whenever the `DISPATCH` bell rings (comfyfleet.bell):
  queued jobs → attempts on nodes with free slots, taken by each node's shift.
- recovery, every `ATTEMPT_CHECK_S`: a shift run for every node in rotation, attempts whose
  holder is lost or that no shift took, jobs queued too long (comfyfleet.fleet.recovery).
- config, every `CONFIG_CHECK_S` (and at once on SIGHUP): a changed config file is applied
  (comfyfleet.fleet.config_reload).
- webhooks, every `WEBHOOK_CHECK_S`: the job-end messages that are due (comfyfleet.jobs.webhooks).

Run it with `python -m comfyfleet.fleet`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from datetime import timedelta
from typing import Any

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName

from comfyfleet import bell
from comfyfleet.catalog.raw import Inventory
from comfyfleet.fleet.config_reload import CHECK_S as CONFIG_CHECK_S
from comfyfleet.fleet.config_reload import ConfigWatcher
from comfyfleet.fleet.dispatcher import Dispatcher
from comfyfleet.fleet.leader import leadership
from comfyfleet.fleet.monitor import FAULT_WINDOW_S, Monitor
from comfyfleet.fleet.provision import pool_name
from comfyfleet.fleet.recovery import Recovery
from comfyfleet.fleet.registry import move_pending, read_nodes, set_pool_paused
from comfyfleet.fleet.router import Router
from comfyfleet.fleet.state import (
    NodeState,
    inventory_path,
    live_state,
    state_path,
    write_inventory,
    write_snapshot,
)
from comfyfleet.jobs import load_catalog
from comfyfleet.jobs.webhook_targets import WebhookPolicy
from comfyfleet.jobs.webhooks import deliver_due
from comfyfleet.settings import NodeConfig, Settings, get_settings
from comfyfleet.store import (
    Database,
    FleetFacts,
    fleet_facts,
    upgrade,
    utcnow,
)

logger = logging.getLogger(__name__)

WEBHOOK_CHECK_S = 2.0
DISPATCH_POLL_S = 0.5
ATTEMPT_CHECK_S = 1.0
REGISTRY_REFRESH_S = 5.0


class FleetService:
    """The leader loop: one per fleet (see the module docstring)."""

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
        self.inventory_file = inventory_path(self.settings)
        self._inventories_written: dict[str, Inventory] | None = None  # None: not yet
        self.config = ConfigWatcher(self.settings)
        self._last_refresh = 0.0

    # -- registry and health ---------------------------------------------------------------

    async def refresh_registry(self, client: PrefectClient) -> None:
        nodes = await read_nodes(client)
        known = {n.id for n in nodes}
        for node_id in list(self.monitor.nodes):
            if node_id not in known:
                logger.info("node %s left the registry", node_id)
                self.monitor.forget(node_id)
                if getattr(self, "recovery", None) is not None:
                    self.recovery.forget(node_id)
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
        since = utcnow() - timedelta(seconds=FAULT_WINDOW_S)
        self.facts = facts = await asyncio.to_thread(
            self.db.run, lambda s: fleet_facts(s, since=since), readonly=True
        )
        for node in self.nodes:
            self.monitor.record_attempt_faults(
                node.id, facts.faults.get(node.id, ()), released_at=facts.releases.get(node.id)
            )
            self.monitor.nodes[node.id].last_checkpoint = self._checkpoint(node.id)
            if (asked := facts.refreshes.get(node.id)) is not None:
                self.monitor.request_inventory(node.id, at=asked)
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
        return [
            live_state(
                node, health, in_flight=self.facts.in_flight.get(node.id, 0),
                healthy=self.out_of_rotation(node) is None, paused=self.paused.get(node.id),
                now=now,
            )
            for node in self.nodes
            if (health := self.monitor.nodes.get(node.id)) is not None
        ]  # fmt: skip

    def write_snapshot(self) -> None:
        write_snapshot(
            self.state_file, self.states(), probe_interval_s=self.settings.health.probe_interval_s
        )
        self.write_inventory()

    def write_inventory(self) -> bool:
        """Write the inventory file when some node's inventory changed or a node left since
        the last write (the monitor keeps an unchanged inventory's object: `is` is enough);
        a service that has read none yet leaves the last one's file. Returns whether it wrote."""
        current = {
            node.id: (health.inventory, health.inventory_at)
            for node in self.nodes
            if (health := self.monitor.nodes.get(node.id)) is not None
            and health.inventory is not None
        }  # fmt: skip
        last = self._inventories_written
        if last is None and not current:
            return False
        if last is not None and last.keys() == current.keys():
            if all(last[k] is inventory for k, (inventory, _) in current.items()):
                return False
        write_inventory(self.inventory_file, current)
        self._inventories_written = {k: inventory for k, (inventory, _) in current.items()}
        return True

    # -- the service -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        await asyncio.to_thread(upgrade, self.db)
        with leadership(self.db):
            logger.info("fleet service leading (strategy %s; node state in %s)",
                        self.router.strategy, self.state_file)  # fmt: skip
            async with get_client() as client:
                self.dispatcher = dispatcher = Dispatcher(
                    db=self.db, router=self.router, monitor=self.monitor, catalog=self.catalog
                )
                self.recovery = recovery = Recovery(
                    db=self.db, fleet=self, queue_timeout_s=self.settings.jobs.queue_timeout_s
                )
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
                    self._dispatch(dispatcher, stop),
                    self._every(ATTEMPT_CHECK_S, lambda: recovery.check(client), stop),
                    self._every(CONFIG_CHECK_S, lambda: self.reload_config(client), stop),
                    # job-end webhooks, durable: whatever is due (new, or a retry) goes out
                    self._every(WEBHOOK_CHECK_S, self.deliver_webhooks, stop),
                ]  # fmt: skip
                await asyncio.gather(*loops)
        await self.monitor.aclose()

    async def deliver_webhooks(self) -> None:
        """The webhooks that are due, refused at every node of the registry (and the rest of
        the fleet's own endpoints)."""
        urls = [node.url for node in self.nodes]
        policy = await asyncio.to_thread(WebhookPolicy.from_settings, self.settings, node_urls=urls)
        await deliver_due(self.db, policy=policy)

    async def reload_config(self, client: PrefectClient) -> None:
        """Apply a changed config file (comfyfleet.fleet.config_reload); SIGHUP asks for it now."""
        if await self.config.check(client, self.db, router=self.router):
            self._last_refresh = 0.0  # re-read the registry in the next health round

    async def _dispatch(self, dispatcher: Dispatcher, stop: asyncio.Event) -> None:
        """The dispatcher, every `DISPATCH_POLL_S` or at once when the `DISPATCH` bell rings
        (a job submitted, a slot freed on this host)."""
        doorbell = bell.Bell(dispatcher.bells, bell.DISPATCH).open()
        try:
            while not stop.is_set():
                try:
                    while await dispatcher.tick(self.nodes):
                        pass  # placed some: the head may have more for the slots left
                except Exception:
                    logger.exception("dispatcher tick failed; continuing")
                await doorbell.wait(DISPATCH_POLL_S)
        finally:
            doorbell.close()

    async def _every(self, interval: float, work: Any, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await work()
            except Exception:
                logger.exception("fleet service loop %s failed; continuing", work)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)


def main() -> None:
    from comfyfleet.logs import configure_logging

    configure_logging()
    asyncio.run(FleetService().run())
