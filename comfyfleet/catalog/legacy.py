"""The old service's config file: its workflows load directly, and `import-legacy` converts it.

Old shape (reference/legacy-api.md):
`task_types.<capability>.workflows.<name>.{workflow_file, parameter_mapping: {param: {node_id,
input_name, default_value}}}` plus `nodes.static_nodes[]`, `nodes.load_balancing`, `database`,
`auth`, `comfyui`. The workflow file is looked up relative to the config file's folder, then the
current directory (the old service ran from its own root).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from comfyfleet.catalog.contract import ContractDoc, build_workflow, read_yaml
from comfyfleet.catalog.errors import CatalogError, problem
from comfyfleet.catalog.workflow import Workflow

STRATEGIES = ("round_robin", "least_loaded", "weighted", "random", "priority_based", "model_aware")
_ENTRY_KEYS = set(ContractDoc.model_fields)


def is_legacy_config(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("task_types"), dict)


def load_legacy_config(
    path: Path,
    data: Mapping[str, Any],
    problems: list[str],
    *,
    fleet_defaults: Mapping[str, Mapping[str, Any]] | None = None,
    model_map: Mapping[str, str] | None = None,
) -> list[Workflow]:
    """Every workflow of an old-service config, as catalog workflows."""
    found: list[Workflow] = []
    for capability, task in (data.get("task_types") or {}).items():
        entries = (task or {}).get("workflows") if isinstance(task, dict) else None
        if not isinstance(entries, dict):
            problems.append(problem(path, f"task_types.{capability}: expected workflows: {{...}}"))
            continue
        for name, entry in entries.items():
            label = f"{path}: task_types.{capability}.workflows.{name}"
            if isinstance(entry, dict):
                # old entries may carry keys of their own; only the workflow's keys matter here
                entry = {k: v for k, v in entry.items() if k in _ENTRY_KEYS}
            workflow = build_workflow(
                entry,
                source=path,
                base_dirs=[path.parent, Path.cwd()],
                default_id=str(name),
                default_capability=str(capability),
                problems=problems,
                fleet_defaults=fleet_defaults,
                model_map=model_map,
                label=label,
            )
            if workflow is not None:
                found.append(workflow)
    return found


@dataclass
class LegacyImport:
    """What `import_legacy` made: a config for comfyfleet.yaml, files written, notes."""

    config: dict[str, Any] = field(default_factory=dict)
    written: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def import_legacy(old: Path, *, workflows_dir: Path, force: bool = False) -> LegacyImport:
    """Convert an old-service config: workflows become JSON+YAML pairs under `workflows_dir`,
    the rest becomes a `comfyfleet.yaml` mapping (returned, not written)."""
    problems: list[str] = []
    data = read_yaml(old, problems)
    if problems:
        raise CatalogError(problems)
    if not isinstance(data, dict):
        raise CatalogError(problem(old, "not an old-service config (expected a YAML mapping)"))
    result = LegacyImport()
    workflows = load_legacy_config(old, data, problems) if is_legacy_config(data) else []
    if problems:
        raise CatalogError(problems)
    for workflow in workflows:
        folder = workflows_dir / workflow.capability
        graph_out = folder / f"{workflow.id}.json"
        contract_out = folder / f"{workflow.id}.yaml"
        for path in (graph_out, contract_out):
            if path.exists() and not force:
                raise CatalogError(problem(path, "exists already (use --force to replace it)"))
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(workflow.graph_path, graph_out)
        contract_out.write_text(_contract_yaml(workflow), encoding="utf-8")
        result.written += [graph_out, contract_out]
    result.config = _config(data, result.notes)
    return result


def _contract_yaml(workflow: Workflow) -> str:
    parameters: dict[str, Any] = {}
    for name, spec in workflow.parameters.items():
        entry: dict[str, Any] = {"type": spec.type}
        if spec.folder:
            entry["folder"] = spec.folder
        if spec.default is not None:
            entry["default"] = spec.default
        target = spec.targets[0]
        entry["node"] = target.node
        entry["input"] = target.input
        parameters[name] = entry
    doc = {
        "title": workflow.title,
        "capability": workflow.capability,
        "graph": f"{workflow.id}.json",
        "outputs": list(workflow.output_nodes),
        "parameters": parameters,
    }
    header = "# Imported from the old service's config by `comfyfleet config import-legacy`.\n"
    return header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def _node_id(raw: Any, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", str(raw).lower()).strip("-")[:56] or "node"
    node_id, n = base, 2
    while node_id in taken:
        node_id, n = f"{base}-{n}", n + 1
    taken.add(node_id)
    return node_id


def _config(data: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    nodes_doc = data.get("nodes") if isinstance(data.get("nodes"), dict) else {}
    balancing = nodes_doc.get("load_balancing") or {}
    strategy = balancing.get("strategy")
    if strategy in STRATEGIES:
        config["routing"] = {"strategy": strategy}
    elif strategy:
        notes.append(f"load_balancing.strategy {strategy!r} has no equivalent; using least_loaded")
    if "max_retries" in balancing:
        faults = max(1, int(balancing["max_retries"]))
        if balancing.get("enable_failover") is False:
            faults = 1
        config["jobs"] = {"max_node_faults": faults}

    taken: set[str] = set()
    nodes: list[dict[str, Any]] = []
    for raw in nodes_doc.get("static_nodes") or []:
        metadata = dict(raw.get("metadata") or {})
        node: dict[str, Any] = {
            "id": _node_id(raw.get("node_id") or raw.get("host"), taken),
            "url": f"http://{raw.get('host', '127.0.0.1')}:{raw.get('port', 8188)}",
        }
        if raw.get("max_concurrent"):
            node["capacity"] = int(raw["max_concurrent"])
        if raw.get("capabilities"):
            node["capabilities"] = list(raw["capabilities"])
        if isinstance(metadata.get("priority"), int):
            node["priority"] = metadata["priority"]
        if isinstance(metadata.get("weight"), int | float):
            node["weight"] = metadata["weight"]
        if metadata:
            node["metadata"] = metadata
        nodes.append(node)
    comfyui = data.get("comfyui") if isinstance(data.get("comfyui"), dict) else {}
    if not nodes and comfyui.get("host"):
        nodes.append(
            {
                "id": "comfyui",
                "url": f"http://{comfyui['host']}:{comfyui.get('port', 8188)}",
            }
        )
    if nodes:
        config["nodes"] = nodes
    if nodes_doc.get("discovery_mode") not in (None, "static"):
        notes.append(
            f"discovery_mode {nodes_doc['discovery_mode']!r}: ComfyFleet nodes join with "
            "`comfyfleet node join` and a join token instead"
        )

    database = data.get("database") if isinstance(data.get("database"), dict) else {}
    if database.get("host"):
        user = quote(str(database.get("user", "")), safe="")
        password = quote(str(database.get("password", "")), safe="")
        credentials = f"{user}:{password}@" if password else (f"{user}@" if user else "")
        config["database"] = {
            "url": f"mysql+pymysql://{credentials}{database['host']}:"
            f"{database.get('port', 3306)}/{database.get('database', 'comfyfleet')}"
        }
        notes.append(
            "database.url reuses the old server and database; ComfyFleet creates its own tables "
            "there (`comfyfleet db upgrade`). Point it at a fresh database to keep them apart."
        )
    auth = data.get("auth") if isinstance(data.get("auth"), dict) else {}
    if auth.get("token_expire_minutes"):
        config["auth"] = {"token_ttl_minutes": int(auth["token_expire_minutes"])}
    if auth.get("secret_key"):
        notes.append("auth.secret_key is not used: ComfyFleet tokens are random and stored hashed")
    if comfyui.get("output_dir"):
        notes.append(
            f"comfyui.output_dir {comfyui['output_dir']!r}: outputs now go to store.outputs_dir"
        )
    return config
