"""The node registry and the node-state snapshot: what every process may ask about the fleet.

Registry. The `ComfyUINode` block documents (type `comfyui-node`, one per node, named by its id)
are the node list; each node has a work pool `comfyui-<id>` and deployments `<flow>/<id>`. The
functions here edit them for the CLI (`comfyfleet nodes …`) and the REST admin, the same way:

- `set_enabled(…, False)` (disable, also the first half of drain and remove): the block says
  `enabled: false` so the dispatcher sends nothing new, the pool is paused at once so no worker
  picks up a run that has not started yet, and those runs move to other nodes
  (`move_pending`). Attempts already running on the node finish there.
- `set_enabled(…, True)`: the block says `enabled: true`, and the action is written to the audit
  log as `node.enable`; the fleet service reads that entry as the admin's release of a
  quarantined node (the store is shared by every host, so this works from anywhere). The fleet
  service resumes the pool once the node is healthy.
- `remove_node`: disable, wait until nothing is in flight on the node, then delete its
  deployments, its pool and its block.
- `update_node`: change a registered node in place (block, pool limit, deployments); a host
  that joins again (`comfyfleet node join`, comfyfleet.join) updates its node this way.

Node state. The fleet service (the one process that probes) writes a snapshot of every node
after each probe round to one JSON file, `state_path(settings)`: beside the SQLite database
(`var/fleet-nodes.json` by default), or for other databases beside the output store's folder
(`store.outputs_dir`'s parent: `var/` by default), so two fleets on one MySQL server but with
their own stores never share it. It is replaced atomically (write + rename), so readers never
see half a file.
`node_states()` reads it; that is the function the REST API, the UI, the metrics and
`comfyfleet nodes list` call. A snapshot older than `STALE_AFTER_S` (or 3 probe intervals)
means no fleet service is running: every node then reads `state: unknown`, `stale: true`.
The file is local to the host of the fleet service; a gateway on another host sees no state
(`unknown`) until the snapshot moves into the job store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.engine import make_url

from comfyfleet.settings import NodeConfig, Settings, get_settings
from comfyfleet.store import (
    Attempt,
    Conflict,
    Database,
    NotFound,
    audit,
    live_attempts_by_node,
    requeue_job_after_node_fault,
)

logger = logging.getLogger(__name__)

NODE_BLOCK_TYPE = "comfyui-node"
POOL_PREFIX = "comfyui-"
STATE_FILE = "fleet-nodes.json"
STALE_AFTER_S = 15.0
MOVED = "moved before it started"
"""Start of the message of a flow run cancelled to move its attempt to another node."""

NodeStatus = Literal["up", "down", "draining", "disabled", "unknown"]
Circuit = Literal["closed", "open", "half_open", "quarantined"]


def pool_name(node_id: str) -> str:
    """The node's work pool (`gpu-1` → `comfyui-gpu-1`)."""
    return f"{POOL_PREFIX}{node_id}"


class NodeState(BaseModel):
    """One node: its registry entry and its live state (field names as in REST `NodeInfo`)."""

    id: str
    url: str
    capacity: int = 2
    capabilities: list[str] = Field(default_factory=list)
    weight: float = 1.0
    priority: int = 0
    enabled: bool = True
    draining: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict)
    state: NodeStatus = "unknown"
    circuit: Circuit = "closed"
    healthy: bool = False
    paused: bool | None = None
    reachable: bool | None = None  # the last probe succeeded (None: not probed)
    in_flight: int = 0
    queue_depth: int | None = None
    load: float = 0.0
    models: dict[str, list[str]] | None = None
    last_checkpoint: str | None = None
    last_error: str | None = None
    last_seen: datetime | None = None
    state_since: datetime | None = None
    faults_last_hour: int = 0
    quarantined_since: datetime | None = None
    updated_at: datetime | None = None
    stale: bool = False


def utc(ts: float | None) -> datetime | None:
    """Epoch seconds → aware UTC datetime (None stays None)."""
    return datetime.fromtimestamp(ts, UTC) if ts is not None else None


def node_status(*, enabled: bool, in_flight: int, answers: bool | None) -> NodeStatus:
    """`disabled` (nothing in flight) / `draining` (disabled, jobs still finishing) / `up` /
    `down`; `unknown` when nobody probes the node (`answers` None)."""
    if not enabled:
        return "draining" if in_flight else "disabled"
    if answers is None:
        return "unknown"
    return "up" if answers else "down"


def state_path(settings: Settings | None = None) -> Path:
    """Where the fleet service writes the node-state snapshot."""
    settings = settings or get_settings()
    url = make_url(settings.database.url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return Path(str(url.database)).with_name(STATE_FILE)
    return Path(settings.store.outputs_dir).parent / STATE_FILE


def write_snapshot(path: Path, nodes: Iterable[NodeState], *, probe_interval_s: float) -> None:
    """Replace the snapshot file atomically."""
    doc = {
        "written_at": time.time(),
        "pid": os.getpid(),
        "probe_interval_s": probe_interval_s,
        "nodes": [n.model_dump(mode="json") for n in nodes],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def node_states(
    settings: Settings | None = None, *, path: Path | None = None, now: float | None = None
) -> list[NodeState]:
    """Every node as the fleet service last saw it (sorted by id; [] before its first round).

    Synchronous and cheap (one small file): fine to call on every REST request or scrape.
    """
    path = path or state_path(settings)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    now = time.time() if now is None else now
    interval = float(doc.get("probe_interval_s") or 0)
    stale = now - float(doc.get("written_at") or 0) > max(STALE_AFTER_S, 3 * interval)
    nodes = []
    for raw in doc.get("nodes", []):
        node = NodeState.model_validate(raw)
        if stale:
            node = node.model_copy(update={
                "stale": True, "healthy": False,
                "state": node_status(enabled=node.enabled, in_flight=node.in_flight, answers=None),
            })  # fmt: skip
        nodes.append(node)
    return sorted(nodes, key=lambda n: n.id)


def merge_state(config: NodeConfig, known: NodeState | None, *, in_flight: int) -> NodeState:
    """A node's registry entry (fresh) over its last known live state."""
    live = known.model_dump() if known is not None else {}
    live.update(config.model_dump(), in_flight=in_flight)
    state = NodeState.model_validate(live)
    answers = None if known is None or known.stale else known.reachable
    status = node_status(enabled=config.enabled, in_flight=in_flight, answers=answers)
    busy = max(in_flight, state.queue_depth or 0)
    return state.model_copy(update={
        "state": status, "draining": status == "draining",
        "load": busy / max(config.capacity, 1),
        "healthy": state.healthy and config.enabled and status == "up",
    })  # fmt: skip


# -- registry (Prefect blocks, pools, deployments) ---------------------------------------------


def _config(doc: Any) -> NodeConfig:
    data = {k: v for k, v in doc.data.items() if k in NodeConfig.model_fields}
    return NodeConfig(id=doc.name, **data)


async def read_nodes(client: Any) -> list[NodeConfig]:
    """The registry: one NodeConfig per `ComfyUINode` block document."""
    from pydantic import ValidationError

    nodes = []
    for doc in await client.read_block_documents_by_type(NODE_BLOCK_TYPE):
        if not doc.name or doc.is_anonymous:
            continue
        try:
            nodes.append(_config(doc))
        except ValidationError as exc:  # edited by hand in the Prefect UI, say: skip it
            logger.warning("block comfyui-node/%s is not a valid node: %s", doc.name, exc)
    return sorted(nodes, key=lambda n: n.id)


async def _block(client: Any, node_id: str) -> Any:
    from prefect.exceptions import ObjectNotFound

    try:
        return await client.read_block_document_by_name(node_id, block_type_slug=NODE_BLOCK_TYPE)
    except ObjectNotFound:
        raise NotFound(f"no node {node_id!r}") from None


async def get_node(client: Any, node_id: str) -> NodeConfig:
    return _config(await _block(client, node_id))


async def add_node(client: Any, node: NodeConfig, *, db: Database, actor: Any = None) -> None:
    """Register a node: its block, pool, queues and deployments (deployments/). It gets
    attempts once the fleet service has probed it successfully."""
    from blocks import ComfyUINode  # the Prefect layer, loaded only when a node is added
    from deployments import apply_node

    try:
        await _block(client, node.id)
    except NotFound:
        pass
    else:
        raise Conflict(f"node {node.id!r} exists already")
    await ComfyUINode.aregister_type_and_schema()
    await apply_node(client, node)
    await asyncio.to_thread(db.run, lambda s: audit(
        s, actor=actor, action="node.add", target=node.id, detail={"url": node.url}))  # fmt: skip


async def update_node(client: Any, node: NodeConfig, *, db: Database, actor: Any = None) -> None:
    """Change a registered node (NotFound if it is not): its block, its pool's limit, and its
    deployments (those of capabilities it no longer has are deleted)."""
    from prefect.exceptions import ObjectNotFound

    from deployments import GENERATION_FLOWS, apply_node

    await _block(client, node.id)
    await apply_node(client, node)
    for gen in GENERATION_FLOWS:
        if gen.capability == "*" or gen.capability in node.capabilities:
            continue
        with contextlib.suppress(ObjectNotFound):
            dep = await client.read_deployment_by_name(f"{gen.name}/{node.id}")
            await client.delete_deployment(dep.id)
    await asyncio.to_thread(
        db.run,
        lambda s: audit(
            s, actor=actor, action="node.update", target=node.id, detail={"url": node.url}
        ),
    )


async def set_pool_paused(client: Any, node_id: str, paused: bool) -> bool:
    """Pause or resume the node's pool (False: no such pool)."""
    from prefect.client.schemas.actions import WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    try:
        await client.update_work_pool(pool_name(node_id), WorkPoolUpdate(is_paused=paused))
    except ObjectNotFound:
        return False
    return True


async def set_enabled(
    client: Any, node_id: str, enabled: bool, *, db: Database, actor: Any = None
) -> int:
    """Enable or disable a node (see the module docstring); returns how many not-yet-started
    attempts moved to other nodes (disable)."""
    from prefect.client.schemas.actions import BlockDocumentUpdate

    doc = await _block(client, node_id)
    await client.update_block_document(doc.id, BlockDocumentUpdate(data={"enabled": enabled}))
    action = "node.enable" if enabled else "node.disable"
    await asyncio.to_thread(db.run, lambda s: audit(s, actor=actor, action=action, target=node_id))
    if enabled:
        return 0
    await set_pool_paused(client, node_id, True)
    return await move_pending(client, db, node_id, why="node disabled")


def in_flight(db: Database, node_id: str) -> int:
    """Attempts dispatched or running on the node (store)."""
    return db.run(live_attempts_by_node, readonly=True).get(node_id, 0)


async def drain(
    client: Any, node_id: str, *, db: Database, actor: Any = None,
    wait_s: float = 0.0, poll_s: float = 1.0,
) -> int:  # fmt: skip
    """Disable the node and wait up to `wait_s` for its in-flight attempts to finish; returns
    how many are still in flight."""
    await set_enabled(client, node_id, False, db=db, actor=actor)
    deadline = time.monotonic() + wait_s
    while True:
        left = await asyncio.to_thread(in_flight, db, node_id)
        if not left or time.monotonic() >= deadline:
            return left
        await move_pending(client, db, node_id, why="node draining")
        await asyncio.sleep(poll_s)


async def delete_node(client: Any, node_id: str) -> None:
    """Delete the node's deployments, pool and block (nothing is checked: see remove_node)."""
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName
    from prefect.exceptions import ObjectNotFound

    pool = pool_name(node_id)
    deployments = await client.read_deployments(
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool]))
    )
    for dep in deployments:
        with contextlib.suppress(ObjectNotFound):
            await client.delete_deployment(dep.id)
    with contextlib.suppress(ObjectNotFound):
        await client.delete_work_pool(pool)
    with contextlib.suppress(NotFound, ObjectNotFound):
        await client.delete_block_document((await _block(client, node_id)).id)


async def remove_node(
    client: Any, node_id: str, *, db: Database, actor: Any = None,
    wait_s: float = 0.0, poll_s: float = 1.0,
) -> None:  # fmt: skip
    """Drain, then delete. Conflict (nothing deleted, the node stays disabled) if attempts are
    still in flight after `wait_s`."""
    left = await drain(client, node_id, db=db, actor=actor, wait_s=wait_s, poll_s=poll_s)
    if left:
        raise Conflict(
            f"node {node_id!r} is draining: {left} job(s) still in flight; "
            "remove it again once they have finished"
        )
    await delete_node(client, node_id)
    await asyncio.to_thread(
        db.run, lambda s: audit(s, actor=actor, action="node.remove", target=node_id)
    )
    logger.info("node %s removed (pool, deployments, block)", node_id)


# -- moving attempts that have not started -----------------------------------------------------


def pending_attempts(session: Any, *, nodes: Sequence[str] | None = None) -> list[Attempt]:
    """Live attempts that have not started on their node (no lease yet), oldest first."""
    stmt = select(Attempt).where(Attempt.status == "pending", Attempt.lease_expires_at.is_(None))
    if nodes is not None:
        stmt = stmt.where(Attempt.node.in_(list(nodes)))
    return list(session.scalars(stmt.order_by(Attempt.created_at)))


async def read_runs(client: Any, ids: Iterable[str]) -> dict[str, Any]:
    """Flow runs by id (str), in one call."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    wanted = [UUID(i) for i in {*ids} if i]
    if not wanted:
        return {}
    runs = await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=wanted)), limit=len(wanted)
    )
    return {str(r.id): r for r in runs}


async def move_attempt(client: Any, db: Database, attempt: Attempt, run: Any, why: str) -> bool:
    """Cancel the attempt's not-yet-started flow run (no force: a worker that took it first
    wins) and send its job back to the backlog; False if the run had started."""
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.states import Cancelled

    if run is None or run.state_type not in (StateType.SCHEDULED, StateType.PENDING):
        return False
    result = await client.set_flow_run_state(run.id, Cancelled(message=f"{MOVED}: {why}"))
    if result.status != SetStateStatus.ACCEPT:
        return False
    status = await asyncio.to_thread(
        db.run,
        lambda s: requeue_job_after_node_fault(
            s, job_id=attempt.job_id, attempt_id=attempt.id,
            reason=f"{attempt.node}: {why}; {MOVED}",
        ),
    )  # fmt: skip
    logger.warning("attempt %s moved off %s (%s): job %s is %s", attempt.id, attempt.node, why,
                   attempt.job_id, status)  # fmt: skip
    return True


async def move_pending(client: Any, db: Database, node_id: str, *, why: str) -> int:
    """Move every not-yet-started attempt off the node; how many moved."""
    attempts = await asyncio.to_thread(
        db.run, lambda s: pending_attempts(s, nodes=[node_id]), readonly=True
    )
    attempts = [a for a in attempts if a.flow_run_id]
    if not attempts:
        return 0
    runs = await read_runs(client, [a.flow_run_id for a in attempts])
    moved = 0
    for attempt in attempts:
        if await move_attempt(client, db, attempt, runs.get(str(attempt.flow_run_id)), why):
            moved += 1
    return moved


# -- the gateway's seam ------------------------------------------------------------------------


class RegistryFleet:
    """Node administration and state for the gateway, over the registry (Prefect), the job store
    and the snapshot: the methods of `comfyfleet.api.fleet.FleetAdmin`, returning `NodeState`
    (its fields are those of the REST `NodeInfo`)."""

    def __init__(self, settings: Settings, db: Database, *, actor: Any = None) -> None:
        self.settings, self.db, self.actor = settings, db, actor

    async def list_nodes(self) -> list[NodeState]:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            configs = await read_nodes(client)
        return await asyncio.to_thread(self._merged, configs)

    def _merged(self, configs: list[NodeConfig]) -> list[NodeState]:
        known = {n.id: n for n in node_states(self.settings)}
        busy = self.db.run(live_attempts_by_node, readonly=True)
        return [merge_state(c, known.get(c.id), in_flight=busy.get(c.id, 0)) for c in configs]

    async def get_node(self, node_id: str) -> NodeState:
        for node in await self.list_nodes():
            if node.id == node_id:
                return node
        raise NotFound(f"no node {node_id!r}")

    async def add_node(self, node: NodeConfig) -> NodeState:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            await add_node(client, node, db=self.db, actor=self.actor)
        return await self.get_node(node.id)

    async def update_node(self, node: NodeConfig) -> NodeState:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            await update_node(client, node, db=self.db, actor=self.actor)
        return await self.get_node(node.id)

    async def remove_node(self, node_id: str) -> None:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            await remove_node(client, node_id, db=self.db, actor=self.actor)

    async def set_enabled(self, node_id: str, enabled: bool) -> NodeState:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            await set_enabled(client, node_id, enabled, db=self.db, actor=self.actor)
        return await self.get_node(node_id)

    async def drain(self, node_id: str) -> NodeState:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            await drain(client, node_id, db=self.db, actor=self.actor)
        return await self.get_node(node_id)

    def snapshot(self) -> list[NodeState]:
        """The last snapshot, without calling Prefect (for /metrics)."""
        return node_states(self.settings)
