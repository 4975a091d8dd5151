"""Reading a workflow contract (the YAML beside a graph) into a `Workflow`.

Two forms load: ComfyFleet's own (`parameters:` with types, bounds and targets) and the old
service's (`workflow_file` + `parameter_mapping: {param: {node_id, input_name, default_value}}`),
whose types are taken from the default value or the graph's value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from comfyfleet.catalog.errors import problem
from comfyfleet.catalog.graph import Graph, default_outputs, describe, is_link, load_graph
from comfyfleet.catalog.graph import resolve_node as _resolve_node
from comfyfleet.catalog.params import PARAM_TYPES, ParamSpec, Target
from comfyfleet.catalog.workflow import Workflow

WORKFLOW_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

MODEL_INPUTS = {
    "ckpt_name": "checkpoints",
    "lora_name": "loras",
    "vae_name": "vae",
    "unet_name": "diffusion_models",
    "clip_name": "text_encoders",
    "control_net_name": "controlnet",
    "model_name": "upscale_models",
}
"""Loader inputs whose value is a model file, and the folder it lives in (for type inference)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TargetDoc(_Strict):
    node: str | int
    input: str


class ParamDoc(_Strict):
    type: str | None = None
    description: str = ""
    default: Any = None
    min: int | float | None = None
    max: int | float | None = None
    multiple_of: int | float | None = Field(default=None, gt=0)
    choices: list[Any] | None = None
    max_length: int | None = Field(default=None, gt=0)
    folder: str | None = None
    node: str | int | None = None
    input: str | None = None
    targets: list[TargetDoc] | None = None


class LegacyMappingDoc(BaseModel):
    model_config = ConfigDict(extra="ignore")

    node_id: str | int
    input_name: str
    default_value: Any = None


class ContractDoc(_Strict):
    id: str | None = None
    title: str | None = None
    description: str = ""
    capability: str | None = None
    graph: str | None = None
    outputs: list[str | int] | None = None
    models: dict[str, list[str]] = Field(default_factory=dict)
    parameters: dict[str, ParamDoc] | None = None
    # the old service's form
    workflow_file: str | None = None
    parameter_mapping: dict[str, LegacyMappingDoc] | None = None


def read_yaml(path: Path, problems: list[str]) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        problems.append(problem(path, f"cannot read YAML: {exc}"))
        return None


def load_contract(
    path: Path,
    problems: list[str],
    *,
    data: Any = None,
    fleet_defaults: Mapping[str, Mapping[str, Any]] | None = None,
    model_map: Mapping[str, str] | None = None,
) -> Workflow | None:
    """Load `path` (a contract YAML, or its already parsed `data`) and its graph.

    Problems are appended to `problems`; returns None when the workflow cannot load.
    """
    if data is None:
        before = len(problems)
        data = read_yaml(path, problems)
        if len(problems) > before:
            return None
    return build_workflow(
        data,
        source=path,
        base_dirs=[path.parent],
        default_id=path.stem,
        default_capability=path.parent.name,
        problems=problems,
        fleet_defaults=fleet_defaults,
        model_map=model_map,
    )


def build_workflow(
    data: Any,
    *,
    source: Path,
    base_dirs: list[Path],
    default_id: str,
    default_capability: str,
    problems: list[str],
    fleet_defaults: Mapping[str, Mapping[str, Any]] | None = None,
    model_map: Mapping[str, str] | None = None,
    label: str | None = None,
) -> Workflow | None:
    """Build one workflow from a parsed contract. `label` names it in messages (default: file)."""
    where = label or str(source)
    if not isinstance(data, dict):
        problems.append(problem(where, "a contract must be a YAML mapping"))
        return None
    try:
        doc = ContractDoc.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(part) for part in err["loc"])
            problems.append(problem(where, f"{loc}: {err['msg']}"))
        return None
    before = len(problems)

    workflow_id = doc.id or default_id
    if not WORKFLOW_ID.match(workflow_id):
        problems.append(problem(where, f"bad workflow id {workflow_id!r} (letters, digits, _ . -)"))
    legacy = doc.parameter_mapping is not None or doc.workflow_file is not None
    if legacy and doc.parameters is not None:
        problems.append(
            problem(
                where, "give either parameters (ComfyFleet form) or parameter_mapping, not both"
            )
        )
        return None
    graph_name = doc.graph or doc.workflow_file or f"{default_id}.json"
    graph_path = _find_file(graph_name, base_dirs)
    graph = load_graph(graph_path, problems)
    if graph is None:
        return None

    if legacy:
        param_docs = {
            name: ParamDoc(default=m.default_value, node=m.node_id, input=m.input_name)
            for name, m in (doc.parameter_mapping or {}).items()
        }
    else:
        param_docs = doc.parameters or {}
    parameters: dict[str, ParamSpec] = {}
    for name, param_doc in param_docs.items():
        spec = _build_param(name, param_doc, graph, where, problems)
        if spec is not None:
            parameters[name] = spec
    _check_shared_targets(parameters, graph, where, problems)

    output_nodes: list[str] = []
    if doc.outputs:
        for ref in doc.outputs:
            try:
                output_nodes.append(_resolve_node(graph, ref))
            except LookupError as exc:
                problems.append(problem(where, f"outputs: {exc}"))
    else:
        output_nodes = default_outputs(graph)
    if not output_nodes:
        problems.append(problem(where, "the graph has no output node"))

    if len(problems) > before:
        return None
    workflow = Workflow(
        id=workflow_id,
        capability=doc.capability or default_capability,
        title=doc.title or workflow_id,
        description=doc.description.strip(),
        graph=graph,
        parameters=parameters,
        output_nodes=output_nodes,
        static_models={folder: list(names) for folder, names in doc.models.items()},
        source=source,
        graph_path=graph_path,
        fleet_defaults=(fleet_defaults or {}).get(workflow_id),
        model_map=model_map,
    )
    problems.extend(workflow.problems)
    return None if workflow.problems else workflow


def _find_file(name: str, base_dirs: list[Path]) -> Path:
    candidate = Path(name)
    if candidate.is_absolute():
        return candidate
    for base in base_dirs:
        if (base / candidate).is_file():
            return base / candidate
    return base_dirs[0] / candidate


def _build_param(
    name: str, doc: ParamDoc, graph: Graph, where: str, problems: list[str]
) -> ParamSpec | None:
    def fail(message: str, node: str | None = None) -> None:
        problems.append(problem(where, message, param=name, node=node))

    if not PARAM_NAME.match(name):
        fail("bad parameter name (letters, digits and _, not starting with a digit)")
        return None
    raw_targets = list(doc.targets or [])
    if doc.node is not None or doc.input is not None:
        if doc.node is None or doc.input is None:
            fail("give both node and input")
            return None
        raw_targets.insert(0, TargetDoc(node=doc.node, input=doc.input))
    if not raw_targets:
        fail("no target: give node + input, or targets")
        return None

    targets: list[Target] = []
    for raw in raw_targets:
        try:
            node_id = _resolve_node(graph, raw.node)
        except LookupError as exc:
            fail(str(exc))
            continue
        inputs = graph[node_id]["inputs"]
        if raw.input not in inputs:
            known = ", ".join(inputs) or "none"
            fail(f"has no input {raw.input!r} (inputs: {known})", node=describe(graph, node_id))
            continue
        if is_link(inputs[raw.input]):
            fail(
                f"input {raw.input!r} is a link from another node, not a value",
                node=describe(graph, node_id),
            )
            continue
        targets.append(Target(node=node_id, input=raw.input, ref=str(raw.node)))
    if len(targets) != len(raw_targets):
        return None

    first = targets[0]
    first_node = graph[first.node]
    graph_value = first_node["inputs"][first.input]
    param_type, folder = _param_type(name, doc, first_node["class_type"], first.input, graph_value)
    node_label = describe(graph, first.node)
    if param_type is None:
        fail("cannot tell its type: give type", node=node_label)
        return None
    if param_type not in PARAM_TYPES:
        fail(f"unknown type {param_type!r} (types: {', '.join(PARAM_TYPES)})")
        return None
    if param_type == "model" and not folder:
        fail("a model parameter needs folder (checkpoints, loras, vae, …)")
        return None
    if (doc.min is not None or doc.max is not None or doc.multiple_of is not None) and (
        param_type not in ("int", "float", "seed")
    ):
        fail(f"min/max/multiple_of apply to numbers, not to type {param_type}")
        return None
    if doc.max_length is not None and param_type != "string":
        fail(f"max_length applies to strings, not to type {param_type}")
        return None
    if doc.min is not None and doc.max is not None and doc.min > doc.max:
        fail(f"min {doc.min} is above max {doc.max}")
        return None
    if doc.choices is not None and not doc.choices:
        fail("choices is empty")
        return None

    spec = ParamSpec(
        name=name,
        type=param_type,
        description=doc.description.strip(),
        minimum=doc.min,
        maximum=doc.max,
        multiple_of=doc.multiple_of,
        choices=tuple(doc.choices) if doc.choices is not None else None,
        max_length=doc.max_length,
        folder=folder,
        targets=tuple(targets),
    )
    if doc.choices is not None:
        for choice in doc.choices:
            try:
                spec.check(choice)
            except ValueError as exc:
                fail(f"choice {choice!r} does not fit the type: {exc}")
                return None
    default = None
    if doc.default is not None:
        try:
            default = spec.check(doc.default)
        except ValueError as exc:
            fail(f"default: {exc}", node=node_label)
            return None
    checked_graph_value = None
    if graph_value is not None:
        try:
            checked_graph_value = spec.check(graph_value)
        except ValueError as exc:
            if default is None and param_type not in ("seed", "image"):
                # the graph's value is the default then: it must fit
                fail(f"the graph's value (used as the default): {exc}", node=node_label)
                return None
    return spec.model_copy(update={"default": default, "graph_value": checked_graph_value})


def _param_type(
    name: str, doc: ParamDoc, class_type: str, input_name: str, graph_value: Any
) -> tuple[str | None, str | None]:
    """The declared type, or one inferred from the input, the default or the graph's value."""
    folder = doc.folder
    if doc.type is not None:
        if doc.type == "model" and folder is None:
            folder = MODEL_INPUTS.get(input_name)
        return doc.type, folder
    if input_name in MODEL_INPUTS:
        return "model", folder or MODEL_INPUTS[input_name]
    if class_type == "LoadImage" and input_name == "image":
        return "image", None
    if name == "seed" or input_name in ("seed", "noise_seed"):
        return "seed", None
    for value in (doc.default, graph_value):
        if isinstance(value, bool):
            return "bool", None
        if isinstance(value, int):
            return "int", None
        if isinstance(value, float):
            return "float", None
        if isinstance(value, str):
            return "string", None
    return None, None


def _check_shared_targets(
    parameters: dict[str, ParamSpec], graph: Graph, where: str, problems: list[str]
) -> None:
    """Two parameters writing the same input would silently override each other."""
    owner: dict[tuple[str, str], str] = {}
    for name, spec in parameters.items():
        for target in spec.targets:
            key = (target.node, target.input)
            if key in owner and owner[key] != name:
                problems.append(
                    problem(
                        where,
                        f"input {target.input!r} is also set by parameter {owner[key]!r}",
                        param=name,
                        node=describe(graph, target.node),
                    )
                )
            owner.setdefault(key, name)
