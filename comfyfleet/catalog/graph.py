"""ComfyUI API-format graphs: loading, static checks, node addressing, output nodes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from comfyfleet.catalog.errors import problem

Graph = dict[str, dict[str, Any]]

OUTPUT_CLASSES = frozenset(
    {
        "SaveImage",
        "PreviewImage",
        "SaveAnimatedWEBP",
        "SaveAnimatedPNG",
        "SaveWEBM",
        "SaveVideo",
        "SaveAudio",
        "SaveAudioMP3",
        "SaveAudioOpus",
        "SaveGLB",
        "SaveLatent",
    }
)
"""Core ComfyUI classes whose results are a job's outputs when a contract names none."""


def is_link(value: Any) -> bool:
    """ComfyUI treats every list input as a link `[source node id, output index]`."""
    return isinstance(value, list)


def load_graph(path: Path, problems: list[str]) -> Graph | None:
    """Read an API-format graph; append problems (and return None) when it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append(problem(path, "graph file not found"))
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(problem(path, f"not valid JSON: {exc}"))
        return None
    if isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data:
        problems.append(
            problem(
                path,
                'this is ComfyUI\'s UI format; export the graph with "Save (API)" instead',
            )
        )
        return None
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        data = data["prompt"]  # a saved /prompt request body
    if not isinstance(data, dict) or not data:
        problems.append(problem(path, "expected an API-format graph: an object of node id -> node"))
        return None
    before = len(problems)
    for node_id, node in data.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            problems.append(problem(path, "has no class_type", node=f"node {node_id}"))
        elif not isinstance(node.get("inputs", {}), dict):
            problems.append(problem(path, "inputs is not an object", node=f"node {node_id}"))
    if len(problems) > before:
        return None
    for node in data.values():
        node.setdefault("inputs", {})
    check_links(path, data, problems)
    return data


def check_links(path: Path | str, graph: Graph, problems: list[str]) -> None:
    """Every link points at a node that exists in the graph, with a sane output index."""
    for node_id, node in graph.items():
        for name, value in node["inputs"].items():
            if not is_link(value):
                continue
            where = f"{describe(graph, node_id)}, input {name!r}"
            if len(value) != 2 or not isinstance(value[1], int) or isinstance(value[1], bool):
                problems.append(
                    problem(path, f"{where}: bad link {value!r}, expected [node id, output index]")
                )
                continue
            source = str(value[0])
            if source not in graph:
                problems.append(
                    problem(
                        path,
                        f"{where}: dangling link to node {source!r}, which is not in the graph",
                    )
                )
            elif value[1] < 0:
                problems.append(problem(path, f"{where}: negative output index in link {value!r}"))


def title(graph: Graph, node_id: str) -> str | None:
    meta = graph[node_id].get("_meta")
    if isinstance(meta, dict) and isinstance(meta.get("title"), str):
        return meta["title"]
    return None


def describe(graph: Graph, node_id: str) -> str:
    """`node 6 'Positive prompt' (CLIPTextEncode)` for messages."""
    node = graph.get(node_id, {})
    name = title(graph, node_id)
    label = f"node {node_id}"
    if name and name != node.get("class_type"):
        label += f" {name!r}"
    return f"{label} ({node.get('class_type', '?')})"


def resolve_node(graph: Graph, ref: str | int) -> str:
    """Find a node by `_meta.title` (preferred where the graph has titles) or by id.

    Raises LookupError with the reason: no such node, or a title several nodes share.
    """
    ref = str(ref)
    titled = [node_id for node_id in graph if title(graph, node_id) == ref]
    if len(titled) == 1:
        if ref in graph and ref != titled[0]:
            raise LookupError(
                f"{ref!r} is both the id of one node and the title of node {titled[0]}; "
                "rename the title"
            )
        return titled[0]
    if len(titled) > 1:
        raise LookupError(f"title {ref!r} is shared by nodes {', '.join(titled)}; use a node id")
    if ref in graph:
        return ref
    titles = sorted({t for n in graph if (t := title(graph, n))})
    hint = f" (titles: {', '.join(repr(t) for t in titles)})" if titles else ""
    raise LookupError(f"no node with title or id {ref!r} in the graph{hint}")


def default_outputs(graph: Graph) -> list[str]:
    """Known save/preview nodes; failing those, the sinks (nodes whose outputs nobody uses)."""
    found = [n for n, node in graph.items() if node["class_type"] in OUTPUT_CLASSES]
    if found:
        return sorted(found, key=_id_key)
    used = {
        str(value[0])
        for node in graph.values()
        for value in node["inputs"].values()
        if is_link(value) and value
    }
    return sorted((n for n in graph if n not in used), key=_id_key)


def _id_key(node_id: str) -> tuple[int, int | str]:
    return (0, int(node_id)) if node_id.isdigit() else (1, node_id)
