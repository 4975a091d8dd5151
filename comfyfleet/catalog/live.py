"""Live validation: can this workflow run on a node with this /object_info and these models?

The same checks serve `comfyfleet workflows check` and the router. They mirror what ComfyUI's
own /prompt validation will say, so a job goes only where it can run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from comfyfleet.catalog.graph import Graph, describe, is_link
from comfyfleet.catalog.params import ParamSpec

if TYPE_CHECKING:
    from comfyfleet.catalog.workflow import Workflow

_KIND_FITS = {
    "INT": ("int", "seed"),
    "FLOAT": ("int", "float"),
    "STRING": ("string",),
    "BOOLEAN": ("bool",),
    "COMBO": ("string", "model", "image", "int", "float"),
}


@dataclass(frozen=True)
class InputInfo:
    """One input of a node class as /object_info describes it."""

    kind: str
    """INT, FLOAT, STRING, BOOLEAN, COMBO, or a link type (MODEL, IMAGE, …)."""
    options: Mapping[str, Any]
    choices: list[Any] | None
    required: bool


def input_info(class_info: Mapping[str, Any], name: str) -> InputInfo | None:
    """Read `name` from a class's /object_info entry (old `[[choices], {}]` and V3 `COMBO`)."""
    sections = class_info.get("input") or {}
    for section in ("required", "optional"):
        entry = (sections.get(section) or {}).get(name)
        if entry is None:
            continue
        if not isinstance(entry, list | tuple) or not entry:
            return None
        kind = entry[0]
        options = entry[1] if len(entry) > 1 and isinstance(entry[1], Mapping) else {}
        if isinstance(kind, list | tuple):
            return InputInfo("COMBO", options, list(kind), section == "required")
        if kind == "COMBO":
            # a V3 combo; one without options (remote lists) cannot be judged here
            choices = list(options["options"]) if "options" in options else None
            return InputInfo("COMBO", options, choices, section == "required")
        return InputInfo(str(kind), options, None, section == "required")
    return None


def check_workflow(
    workflow: Workflow,
    graph: Graph,
    object_info: Mapping[str, Any],
    models: Mapping[str, list[str]],
) -> list[str]:
    problems: list[str] = []
    mapped: dict[tuple[str, str], ParamSpec] = {
        (t.node, t.input): spec for spec in workflow.parameters.values() for t in spec.targets
    }
    for node_id, node in graph.items():
        class_type = node["class_type"]
        class_info = object_info.get(class_type)
        if not isinstance(class_info, Mapping):
            label = describe(graph, node_id)
            problems.append(f"{label}: class_type {class_type!r} is not installed on this node")
            continue
        problems.extend(_check_node(graph, node_id, class_info, mapped, workflow))
    problems.extend(_check_models(workflow, graph, object_info, models))
    return problems


def _check_node(
    graph: Graph,
    node_id: str,
    class_info: Mapping[str, Any],
    mapped: Mapping[tuple[str, str], ParamSpec],
    workflow: Workflow,
) -> list[str]:
    problems: list[str] = []
    inputs = graph[node_id]["inputs"]
    label = describe(graph, node_id)
    for name in (class_info.get("input") or {}).get("required") or {}:
        if name not in inputs:
            problems.append(f"{label}: required input {name!r} is missing from the graph")
    for name, value in inputs.items():
        info = input_info(class_info, name)
        if info is None:
            continue  # ComfyUI ignores inputs it does not declare
        spec = mapped.get((node_id, name))
        if spec is not None:
            problems.extend(
                f"parameter {spec.name!r} -> {label}.{name}: {message}"
                for message in _check_param(spec, info, workflow.default(spec.name), workflow)
            )
        elif not is_link(value):
            message = _check_value(value, info)
            if message:
                problems.append(f"{label}: input {name!r}: {message}")
    return problems


def _check_value(value: Any, info: InputInfo) -> str | None:
    """ComfyUI's own literal checks (conversion, min/max, combo membership)."""
    try:
        if info.kind == "INT":
            value = int(value)
        elif info.kind == "FLOAT":
            value = float(value)
    except (TypeError, ValueError):
        return f"{value!r} is not a {info.kind}"
    low, high = info.options.get("min"), info.options.get("max")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if low is not None and value < low:
            return f"{value} is below this node's minimum {low}"
        if high is not None and value > high:
            return f"{value} is above this node's maximum {high}"
    if info.kind == "COMBO" and info.choices is not None and value not in info.choices:
        return f"{value!r} is not among this node's choices {_short(info.choices)}"
    return None


def _check_param(spec: ParamSpec, info: InputInfo, default: Any, workflow: Workflow) -> list[str]:
    fits = _KIND_FITS.get(info.kind)
    if fits is None:
        return [f"ComfyUI's input is a {info.kind} connection, not a value"]
    if spec.type not in fits:
        return [f"type {spec.type} does not fit ComfyUI's {info.kind} input"]
    problems: list[str] = []
    low, high = info.options.get("min"), info.options.get("max")
    if info.kind in ("INT", "FLOAT"):
        own_low = 0 if spec.type == "seed" and spec.minimum is None else spec.minimum
        if low is not None and own_low is not None and own_low < low:
            problems.append(f"the contract allows {own_low} but this node's minimum is {low}")
        if high is not None and spec.maximum is not None and spec.maximum > high:
            problems.append(f"the contract allows {spec.maximum} but this node's maximum is {high}")
        if spec.type == "seed" and spec.maximum is None and high is not None and high < 2**53 - 1:
            problems.append(f"random seeds go above this node's maximum {high}: set max")
    if info.kind == "COMBO" and info.choices is not None and spec.type not in ("image", "model"):
        missing = [c for c in spec.choices or () if c not in info.choices]
        if missing:
            problems.append(f"choices {_short(missing)} are not offered by this node")
    if default is not None and not (spec.type == "seed" and default == -1):
        value = workflow.map_model(default) if spec.type == "model" else default
        if spec.type != "image" and not (spec.type == "model" and info.kind == "COMBO"):
            message = _check_value(value, info)
            if message:
                problems.append(f"default: {message}")
    return problems


def _check_models(
    workflow: Workflow,
    graph: Graph,
    object_info: Mapping[str, Any],
    models: Mapping[str, list[str]],
) -> list[str]:
    problems: list[str] = []
    for folder, names in workflow.required_models.items():
        available = models.get(folder)
        if available is None:
            available = _combo_models(workflow, graph, object_info, folder)
        if available is None:
            continue  # nothing to judge by
        for name in names:
            if name not in available:
                problems.append(
                    f"model {folder}/{name} is missing on this node "
                    f"(it has {_short(available) if available else 'none'})"
                )
    return problems


def _combo_models(
    workflow: Workflow, graph: Graph, object_info: Mapping[str, Any], folder: str
) -> list[Any] | None:
    """A loader's combo choices stand in for a folder's model list that was not given."""
    for spec in workflow.parameters.values():
        if spec.type != "model" or spec.folder != folder:
            continue
        for target in spec.targets:
            class_info = object_info.get(graph[target.node]["class_type"])
            if isinstance(class_info, Mapping):
                info = input_info(class_info, target.input)
                if info is not None and info.choices is not None:
                    return info.choices
    return None


def _short(values: list[Any], limit: int = 8) -> str:
    shown = ", ".join(repr(v) for v in values[:limit])
    return f"[{shown}{', …' if len(values) > limit else ''}]"


@dataclass
class NodeFacts:
    """What a node offers, as `Workflow.check_against` needs it (or why it could not be read)."""

    label: str
    url: str
    object_info: dict[str, Any] = field(default_factory=dict)
    models: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None


def fetch_node_facts(
    label: str, url: str, folders: Iterable[str], *, timeout: float = 30.0
) -> NodeFacts:
    """GET /object_info and /models/<folder> for each folder (plain HTTP, no job submitted)."""
    import httpx

    facts = NodeFacts(label=label, url=url)
    try:
        with httpx.Client(base_url=url.rstrip("/"), timeout=timeout) as client:
            response = client.get("/object_info")
            response.raise_for_status()
            facts.object_info = response.json()
            for folder in folders:
                response = client.get(f"/models/{folder}")
                if response.status_code == 404:
                    facts.models[folder] = []
                    continue
                response.raise_for_status()
                facts.models[folder] = list(response.json())
    except (httpx.HTTPError, ValueError) as exc:
        facts.error = f"unreachable: {exc.__class__.__name__}: {exc}"
    return facts
