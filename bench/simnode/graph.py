"""Which nodes of a prompt run and in which order, and their cache keys: ComfyUI's
`ExecutionList` (a topological dissolve from the output nodes that skips the inputs of cached
nodes and prefers nodes close to an output) and the classic cache's input signatures, without
the lazy, async and subgraph machinery no simulated class uses."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

Graph = Mapping[str, Mapping[str, Any]]


def is_link(value: Any) -> bool:
    """``[node_id, output_index]``, as ComfyUI's `is_link` reads it."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int | float)
    )


def links(node: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``(input name, link)`` for each linked input of a node."""
    return [(name, value) for name, value in node.get("inputs", {}).items() if is_link(value)]


def execution_order(
    graph: Graph,
    outputs: Iterable[str],
    *,
    is_output: Callable[[str], bool],
    cached: Collection[str] = (),
) -> list[str]:
    """The node ids in the order ComfyUI runs them for ``outputs``.

    A cached node's own inputs are not visited (a cached output node is still listed: ComfyUI
    replays its `executed` message). Raises ValueError on a dependency cycle."""
    pending: dict[str, None] = {}
    blocked_by_count: dict[str, int] = {}
    blocking: dict[str, dict[str, None]] = {}

    def add(start: str) -> None:
        stack, found = [start], []
        while stack:
            node_id = stack.pop()
            if node_id in pending:
                continue
            pending[node_id] = None
            blocked_by_count[node_id] = 0
            blocking[node_id] = {}
            for _, (source, _socket) in links(graph[node_id]):
                if source not in cached:
                    stack.append(source)
                found.append((source, node_id))
        for source, target in found:
            if source not in cached and target not in blocking[source]:
                blocking[source][target] = None
                blocked_by_count[target] += 1

    for output in outputs:
        add(output)
    order: list[str] = []
    while pending:
        ready = [node_id for node_id in pending if blocked_by_count[node_id] == 0]
        if not ready:
            raise ValueError(f"dependency cycle among {sorted(pending)}")
        node_id = _pick(ready, blocking, is_output)
        order.append(node_id)
        del pending[node_id]
        for target in blocking.pop(node_id):
            blocked_by_count[target] -= 1
    return order


def _pick(
    ready: list[str], blocking: Mapping[str, Mapping[str, None]], is_output: Callable[[str], bool]
) -> str:
    """ComfyUI's `ux_friendly_pick_node`: an output first, then a node feeding an output, then a
    node two steps from one, else the first ready node."""
    for node_id in ready:
        if is_output(node_id):
            return node_id
    for node_id in ready:
        if any(is_output(target) for target in blocking[node_id]):
            return node_id
    for node_id in ready:
        for target in blocking[node_id]:
            if any(is_output(after) for after in blocking[target]):
                return node_id
    return ready[0]


def cache_keys(graph: Graph, *, salt: Callable[[str], Any] = lambda _: None) -> dict[str, str]:
    """A key per node that is equal for nodes computing the same thing: the class, the literal
    inputs and the keys of the linked nodes (never the node id), plus ``salt(node_id)`` (what a
    class's `IS_CHANGED` adds, e.g. the hash of the image a `LoadImage` reads)."""
    keys: dict[str, str] = {}

    def key(node_id: str) -> str:
        if node_id in keys:
            return keys[node_id]
        node = graph[node_id]
        parts: list[Any] = [node.get("class_type"), salt(node_id)]
        for name in sorted(node.get("inputs", {})):
            value = node["inputs"][name]
            if is_link(value) and value[0] in graph:
                parts.append([name, "link", key(value[0]), value[1]])
            else:
                parts.append([name, value])
        digest = hashlib.sha256(json.dumps(parts, default=repr).encode()).hexdigest()
        keys[node_id] = digest
        return digest

    for node_id in graph:
        key(node_id)
    return keys


__all__ = ["Graph", "cache_keys", "execution_order", "is_link", "links"]
