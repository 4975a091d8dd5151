"""What the gateway needs from the fleet: a node list with live state, and node administration.

`FleetAdmin` is the seam. The gateway's composition root (`python -m gradio_app`) passes an
implementation backed by the node registry (Prefect `ComfyUINode` blocks, pools, deployments);
`StaticFleet` is the default: the nodes of `comfyfleet.yaml`, kept in memory (add/remove/disable
last until restart), live state from a quick probe of each node (/system_stats, /queue) and the
attempts in the job store. The fleet monitor, when it runs in this process, can publish richer
state (circuit, quarantine, models) through `set_state`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from pydantic import BaseModel, Field, model_validator

from comfyfleet.api.metrics import NodeMetrics
from comfyfleet.comfyui import ComfyUIClient
from comfyfleet.fleet.join import RECORD_KEY, JoinedInfo, joined_record
from comfyfleet.fleet.state import NodeState
from comfyfleet.settings import NodeConfig, Settings
from comfyfleet.store import Database, NotFound, live_attempts_by_node
from comfyfleet.store.errors import Conflict
from comfyfleet.store.types import utcnow


class NodeInfo(NodeState):
    """A node with its configuration and live state (REST `GET /api/v2/admin/nodes`): the
    fleet's `NodeState`, with how the node joined when it joined by itself."""

    joined: JoinedInfo | None = Field(
        default=None, description="Set when the node joined by itself; None: an admin added it."
    )

    @model_validator(mode="before")
    @classmethod
    def _joined_from_metadata(cls, data: Any) -> Any:
        if isinstance(data, BaseModel) and not isinstance(data, NodeInfo):
            data = data.model_dump()  # a NodeState
        if isinstance(data, dict) and data.get("joined") is None:
            metadata = data.get("metadata") or {}
            record = joined_record(metadata) if RECORD_KEY in metadata else None
            if record is not None:
                data = {**data, "joined": record.model_dump(exclude={"key_sha256"})}
        return data


def node_metrics(node: Any) -> NodeMetrics:
    """Prometheus view of a node (a `NodeInfo`, or any object with its fields)."""
    return NodeMetrics(
        node=node.id,
        up=getattr(node, "state", "unknown") in ("up", "draining"),
        in_flight=int(getattr(node, "in_flight", 0) or 0),
        queue_depth=int(getattr(node, "queue_depth", 0) or 0),
        capacity=int(getattr(node, "capacity", 0) or 0),
        circuit=getattr(node, "circuit", "closed") or "closed",
    )


class FleetAdmin(Protocol):
    """Node list and administration. Methods may return `NodeInfo` or any model with its
    fields (e.g. `comfyfleet.fleet.state.NodeState`); the routes serialize them as NodeInfo."""

    async def list_nodes(self) -> list[Any]: ...
    async def get_node(self, node_id: str) -> Any: ...
    async def add_node(self, node: NodeConfig) -> Any: ...
    async def update_node(self, node: NodeConfig) -> Any: ...
    async def remove_node(self, node_id: str) -> None: ...
    async def set_enabled(self, node_id: str, enabled: bool) -> Any: ...
    async def drain(self, node_id: str) -> Any: ...
    def snapshot(self) -> list[Any]: ...


async def probe(url: str, *, timeout_s: float = 2.0) -> tuple[bool, int | None, str | None]:
    """(answers, queue depth, error) of a ComfyUI node, quickly (`ComfyUIClient.probe`)."""
    try:
        async with ComfyUIClient(url, timeout=timeout_s) as client:
            found = await client.probe()
        return True, found.queue_depth, None
    except Exception as exc:  # any failure to answer (bad URL, refused, junk) = down
        return False, None, f"{type(exc).__name__}: {exc}"[:300]


class StaticFleet:
    """The configured nodes, in memory, with live state probed on demand (cached `ttl_s`)."""

    def __init__(self, settings: Settings, db: Database, *, ttl_s: float = 2.0) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self._nodes: dict[str, NodeInfo] = {n.id: self._info(n) for n in settings.nodes}
        self._probed_at = 0.0
        self._lock = asyncio.Lock()

    @staticmethod
    def _info(node: NodeConfig) -> NodeInfo:
        return NodeInfo.model_validate(node.model_dump())

    def set_state(self, node_id: str, **state: Any) -> None:
        """Let a monitor in this process publish state (circuit, models, last_error, …)."""
        node = self._require(node_id)
        self._nodes[node_id] = node.model_copy(update=state)

    def _require(self, node_id: str) -> NodeInfo:
        try:
            return self._nodes[node_id]
        except KeyError:
            raise NotFound(f"no node {node_id!r}") from None

    async def _refresh(self) -> None:
        loop = asyncio.get_running_loop()
        async with self._lock:
            if loop.time() - self._probed_at < self.ttl_s:
                return
            in_flight = await asyncio.to_thread(self.db.run, live_attempts_by_node, readonly=True)
            nodes = list(self._nodes.values())
            results = await asyncio.gather(*(probe(n.url) for n in nodes))
            now = utcnow()
            for node, (ok, depth, error) in zip(nodes, results, strict=True):
                busy = in_flight.get(node.id, 0)
                if not node.enabled:
                    state = "disabled"
                elif node.draining:
                    state = "draining"
                else:
                    state = "up" if ok else "down"
                update: dict[str, Any] = {
                    "state": state,
                    "in_flight": busy,
                    "queue_depth": depth,
                    "load": max(busy, depth or 0) / max(node.capacity, 1),
                }
                if ok:
                    update["last_seen"] = now
                else:
                    update["last_error"] = error
                if node.id in self._nodes:
                    self._nodes[node.id] = self._nodes[node.id].model_copy(update=update)
            self._probed_at = loop.time()

    async def list_nodes(self) -> list[NodeInfo]:
        await self._refresh()
        return sorted(self._nodes.values(), key=lambda n: n.id)

    async def get_node(self, node_id: str) -> NodeInfo:
        self._require(node_id)
        await self._refresh()
        return self._require(node_id)

    async def add_node(self, node: NodeConfig) -> NodeInfo:
        if node.id in self._nodes:
            raise Conflict(f"node {node.id!r} exists already")
        self._nodes[node.id] = self._info(node)
        self._probed_at = 0.0
        return await self.get_node(node.id)

    async def update_node(self, node: NodeConfig) -> NodeInfo:
        known = self._require(node.id)
        self._nodes[node.id] = self._info(node).model_copy(update={"draining": known.draining})
        self._probed_at = 0.0
        return await self.get_node(node.id)

    async def remove_node(self, node_id: str) -> None:
        node = self._require(node_id)
        if node.in_flight:
            raise Conflict(
                f"node {node_id!r} has {node.in_flight} jobs in flight: drain it first, "
                "then remove it when they have finished"
            )
        del self._nodes[node_id]

    async def set_enabled(self, node_id: str, enabled: bool) -> NodeInfo:
        node = self._require(node_id)
        self._nodes[node_id] = node.model_copy(update={"enabled": enabled, "draining": False})
        self._probed_at = 0.0
        return await self.get_node(node_id)

    async def drain(self, node_id: str) -> NodeInfo:
        node = self._require(node_id)
        self._nodes[node_id] = node.model_copy(update={"draining": True})
        self._probed_at = 0.0
        return await self.get_node(node_id)

    def snapshot(self) -> list[NodeInfo]:
        """The last known state, without probing (for /metrics)."""
        return sorted(self._nodes.values(), key=lambda n: n.id)
