"""`comfyfleet workflows list|check [--node URL]|reload`: the workflow catalog."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from comfyfleet.cli import CliError, group, load_settings, print_table

if TYPE_CHECKING:
    from comfyfleet.catalog import Catalog
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
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=cmd_workflows_check)

    parser = workflows.add_parser("reload", help="re-read the workflow directories")
    parser.set_defaults(func=cmd_workflows_reload)


def load_catalog(settings: Settings) -> Catalog:
    """The catalog as configured (workflow_dirs, fleet defaults, the model map), or a CliError
    listing its problems."""
    from comfyfleet.catalog import CatalogError
    from comfyfleet.jobs import load_catalog as load

    try:
        return load(settings)
    except CatalogError as exc:
        raise CliError(
            "the workflow catalog has problems:\n  " + "\n  ".join(exc.problems)
        ) from None


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


def cmd_workflows_check(args: argparse.Namespace) -> int:
    from comfyfleet.catalog import fetch_node_facts

    settings = load_settings()
    catalog = load_catalog(settings)
    if args.node:
        nodes = [(url, url) for url in args.node]
    else:
        nodes = [(n.id, n.url) for n in settings.nodes if n.enabled]
    if args.static or not nodes:
        nodes = []
    folders = sorted({folder for w in catalog for folder in w.required_models})
    facts = [fetch_node_facts(label, url, folders, timeout=args.timeout) for label, url in nodes]
    results = []
    for workflow in catalog:
        for node in facts:
            problems = [] if node.error else workflow.check_against(node.object_info, node.models)
            status = "unreachable" if node.error else "ok" if not problems else "fail"
            results.append({
                "workflow": workflow.id, "capability": workflow.capability, "node": node.label,
                "status": status, "problems": problems,
            })  # fmt: skip
    unreachable = [f"{n.label}: {n.error}" for n in facts if n.error]
    failed = bool(unreachable) or any(r["status"] == "fail" for r in results)
    if args.json:
        print(json.dumps({"workflows": len(catalog), "checks": results,
                          "unreachable": unreachable, "ok": not failed}, indent=1))  # fmt: skip
        return 1 if failed else 0
    print(f"{len(catalog)} workflows pass the static checks.")
    if args.static:
        return 0
    if not nodes:
        print("No nodes to check against (give --node URL, or list nodes in the config).")
        return 0
    shown = {"ok": "ok", "unreachable": "UNREACHABLE"}
    rows = [
        (r["workflow"], r["capability"], r["node"],
         shown.get(r["status"], f"FAIL ({len(r['problems'])})"))
        for r in results
    ]  # fmt: skip
    details = [f"{r['workflow']} @ {r['node']}: {p}" for r in results for p in r["problems"]]
    print()
    print_table(("WORKFLOW", "CAPABILITY", "NODE", "STATUS"), rows)
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
