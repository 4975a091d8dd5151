"""Raw ComfyUI graphs: any graph a ComfyUI client sends ("Save (API)" format), run as a job.

A raw graph has no contract: it runs as given. What the fleet needs to know about it is read
from the graph itself:

- its **class types** (`class_types`) and the **model files** it names (`model_files`: string
  inputs ending in a model file suffix, in any folder): a node runs it only if it has every one
  (routing by capability, comfyfleet.fleet.router);
- the **input files** it names (`input_refs`: `comfyfleet/<sha256>.<ext>`, the names the input
  store gives uploads; `normalize_inputs` also takes the bare `<sha256>.<ext>` a client may send);
- whether it stays inside the fleet's **ceilings** (`check_ceilings`: the same `limits.max_*`
  over the same input names as every workflow contract) and avoids **denied class types**
  (`graphs.denied_class_types`).

Every refusal is a `GraphError` whose `body` is ComfyUI's own 400 answer
(`{"error": {type, message, details, extra_info}, "node_errors": {…}}`), so a ComfyUI client
shows it as it would show its own server's.

A raw graph job is a job of the workflow `GRAPH_WORKFLOW` and capability `GRAPH_CAPABILITY`; its
parameters are `{"graph": …}`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from comfyfleet.catalog.errors import CatalogError
from comfyfleet.catalog.params import CEILING_INPUTS

GRAPH_WORKFLOW = "graph"
"""The workflow id of raw graph jobs (no catalog workflow has it)."""
GRAPH_CAPABILITY = "graph"
"""The capability of raw graph jobs: any node may take one that has its class types and models."""
MAX_GRAPH_NODES = 2000

MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".gguf", ".onnx")
INPUT_PREFIX = "comfyfleet/"
_STORED_NAME = re.compile(r"^(?:comfyfleet/)?([0-9a-f]{64}\.[a-z0-9]{2,5})$")
_SCALE_INPUTS = ("scale_by",)


class GraphError(CatalogError):
    """A graph the fleet will not queue; `body` is ComfyUI's 400 answer."""

    def __init__(
        self, error_type: str, message: str, *, details: str = "",
        node_errors: Mapping[str, Any] | None = None, extra_info: Mapping[str, Any] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(f"{message}{': ' + details if details else ''}")
        self.error_type = error_type
        self.message = message
        self.details = details
        self.node_errors = dict(node_errors or {})
        self.extra_info = dict(extra_info or {})

    @property
    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "type": self.error_type, "message": self.message, "details": self.details,
                "extra_info": self.extra_info,
            },
            "node_errors": self.node_errors,
        }  # fmt: skip


def node_error(
    graph: Mapping[str, Any], node_id: str, error_type: str, message: str, details: str = "",
    **extra: Any,
) -> dict[str, Any]:  # fmt: skip
    """One `node_errors` entry, as ComfyUI writes it."""
    return {
        "errors": [{"type": error_type, "message": message, "details": details,
                    "extra_info": extra}],
        "dependent_outputs": [],
        "class_type": graph[node_id].get("class_type"),
    }  # fmt: skip


def _is_link(value: Any) -> bool:
    return (
        isinstance(value, list) and len(value) == 2 and isinstance(value[0], str | int)
        and isinstance(value[1], int) and not isinstance(value[1], bool)
    )  # fmt: skip


def parse_graph(value: Any) -> dict[str, dict[str, Any]]:
    """The graph, checked for shape: `{node id: {"class_type": str, "inputs": {…}}}` with every
    link `[node id, output index]` pointing at a node of the graph. GraphError otherwise."""
    if not isinstance(value, Mapping) or not value:
        raise GraphError(
            "invalid_prompt", "Invalid prompt",
            details="the prompt must be a non-empty object of nodes (ComfyUI's API format: "
            "Save (API) in ComfyUI)",
        )  # fmt: skip
    if len(value) > MAX_GRAPH_NODES:
        raise GraphError(
            "invalid_prompt", "Invalid prompt",
            details=f"{len(value)} nodes; at most {MAX_GRAPH_NODES}",
        )  # fmt: skip
    graph: dict[str, dict[str, Any]] = {}
    for node_id, node in value.items():
        node_id = str(node_id)
        if not isinstance(node, Mapping) or not isinstance(node.get("class_type"), str):
            raise GraphError(
                "invalid_prompt",
                "Cannot execute because a node is missing the class_type property.",
                details=f"Node ID '#{node_id}'",
            )
        inputs = node.get("inputs", {})
        if not isinstance(inputs, Mapping):
            raise GraphError(
                "invalid_prompt", "Invalid prompt",
                details=f"Node ID '#{node_id}': inputs must be an object",
            )  # fmt: skip
        graph[node_id] = {**node, "inputs": dict(inputs)}
    for node_id, node in graph.items():
        for name, item in node["inputs"].items():
            if _is_link(item) and str(item[0]) not in graph:
                raise GraphError(
                    "prompt_outputs_failed_validation", "Prompt outputs failed validation",
                    node_errors={node_id: node_error(
                        graph, node_id, "exception_during_validation",
                        f"input {name!r} links to node {item[0]!r}, which is not in the prompt",
                        name, input_name=name, received_value=item,
                    )},
                )  # fmt: skip
    return graph


def _strings(graph: Mapping[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(node id, input name, value) of every literal string input."""
    for node_id, node in graph.items():
        for name, value in node.get("inputs", {}).items():
            if isinstance(value, str):
                yield node_id, name, value


def class_types(graph: Mapping[str, Any]) -> frozenset[str]:
    return frozenset(node["class_type"] for node in graph.values())


def is_model_file(value: str) -> bool:
    return value.lower().endswith(MODEL_SUFFIXES)


def model_files(graph: Mapping[str, Any]) -> frozenset[str]:
    """The model files the graph names (checkpoints, LoRAs, VAEs…: any folder)."""
    return frozenset(value for _, _, value in _strings(graph) if is_model_file(value))


def is_input_ref(value: str) -> bool:
    """Names a stored input: `comfyfleet/<sha256>.<ext>` (not any value under `comfyfleet/`,
    such as a SaveImage `filename_prefix`)."""
    return value.startswith(INPUT_PREFIX) and _STORED_NAME.match(value) is not None


def input_refs(graph: Mapping[str, Any]) -> list[str]:
    """The stored input files the graph names (`comfyfleet/<sha256>.<ext>`), once each."""
    return sorted({value for _, _, value in _strings(graph) if is_input_ref(value)})


def normalize_inputs(graph: dict[str, Any], stored: Callable[[str], bool]) -> dict[str, Any]:
    """A bare stored name (`<sha256>.<ext>`, as /upload/image answers) becomes its ref
    (`comfyfleet/<sha256>.<ext>`) where `stored(name)` says the input store has it."""
    out = {}
    for node_id, node in graph.items():
        inputs = dict(node["inputs"])
        for name, value in inputs.items():
            if isinstance(value, str) and (m := _STORED_NAME.match(value)) and stored(m[1]):
                inputs[name] = INPUT_PREFIX + m[1]
        out[node_id] = {**node, "inputs": inputs}
    return out


def check_denied(graph: Mapping[str, Any], denied: Iterable[str]) -> None:
    """No node of a class type the fleet denies (`graphs.denied_class_types`)."""
    denied = set(denied)
    bad = {nid: node for nid, node in graph.items() if node["class_type"] in denied}
    if bad:
        names = ", ".join(sorted({n["class_type"] for n in bad.values()}))
        raise GraphError(
            "denied_class_type",
            f"This fleet does not run {names} (graphs.denied_class_types)",
            details=", ".join(f"Node ID '#{nid}'" for nid in sorted(bad)),
            node_errors={nid: node_error(
                graph, nid, "denied_class_type",
                f"class type {n['class_type']} is denied on this fleet",
            ) for nid, n in bad.items()},
        )  # fmt: skip


def check_ceilings(graph: Mapping[str, Any], ceilings: Mapping[str, int | None]) -> None:
    """Every input the fleet bounds (`limits.max_width`, `max_steps`…, by the same input names
    as every workflow contract) within its ceiling, and `width x height` within
    `limits.max_output_pixels`."""
    errors: dict[str, Any] = {}
    for node_id, node in graph.items():
        inputs = node["inputs"]
        for kind, names in CEILING_INPUTS.items():
            ceiling = ceilings.get(kind)
            for name in (kind, *names):
                value = inputs.get(name)
                if ceiling is None or not _number(value) or value <= ceiling:
                    continue
                errors[node_id] = node_error(
                    graph, node_id, "value_bigger_than_max",
                    f"Value {value} bigger than max of {ceiling}", name,
                    input_name=name, received_value=value, ceiling=f"limits.max_{kind}",
                )  # fmt: skip
        limit = ceilings.get("output_pixels")
        width, height = inputs.get("width"), inputs.get("height")
        if limit is not None and _number(width) and _number(height) and width * height > limit:
            errors[node_id] = node_error(
                graph, node_id, "value_bigger_than_max",
                f"{width}x{height} is {width * height} pixels; at most {limit} "
                "(limits.max_output_pixels)", "width",
                input_name="width", received_value=width,
            )  # fmt: skip
    if errors:
        raise GraphError(
            "prompt_outputs_failed_validation", "Prompt outputs failed validation",
            details="; ".join(
                f"#{nid} {e['errors'][0]['details']}: {e['errors'][0]['message']}"
                for nid, e in errors.items()
            ),
            node_errors=errors,
        )  # fmt: skip


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class Inventory:
    """What one node has installed: class types (`/object_info`), which of them are output
    nodes, and its model files (`/models/<folder>`, every folder)."""

    class_types: frozenset[str] = frozenset()
    output_class_types: frozenset[str] = frozenset()
    models: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @cached_property
    def model_files(self) -> frozenset[str]:
        """Every file in every folder (computed once: the dispatcher asks on every tick)."""
        return frozenset().union(*self.models.values()) if self.models else frozenset()

    def missing(self, graph: Mapping[str, Any]) -> tuple[list[str], list[str]]:
        """(class types, model files) the graph needs that this node lacks."""
        files = self.model_files
        return (
            sorted(class_types(graph) - self.class_types),
            sorted(model_files(graph) - files),
        )


def check_runnable(graph: Mapping[str, Any], nodes: Mapping[str, Inventory]) -> str:
    """Some node in `nodes` (the healthy ones whose inventory is known) has every class type
    and model file of the graph, and the graph has an output node: returns that node's id.
    GraphError otherwise, naming what no node has."""
    if not nodes:
        raise GraphError(
            "no_capable_node", "No healthy node of the fleet can run this prompt now",
            details="no healthy node has reported what it has installed",
        )  # fmt: skip
    best: tuple[int, str, list[str], list[str]] | None = None
    for node_id, inventory in sorted(nodes.items()):
        types, files = inventory.missing(graph)
        if not types and not files:
            outputs = inventory.output_class_types
            if outputs and not any(n["class_type"] in outputs for n in graph.values()):
                raise GraphError("prompt_no_outputs", "Prompt has no outputs")
            return node_id
        if best is None or len(types) + len(files) < best[0]:
            best = (len(types) + len(files), node_id, types, files)
    everywhere_types = set.intersection(*(set(inv.missing(graph)[0]) for inv in nodes.values()))
    everywhere_files = set.intersection(*(set(inv.missing(graph)[1]) for inv in nodes.values()))
    errors: dict[str, Any] = {}
    for node_id, node in graph.items():
        if node["class_type"] in everywhere_types:
            errors[node_id] = node_error(
                graph, node_id, "missing_node_type",
                f"Node {node['class_type']} does not exist on any healthy node of the fleet",
                f"Node ID '#{node_id}'", class_type=node["class_type"],
            )  # fmt: skip
        for name, value in node["inputs"].items():
            if isinstance(value, str) and value in everywhere_files:
                errors[node_id] = node_error(
                    graph, node_id, "value_not_in_list",
                    "Value not in list",
                    f"{name}: {value!r}: no healthy node of the fleet has this model",
                    input_name=name, received_value=value,
                )  # fmt: skip
    if everywhere_types:
        names = ", ".join(sorted(everywhere_types))
        first = next(nid for nid, n in graph.items() if n["class_type"] in everywhere_types)
        raise GraphError(
            "missing_node_type",
            f"Cannot execute because node {names} does not exist on any healthy node of the "
            "fleet",
            details=f"Node ID '#{first}'", node_errors=errors,
            extra_info={"class_types": sorted(everywhere_types)},
        )  # fmt: skip
    if everywhere_files:
        raise GraphError(
            "prompt_outputs_failed_validation", "Prompt outputs failed validation",
            details=f"no healthy node has {', '.join(sorted(everywhere_files))}",
            node_errors=errors, extra_info={"models": sorted(everywhere_files)},
        )  # fmt: skip
    assert best is not None
    _, node_id, types, files = best
    lacks = ", ".join([*types, *files])
    raise GraphError(
        "no_capable_node",
        "No healthy node of the fleet has everything this prompt needs",
        details=f"the closest, {node_id}, lacks {lacks}",
        extra_info={"class_types": types, "models": files},
    )  # fmt: skip


def output_node_ids(graph: Mapping[str, Any], output_class_types: Iterable[str]) -> list[str]:
    outputs = set(output_class_types)
    return sorted((nid for nid, n in graph.items() if n["class_type"] in outputs), key=_order)


def _order(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isdigit() else (1 << 30, node_id)
