"""The dispatcher: queued jobs → attempts on nodes with a free slot (late binding).

A flow run cannot be moved to another pool once created (measured), so the node is chosen as late
as possible: each tick builds a snapshot of the fleet (registry + monitor + the attempt table),
and while some node has a free slot it claims the next job of the backlog exactly once (priority,
fair share between owners, age: comfyfleet.store.dispatch), lets the router pick a node, records
the attempt and creates the flow run `<flow>/<node>` with the attempt id as idempotency key. The
pool's concurrency limit (= capacity) stays the server-side interlock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from prefect.client.orchestration import PrefectClient
from prefect.exceptions import ObjectNotFound

from comfyfleet.catalog import Catalog, CatalogError
from comfyfleet.fleet.monitor import Monitor
from comfyfleet.fleet.router import JobView, NodeView, Router, free_slots
from comfyfleet.settings import NodeConfig
from comfyfleet.store import (
    Database,
    claim_next_job,
    create_attempt,
    fail_job,
    list_attempts,
    live_attempts_by_node,
    requeue_job_after_node_fault,
    set_attempt_flow_run,
)
from comfyfleet.store._sql import guarded_job_update
from comfyfleet.store.models import Job, User, priority_name

logger = logging.getLogger(__name__)

# capability → the typed flow that runs it; anything else runs in the generic flow
FLOW_FOR_CAPABILITY = {
    "text_to_image": "text-to-image",
    "text_to_image_sdxl": "text-to-image-sdxl",
    "image_to_video": "image-to-video",
}
GENERIC_FLOW = "comfy-workflow"


@dataclass(frozen=True)
class _Deployment:
    id: Any
    params: frozenset[str]


class Dispatcher:
    """Owned by the fleet service's leader; not thread-safe."""

    def __init__(
        self, *, db: Database, client: PrefectClient, router: Router, monitor: Monitor,
        catalog: Catalog,
    ) -> None:  # fmt: skip
        self.db, self.client, self.router = db, client, router
        self.monitor, self.catalog = monitor, catalog
        self._deployments: dict[tuple[str, str], _Deployment] = {}

    def views(self, nodes: Iterable[NodeConfig]) -> list[NodeView]:
        """The fleet as the router sees it now."""
        in_flight = self.db.run(live_attempts_by_node, readonly=True)
        views = []
        for node in nodes:
            health = self.monitor.nodes.get(node.id)
            views.append(
                NodeView.from_config(
                    node,
                    in_flight=in_flight.get(node.id, 0),
                    queue_depth=health.queue_depth if health else 0,
                    healthy=health.healthy if health else False,
                    models=health.models if health else None,
                    last_checkpoint=health.last_checkpoint if health else None,
                )
            )
        return views

    async def tick(self, nodes: list[NodeConfig]) -> int:
        """Dispatch while nodes have free slots; returns how many attempts were created."""
        views = await asyncio.to_thread(self.views, nodes)
        created = 0
        while True:
            free = {
                v.id: v.capabilities for v in views if v.healthy and v.enabled and free_slots(v)
            }
            if not free:
                return created
            job = await asyncio.to_thread(
                self.db.run, lambda s, free=free: claim_next_job(s, capabilities_free=free)
            )
            if job is None:
                return created
            routed = await self._route(job, views)
            if routed is None:
                return created  # put back; the next tick (or another node) takes it
            node, checkpoint, owner = routed
            if await self._start_attempt(job, node, owner=owner):
                created += 1
                ckpt = checkpoint or node.last_checkpoint  # what the node holds once it runs
                views = [replace(v, in_flight=v.in_flight + 1, last_checkpoint=ckpt)
                         if v.id == node.id else v for v in views]  # fmt: skip

    async def _route(
        self, job: Job, views: list[NodeView]
    ) -> tuple[NodeView, str | None, str] | None:
        """The node for the job, the checkpoint the job loads there and the job's owner's name
        (None: no node now)."""
        try:
            workflow = self.catalog.get(job.workflow)
        except CatalogError as exc:
            error = str(exc)
            await asyncio.to_thread(self.db.run, lambda s: fail_job(s, job_id=job.id, error=error))
            return None
        faulted, owner = await asyncio.to_thread(
            self.db.run, lambda s: _facts(s, job), readonly=True
        )
        models = workflow.models_for(job.params)
        ckpts = models.get("checkpoints") or []
        view = JobView(
            id=job.id, capability=job.capability, required_models=models,
            checkpoint=ckpts[0] if len(ckpts) == 1 else None, pinned_node=job.pinned_node,
            exclude=frozenset(faulted),
        )  # fmt: skip
        node = self.router.choose(view, views)
        if node is None:
            reason = self.router.explain(view, views)
            if job.pinned_node and job.pinned_node in faulted:
                await asyncio.to_thread(
                    self.db.run,
                    lambda s: fail_job(s, job_id=job.id, error=f"pinned node failed: {reason}"),
                )
                return None
            logger.debug("job %s waits: %s", job.id, reason)
            await asyncio.to_thread(self.db.run, lambda s: _unclaim(s, job.id))
            return None
        return node, view.checkpoint, owner  # the router picks among eligible nodes only

    async def _deployment(self, flow: str, node: str) -> _Deployment:
        key = (flow, node)
        cached = self._deployments.get(key)
        if cached is None:
            dep = await self.client.read_deployment_by_name(f"{flow}/{node}")
            props = (dep.parameter_openapi_schema or {}).get("properties", {})
            cached = self._deployments[key] = _Deployment(dep.id, frozenset(props))
        return cached

    async def _start_attempt(self, job: Job, node: NodeView, *, owner: str | None = None) -> bool:
        attempt = await asyncio.to_thread(
            self.db.run, lambda s: create_attempt(s, job_id=job.id, node=node.id)
        )
        owner = owner or str(job.owner_id)
        try:
            run = await self.start_flow_run(
                job, node=node.id, attempt_id=attempt.id, idempotency_key=attempt.id,
                tags=[f"user:{owner}", f"priority:{priority_name(job.priority)}"],
            )  # fmt: skip
        except Exception as exc:  # the node's deployments are missing or Prefect refused
            reason = f"{node.id}: could not create its flow run: {exc}"
            logger.warning("job %s: %s", job.id, reason)
            await asyncio.to_thread(
                self.db.run,
                lambda s: requeue_job_after_node_fault(
                    s, job_id=job.id, attempt_id=attempt.id, reason=reason
                ),
            )
            return False
        await asyncio.to_thread(
            self.db.run,
            lambda s: set_attempt_flow_run(s, attempt_id=attempt.id, flow_run_id=str(run.id)),
        )
        logger.info("job %s → %s (attempt %s, run %s)", job.id, node.id, attempt.id, run.name)
        return True

    async def start_flow_run(
        self, job: Job, *, node: str, attempt_id: str, idempotency_key: str, tags: list[str]
    ) -> Any:
        """Create the flow run of one attempt in the node's pool (typed flow, else generic)."""
        flow = FLOW_FOR_CAPABILITY.get(job.capability, GENERIC_FLOW)
        try:
            dep = await self._deployment(flow, node)
        except ObjectNotFound:
            flow = GENERIC_FLOW
            dep = await self._deployment(flow, node)
        parameters: dict[str, Any] = {
            "node": node, "job_id": job.id, "attempt_id": attempt_id, "workflow": job.workflow,
        }  # fmt: skip
        if flow == GENERIC_FLOW:
            parameters["params"] = job.params
        else:
            parameters.update({k: v for k, v in job.params.items() if k in dep.params})
        tags = [f"job:{job.id}", f"node:{node}", f"workflow:{job.workflow}", *tags]
        try:
            return await self.client.create_flow_run_from_deployment(
                dep.id, parameters=parameters, tags=tags, idempotency_key=idempotency_key
            )
        except ObjectNotFound:  # the node was removed and added again: its deployments are new
            self._deployments.pop((flow, node), None)
            dep = await self._deployment(flow, node)
            return await self.client.create_flow_run_from_deployment(
                dep.id, parameters=parameters, tags=tags, idempotency_key=idempotency_key
            )


def _facts(session: Any, job: Job) -> tuple[set[str], str]:
    """Nodes where the job already had a node fault, and its owner's name."""
    faulted = {a.node for a in list_attempts(session, job_id=job.id) if a.status == "node_fault"}
    owner = session.get(User, job.owner_id)
    return faulted, owner.username if owner is not None else str(job.owner_id)


def _unclaim(session: Any, job_id: str) -> bool:
    """A claimed job no node can take now goes back to the backlog."""
    return guarded_job_update(session, job_id, ("dispatched",), status="queued")
