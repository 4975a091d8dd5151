"""The dispatcher: queued jobs → attempts on nodes with a free slot (late binding).

Each tick, when the backlog is not empty (one cheap query otherwise), it builds a snapshot of the
fleet (registry + monitor + the live attempts), reads the head of the backlog in the order it is
served (priority level, fair share between owners, age, quotas: comfyfleet.store.dispatch), lets
the router place each job while some node has a free slot, and binds them all in one transaction
(each job claimed exactly once, an attempt created on its node). The node's shift takes the
attempt from there (comfyfleet.jobs.shift); the `WORK` bell wakes the workers on this host at
once.

With the `least_loaded` strategy on nodes of unequal speed, the planner books each job where it
would finish first, holding it for a busy fast node rather than a free slow one
(comfyfleet.fleet.planner). Only nodes whose shift is live get work: a node whose worker is gone
holds nothing new. A node's slots are its capacity: its ComfyUI runs one prompt and holds the
next ones queued, so the GPU never waits for the control plane between two jobs.

Raw graph jobs (workflow `GRAPH_WORKFLOW`) have no catalog entry: the router sees the class types
and model files their graph names, and places them only on nodes whose inventory (read by the
monitor) has them all. Every node with a free slot serves raw graphs (`served_capabilities`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timedelta

from comfyfleet import bell
from comfyfleet.catalog import Catalog, CatalogError
from comfyfleet.catalog.raw import GRAPH_WORKFLOW, class_types
from comfyfleet.catalog.raw import model_files as graph_model_files
from comfyfleet.fleet.monitor import Monitor
from comfyfleet.fleet.planner import Estimates, Work, plan, shape
from comfyfleet.fleet.router import (
    JobView,
    NodeView,
    Router,
    eligible,
    free_slots,
    served_capabilities,
)
from comfyfleet.jobs.shift import STALE_AFTER_S
from comfyfleet.settings import NodeConfig
from comfyfleet.store import (
    Database,
    Queued,
    backlog_head,
    bind_jobs,
    fail_job,
    finished_since,
    has_queued,
    live_work,
    node_shifts,
    utcnow,
)

logger = logging.getLogger(__name__)

POLL_S = 0.5
"""The dispatcher looks at the backlog this often when no bell rang."""
LEARN_S = 1.0
"""Node speeds are re-read from the store at most this often."""


class Dispatcher:
    """Owned by the fleet service's leader; not thread-safe."""

    def __init__(
        self, *, db: Database, router: Router, monitor: Monitor, catalog: Catalog,
    ) -> None:  # fmt: skip
        self.db, self.router, self.monitor, self.catalog = db, router, monitor, catalog
        self.bells = bell.bell_dir(str(db.url))
        self.estimates = Estimates()
        self._learnt_at = 0.0

    def snapshot(self, nodes: Iterable[NodeConfig]) -> tuple[list[NodeView], Work]:
        """The fleet as the router sees it now (a node without a live shift has no free slot),
        and each node's live attempts as `(shape, started)` for the planner."""
        live, shifts = self.db.run(lambda s: (live_work(s), node_shifts(s)), readonly=True)
        now = utcnow()
        work: dict[str, list[tuple[str, datetime | None]]] = {}
        for node_id, workflow, params, started in live:
            work.setdefault(node_id, []).append((shape(workflow, params), started))
        in_flight = {node_id: len(items) for node_id, items in work.items()}
        views = []
        for node in nodes:
            health = self.monitor.nodes.get(node.id)
            shift = shifts.get(node.id)
            working = shift is not None and shift.working(stale_after_s=STALE_AFTER_S, now=now)
            inventory = health.inventory if health else None
            views.append(
                NodeView.from_config(
                    node,
                    in_flight=in_flight.get(node.id, 0),
                    queue_depth=health.queue_depth if health else 0,
                    healthy=bool(health and health.healthy and working),
                    models=health.models if health else None,
                    last_checkpoint=health.last_checkpoint if health else None,
                    class_types=inventory.class_types if inventory else None,
                    model_files=inventory.model_files if inventory else None,
                )
            )
        return views, work

    async def tick(self, nodes: list[NodeConfig]) -> int:
        """Place what the backlog's head can take now; returns how many attempts were made."""
        if not await asyncio.to_thread(self.db.run, has_queued, readonly=True):
            return 0
        views, work = await asyncio.to_thread(self.snapshot, nodes)
        free = {
            v.id: served_capabilities(v.capabilities)
            for v in views if v.healthy and v.enabled and free_slots(v)
        }  # fmt: skip
        if not free:
            return 0
        slots = sum(free_slots(v) for v in views if v.id in free)
        head = await asyncio.to_thread(
            self.db.run,
            lambda s: backlog_head(s, capabilities=free, limit=4 * slots + 8),
            readonly=True,
        )
        pairs: list[tuple[str, str]] = []
        failed: list[tuple[str, str]] = []
        routable: list[tuple[Queued, JobView]] = []
        for queued in head:
            view, error = self._job_view(queued)
            if error is not None:
                failed.append((queued.id, error))
            elif view is not None:
                if view.exclude and not eligible(view, views):
                    # no other node can take it: the one that failed it may try again (up to
                    # `jobs.max_node_faults`), rather than the job waiting for a node that
                    # never comes
                    view = replace(view, exclude=frozenset())
                routable.append((queued, view))
        if self.router.strategy == "least_loaded" and routable:
            await self._learn()
            bookings, left = plan(
                [(q.id, shape(q.workflow, q.params), v) for q, v in routable],
                views,
                self.estimates,
                work=work,
                now=utcnow(),
            )
            for booking in bookings:
                if booking.placed:
                    pairs.append((booking.job_id, booking.node))
                    views = [replace(v, in_flight=v.in_flight + 1)
                             if v.id == booking.node else v for v in views]  # fmt: skip
            routable = [(q, v) for q, v in routable if q.id in set(left)]
        for queued, view in routable:
            if not any(free_slots(v) for v in views if v.healthy and v.enabled):
                break
            node = self.router.choose(view, views)
            if node is None:
                if queued.pinned_node and queued.pinned_node in queued.faulted:
                    reason = self.router.explain(view, views)
                    failed.append((queued.id, f"pinned node failed: {reason}"))
                continue
            pairs.append((queued.id, node.id))
            ckpt = view.checkpoint or node.last_checkpoint
            views = [replace(v, in_flight=v.in_flight + 1, last_checkpoint=ckpt)
                     if v.id == node.id else v for v in views]  # fmt: skip
        for job_id, error in failed:
            await asyncio.to_thread(
                self.db.run, lambda s, j=job_id, e=error: fail_job(s, job_id=j, error=e)
            )
        if not pairs:
            return 0
        made = await asyncio.to_thread(self.db.run, lambda s: bind_jobs(s, pairs))
        if made:
            bell.ring(self.bells, bell.WORK)
            for attempt in made:
                logger.info("job %s → %s (attempt %s)", attempt.job_id, attempt.node, attempt.id)
        return len(made)

    async def _learn(self) -> None:
        """Node speeds per workflow from the attempts completed since the last look."""
        if time.monotonic() - self._learnt_at < LEARN_S:
            return
        self._learnt_at = time.monotonic()
        since = self.estimates.since or utcnow() - timedelta(hours=1)
        rows = await asyncio.to_thread(
            self.db.run, lambda s: finished_since(s, since=since), readonly=True
        )
        self.estimates.learn(
            (node, shape(workflow, params), seconds, at)
            for node, workflow, params, seconds, at in rows
        )

    def _job_view(self, queued: Queued) -> tuple[JobView | None, str | None]:
        """The job as the router sees it; or why it can never run (its workflow is gone)."""
        if queued.workflow == GRAPH_WORKFLOW:
            graph = queued.params.get("graph")
            try:
                types, files = class_types(graph), graph_model_files(graph)  # type: ignore[arg-type]
            except (AttributeError, KeyError, TypeError):
                return None, "not a ComfyUI API graph (params.graph)"
            return JobView(
                id=queued.id, capability=queued.capability, pinned_node=queued.pinned_node,
                exclude=frozenset(queued.faulted), class_types=types, model_files=files,
            ), None  # fmt: skip
        try:
            workflow = self.catalog.get(queued.workflow)
        except CatalogError as exc:
            return None, str(exc)
        models = workflow.models_for(queued.params)
        ckpts = models.get("checkpoints") or []
        return JobView(
            id=queued.id, capability=queued.capability, required_models=models,
            checkpoint=ckpts[0] if len(ckpts) == 1 else None, pinned_node=queued.pinned_node,
            exclude=frozenset(queued.faulted),
        ), None  # fmt: skip
