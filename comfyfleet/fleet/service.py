"""The fleet service: the one control process (monitor, dispatcher, lease watcher).

Exactly one is active: leadership is a database lock (MySQL/MariaDB `GET_LOCK`; for SQLite, a
file lock beside the database, which is single-host anyway). A second instance waits as standby.

Loops:
- registry: the `ComfyUINode` block documents (the node registry, editable in Prefect's UI),
  re-read every `REGISTRY_REFRESH_S`;
- monitor: probes every node every `health.probe_interval_s` (comfyfleet.fleet.monitor);
- dispatcher: every `DISPATCH_INTERVAL_S`, queued jobs → attempts on free nodes;
- leases: an attempt whose lease expired lost its flow (worker killed, host lost). If its prompt
  is still on the node (running, queued, or finished in its history) the attempt is adopted: a new
  flow run for the same attempt id, whose submit finds the prompt and follows it to the end.
  Otherwise the attempt ends as a node fault and the job goes back to the backlog.

Run it with `python -m comfyfleet.fleet`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect.client.orchestration import PrefectClient, get_client
from prefect.states import Crashed
from sqlalchemy import text

from comfyfleet.comfyui import ComfyUIClient
from comfyfleet.fleet.dispatcher import Dispatcher
from comfyfleet.fleet.monitor import Monitor
from comfyfleet.fleet.router import Router
from comfyfleet.jobs import load_catalog
from comfyfleet.settings import NodeConfig, Settings, get_settings
from comfyfleet.store import (
    Database,
    expired_leases,
    get_job,
    renew_lease,
    requeue_job_after_node_fault,
    upgrade,
)

logger = logging.getLogger(__name__)

DISPATCH_INTERVAL_S = 0.25
LEASE_CHECK_S = 1.0
REGISTRY_REFRESH_S = 5.0
ADOPTION_LEASE_S = 30.0  # time the adopting flow run has to start and take over the lease
NODE_BLOCK_TYPE = "comfyui-node"


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


class FleetService:
    def __init__(self, settings: Settings | None = None, *, db: Database | None = None) -> None:
        self.settings = settings or get_settings()
        self.db = db or Database.from_settings(self.settings)
        self.monitor = Monitor(self.settings.health)
        self.router = Router(self.settings.routing.strategy)
        self.nodes: list[NodeConfig] = []
        self._adoptions: dict[str, int] = {}

    async def refresh_registry(self, client: PrefectClient) -> None:
        docs = await client.read_block_documents_by_type(NODE_BLOCK_TYPE)
        nodes = []
        for doc in docs:
            if doc.name is None or doc.is_anonymous:
                continue
            data = {k: v for k, v in doc.data.items() if k in NodeConfig.model_fields}
            nodes.append(NodeConfig(id=doc.name, **data))
        known = {n.id for n in nodes}
        for node_id in list(self.monitor.nodes):
            if node_id not in known:
                self.monitor.forget(node_id)
        for node in nodes:
            self.monitor.track(node.id, node.url)
        self.nodes = nodes

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        await asyncio.to_thread(upgrade, self.db)
        with leadership(self.db):
            logger.info("fleet service leading (strategy %s)", self.router.strategy)
            async with get_client() as client:
                await self.refresh_registry(client)
                await self.monitor.probe_all()
                self.dispatcher = dispatcher = Dispatcher(
                    db=self.db, client=client, router=self.router, monitor=self.monitor,
                    catalog=load_catalog(self.settings),
                )  # fmt: skip
                loops = [
                    self._every(REGISTRY_REFRESH_S, lambda: self.refresh_registry(client), stop),
                    self._every(
                        self.settings.health.probe_interval_s, self.monitor.probe_all, stop
                    ),
                    self._every(DISPATCH_INTERVAL_S, lambda: dispatcher.tick(self.nodes), stop),
                    self._every(LEASE_CHECK_S, lambda: self.check_leases(client), stop),
                ]
                await asyncio.gather(*loops)
        await self.monitor.aclose()

    async def _every(self, interval: float, work: Any, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await work()
            except Exception:
                logger.exception("fleet service loop %s failed; continuing", work)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)

    async def check_leases(self, client: PrefectClient) -> None:
        for attempt in await asyncio.to_thread(self.db.run, expired_leases, readonly=True):
            await self._orphaned(client, attempt)

    async def _orphaned(self, client: PrefectClient, attempt: Any) -> None:
        health = self.monitor.nodes.get(attempt.node)
        on_node = False
        if health is not None:
            try:
                async with ComfyUIClient(health.url, timeout=3) as comfy:
                    queue = await comfy.queue()
                    on_node = attempt.id in queue or await comfy.history(attempt.id) is not None
            except Exception as exc:
                logger.info("node %s unreachable for orphan %s: %s", attempt.node, attempt.id, exc)
        if attempt.flow_run_id:  # the old run's process is gone: say so in Prefect
            with contextlib.suppress(Exception):
                await client.set_flow_run_state(
                    attempt.flow_run_id, Crashed(message="lease expired: worker lost"), force=True
                )
        if on_node:
            await self._adopt(client, attempt)
            return
        self.monitor.attempt_fault(attempt.node)
        status = await asyncio.to_thread(
            self.db.run,
            lambda s: requeue_job_after_node_fault(
                s, job_id=attempt.job_id, attempt_id=attempt.id,
                reason=f"{attempt.node}: lease expired and the prompt is gone from the node",
            ),
        )  # fmt: skip
        logger.warning("attempt %s lost on %s; job %s is %s", attempt.id, attempt.node,
                       attempt.job_id, status)  # fmt: skip

    async def _adopt(self, client: PrefectClient, attempt: Any) -> None:
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
        logger.warning(
            "attempt %s adopted by flow run %s on %s", attempt.id, run.name, attempt.node
        )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    asyncio.run(FleetService().run())
