"""The node registry: the fleet's node list, and what the CLI and the REST admin do to it.

The `ComfyUINode` block documents (type `comfyui-node`, one per node, named by its id)
are the node list; each node has a work pool `comfyui-<id>` and deployments `<flow>/<id>`. The
functions here edit them for the CLI (`comfyfleet nodes …`) and the REST admin, the same way:

- `set_enabled(…, False)` (disable, also the first half of drain and remove): the block says
  `enabled: false` so the dispatcher sends nothing new, the pool is paused at once so no worker
  picks up a run that has not started yet, and the attempts its shift has not taken move to
  other nodes (`move_pending`). Attempts the shift took finish there.
- `set_enabled(…, True)`: the block says `enabled: true`, and the action is written to the audit
  log as `node.enable`; the fleet service reads that entry as the admin's release of a
  quarantined node (the store is shared by every host, so this works from anywhere). The fleet
  service resumes the pool once the node is healthy.
- `remove_node`: disable, wait until nothing is in flight on the node, then delete its
  deployments, its pool and its block.
- `update_node`: change a registered node in place (block, pool limit, deployments); a host
  that joins again (`comfyfleet node join`, comfyfleet.fleet.join) updates its node this way.

The live state of the nodes is comfyfleet.fleet.state (`node_states`, `merge_state`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from pydantic import ValidationError

from comfyfleet.fleet import provision
from comfyfleet.fleet.generation import GENERATION_FLOWS
from comfyfleet.fleet.node_block import NODE_BLOCK_TYPE, ComfyUINode
from comfyfleet.fleet.provision import pool_name
from comfyfleet.fleet.state import NodeState, merge_state, node_states
from comfyfleet.settings import NodeConfig, NodeSpec, Settings
from comfyfleet.store import (
    Conflict,
    Database,
    NotFound,
    audit,
    end_shift,
    live_attempts_by_node,
    move_untaken,
    node_shifts,
    untaken_attempts,
)

logger = logging.getLogger(__name__)

MOVED = "moved before it started"
"""The end of the reason of an attempt moved to another node before its shift took it."""


# -- registry (Prefect blocks, pools, deployments) ---------------------------------------------


def _config(doc: Any) -> NodeConfig:
    data = {k: v for k, v in doc.data.items() if k in NodeSpec.model_fields}
    return NodeConfig(id=doc.name, **data)


async def read_nodes(client: Any) -> list[NodeConfig]:
    """The registry: one NodeConfig per `ComfyUINode` block document."""
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
    """Register a node: its block, pool, queues and deployments (comfyfleet.fleet.provision,
    with the flows as deployed on the server). It gets attempts once the fleet service has
    probed it successfully."""
    try:
        await _block(client, node.id)
    except NotFound:
        pass
    else:
        raise Conflict(f"node {node.id!r} exists already")
    await ComfyUINode.aregister_type_and_schema()
    await provision.apply_node(client, node)
    await asyncio.to_thread(db.run, lambda s: audit(
        s, actor=actor, action="node.add", target=node.id, detail={"url": node.url}))  # fmt: skip


async def update_node(client: Any, node: NodeConfig, *, db: Database, actor: Any = None) -> None:
    """Change a registered node (NotFound if it is not): its block, its pool's limit, and its
    deployments (those of capabilities it no longer has are deleted)."""
    from prefect.exceptions import ObjectNotFound

    await _block(client, node.id)
    await provision.apply_node(client, node)
    await asyncio.to_thread(stop_shift, db, node.id)
    for gen in GENERATION_FLOWS:
        if gen.serves(node.capabilities):
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


# -- moving attempts no shift took yet -----------------------------------------------------------


async def move_pending(client: Any, db: Database, node_id: str, *, why: str) -> int:
    """Move every attempt given to the node that its shift has not taken yet back to the
    backlog (another node takes the job); how many moved. What a shift took runs there."""

    def move(session: Any) -> list[tuple[Any, str | None]]:
        return [
            (a, move_untaken(session, attempt_id=a.id, reason=f"{node_id}: {why}; {MOVED}"))
            for a in untaken_attempts(session, nodes=[node_id])
        ]

    moved = 0
    for attempt, status in await asyncio.to_thread(db.run, move):
        if status is not None:
            moved += 1
            logger.warning("attempt %s moved off %s (%s): job %s is %s", attempt.id, node_id,
                           why, attempt.job_id, status)  # fmt: skip
    return moved


def stop_shift(db: Database, node_id: str) -> bool:
    """The node's shift leaves it (its settings changed): the fleet service starts a new one,
    which reads them; what the old one holds runs to its end."""

    def stop(session: Any) -> bool:
        row = node_shifts(session).get(node_id)
        return row is not None and end_shift(session, node=node_id, shift_id=row.shift_id)

    return db.run(stop)


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
