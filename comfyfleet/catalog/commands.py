"""CLI: `comfyfleet workflows list|check|reload` and `comfyfleet config check|import-legacy`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from comfyfleet.catalog.catalog import Catalog
from comfyfleet.catalog.errors import CatalogError
from comfyfleet.catalog.legacy import import_legacy
from comfyfleet.cli import CliError, group, load_settings, print_table

if TYPE_CHECKING:
    from comfyfleet.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    workflows = group(subparsers, "workflows", help="the workflow catalog")
    parser = workflows.add_parser("list", help="list the workflows and their parameters")
    parser.add_argument("--json", action="store_true", help="print JSON (with parameter schemas)")
    parser.set_defaults(func=cmd_workflows_list)

    parser = workflows.add_parser(
        "check",
        help="validate every workflow, and check it against nodes (/object_info, /models)",
    )
    parser.add_argument(
        "--node",
        action="append",
        metavar="URL",
        help="a ComfyUI node to check against (repeatable; default: the configured nodes)",
    )
    parser.add_argument(
        "--static", action="store_true", help="only the static checks, touch no node"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per node request")
    parser.set_defaults(func=cmd_workflows_check)

    parser = workflows.add_parser("reload", help="re-read the workflow directories")
    parser.set_defaults(func=cmd_workflows_reload)

    config = group(subparsers, "config", help="the configuration file")
    parser = config.add_parser("check", help="validate comfyfleet.yaml and the workflows it names")
    parser.set_defaults(func=cmd_config_check)

    parser = config.add_parser(
        "import-legacy",
        help="convert the old service's config: workflows to JSON+YAML pairs, the rest to "
        "comfyfleet.yaml settings",
    )
    parser.add_argument("old", type=Path, metavar="OLD.yaml")
    parser.add_argument(
        "--workflows-dir",
        type=Path,
        default=None,
        help="where to write the workflow pairs (default: the first configured workflow dir)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="write the settings to this file (default: print them)",
    )
    parser.add_argument("--force", action="store_true", help="replace files that exist")
    parser.set_defaults(func=cmd_config_import_legacy)


def load_catalog(settings: Settings) -> Catalog:
    """The catalog as configured: workflow_dirs, fleet defaults and the model map."""
    try:
        return Catalog.load(
            settings.workflow_dirs, fleet_defaults=settings.defaults, model_map=settings.models
        )
    except CatalogError as exc:
        raise CliError(
            "the workflow catalog has problems:\n  " + "\n  ".join(exc.problems)
        ) from None


# -- workflows -----------------------------------------------------------------------------------


def cmd_workflows_list(args: argparse.Namespace) -> int:
    catalog = load_catalog(load_settings())
    if args.json:
        doc = [
            {
                "id": w.id,
                "capability": w.capability,
                "title": w.title,
                "description": w.description,
                "source": str(w.source),
                "output_nodes": w.output_nodes,
                "required_models": w.required_models,
                "parameters": w.json_schema(),
            }
            for w in catalog
        ]
        print(json.dumps(doc, indent=2))
        return 0
    rows = [
        (
            w.id,
            w.capability,
            w.title,
            ", ".join(w.parameters),
            "; ".join(f"{k}: {', '.join(v)}" for k, v in w.required_models.items()) or "-",
        )
        for w in catalog
    ]
    print_table(("WORKFLOW", "CAPABILITY", "TITLE", "PARAMETERS", "MODELS"), rows)
    return 0


@dataclass
class NodeFacts:
    """What a node offers, as `check_against` needs it (or why it could not be read)."""

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


def cmd_workflows_check(args: argparse.Namespace) -> int:
    settings = load_settings()
    catalog = load_catalog(settings)
    print(f"{len(catalog)} workflows pass the static checks.")
    if args.static:
        return 0
    if args.node:
        nodes = [(url, url) for url in args.node]
    else:
        nodes = [(n.id, n.url) for n in settings.nodes if n.enabled]
    if not nodes:
        print("No nodes to check against (give --node URL, or list nodes in the config).")
        return 0
    folders = sorted({folder for w in catalog for folder in w.required_models})
    facts = [fetch_node_facts(label, url, folders, timeout=args.timeout) for label, url in nodes]
    rows = []
    details = []
    for workflow in catalog:
        for node in facts:
            if node.error:
                rows.append((workflow.id, workflow.capability, node.label, "UNREACHABLE"))
                continue
            problems = workflow.check_against(node.object_info, node.models)
            status = "ok" if not problems else f"FAIL ({len(problems)})"
            rows.append((workflow.id, workflow.capability, node.label, status))
            details += [f"{workflow.id} @ {node.label}: {p}" for p in problems]
    print()
    print_table(("WORKFLOW", "CAPABILITY", "NODE", "STATUS"), rows)
    unreachable = [f"{n.label}: {n.error}" for n in facts if n.error]
    if details or unreachable:
        print()
        for line in unreachable + details:
            print(f"  {line}")
        return 1
    return 0


def cmd_workflows_reload(args: argparse.Namespace) -> int:
    catalog = load_catalog(load_settings())
    print(f"Reloaded {len(catalog)} workflows: {', '.join(catalog.ids())}")
    for warning in catalog.warnings:
        print(f"  warning: {warning}")
    print("(Processes read the catalog at start; a running gateway reloads it itself.)")
    return 0


# -- config --------------------------------------------------------------------------------------


def cmd_config_check(args: argparse.Namespace) -> int:
    from comfyfleet.settings import config_path

    path = config_path()
    settings = load_settings()
    catalog = load_catalog(settings)
    warnings = list(catalog.warnings)
    served = {cap for node in settings.nodes if node.enabled for cap in node.capabilities}
    for capability in catalog.capabilities():
        if settings.nodes and capability not in served:
            ids = ", ".join(w.id for w in catalog.by_capability(capability))
            warnings.append(f"no enabled node lists capability {capability!r} (workflows: {ids})")
    known = set(catalog.capabilities())
    for node in settings.nodes:
        for capability in node.capabilities:
            if capability not in known:
                warnings.append(f"node {node.id}: no workflow has capability {capability!r}")
    source = path if path.is_file() else f"{path} (absent: defaults and environment only)"
    print(f"config: {source}")
    strategy = settings.routing.strategy
    print(f"nodes: {len(settings.nodes)}; workflows: {len(catalog)}; routing: {strategy}")
    for warning in warnings:
        print(f"  warning: {warning}")
    print("OK")
    return 0


def cmd_config_import_legacy(args: argparse.Namespace) -> int:
    if not args.old.is_file():
        raise CliError(f"{args.old}: no such file")
    workflows_dir = args.workflows_dir
    if workflows_dir is None:
        settings = load_settings()
        workflows_dir = Path(settings.workflow_dirs[0])
    if args.output is not None and args.output.exists() and not args.force:
        raise CliError(f"{args.output} exists already (use --force to replace it)")
    try:
        result = import_legacy(args.old, workflows_dir=workflows_dir, force=args.force)
    except CatalogError as exc:
        raise CliError("\n  ".join(["cannot import:", *exc.problems])) from None
    text = f"# Converted from {args.old} by `comfyfleet config import-legacy`.\n" + yaml.safe_dump(
        result.config, sort_keys=False, allow_unicode=True
    )
    if args.output is not None:
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    for path in result.written:
        print(f"wrote {path}", file=sys.stderr)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0
