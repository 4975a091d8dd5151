"""`comfyfleet workflows list|check [--node URL]|reload|new GRAPH.json`: the workflow catalog.

`workflows new GRAPH.json [--id ID] [--capability CAP] [--out DIR]` turns a graph exported with
ComfyUI's "Save (API)" into a catalog workflow to review: it writes `<DIR>/<capability>/<id>.json`
(the graph, unchanged) and `<id>.yaml`, a draft contract (comfyfleet.catalog.draft), and loads
the pair as the catalog would.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
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

    parser = workflows.add_parser(
        "new", help='draft a workflow (graph + contract) from a graph saved with "Save (API)"'
    )
    parser.add_argument("graph", type=Path, metavar="GRAPH.json", help="the API-format graph")
    parser.add_argument("--id", metavar="ID", help="the workflow id (default: the file's name)")
    parser.add_argument(
        "--capability", metavar="CAP", help="its capability (default: guessed from the graph)"
    )
    parser.add_argument(
        "--out", type=Path, metavar="DIR",
        help="the workflow directory to write to (default: the first configured one)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=cmd_workflows_new)


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


def cmd_workflows_new(args: argparse.Namespace) -> int:
    from comfyfleet.catalog.contract import load_contract
    from comfyfleet.catalog.draft import (
        GraphFileError,
        draft_contract,
        guess_capability,
        read_graph,
    )

    try:
        text = args.graph.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise CliError(f"{args.graph}: {reason}") from None
    try:
        graph = read_graph(text, str(args.graph))
    except GraphFileError as exc:
        raise CliError(str(exc)) from None
    workflow_id = args.id or args.graph.stem
    capability = args.capability or guess_capability(graph)
    try:
        contract = draft_contract(graph, workflow_id=workflow_id, capability=args.capability)
    except ValueError as exc:
        hint = " (give --id)" if "workflow id" in str(exc) and not args.id else ""
        raise CliError(f"{exc}{hint}") from None

    settings = load_settings()
    configured = [Path(d) for d in settings.workflow_dirs]
    out = args.out or next((d for d in configured if not d.is_file()), Path("workflows"))
    folder = out / capability
    graph_path, contract_path = folder / f"{workflow_id}.json", folder / f"{workflow_id}.yaml"
    existing = [str(p) for p in (graph_path, contract_path, folder / f"{workflow_id}.yml")
                if p.exists()]  # fmt: skip
    if existing:
        raise CliError(
            f"will not overwrite {', '.join(existing)}: give another --id, or remove them first"
        )
    other = _defined_elsewhere(settings, workflow_id)
    if other:
        raise CliError(f"workflow id {workflow_id!r} is taken by {other}: give another --id")

    folder.mkdir(parents=True, exist_ok=True)
    graph_path.write_text(text, encoding="utf-8")
    contract_path.write_text(contract, encoding="utf-8")
    problems: list[str] = []
    workflow = load_contract(contract_path, problems, model_map=settings.models)
    if workflow is None:  # a draft the loader refuses is a bug here; leave nothing half done
        graph_path.unlink()
        contract_path.unlink()
        raise CliError("the draft does not load (nothing written):\n  " + "\n  ".join(problems))
    in_catalog = any(_inside(contract_path, d) for d in configured)
    if args.json:
        print(json.dumps({
            "workflow": workflow.id, "capability": workflow.capability,
            "graph": str(graph_path), "contract": str(contract_path),
            "parameters": list(workflow.parameters), "output_nodes": workflow.output_nodes,
            "in_catalog": in_catalog,
        }, indent=1))  # fmt: skip
        return 0
    print(f"wrote {graph_path} (the graph, unchanged)")
    print(f"wrote {contract_path} (a draft contract)")
    print(f"  capability: {workflow.capability}{'' if args.capability else ' (guessed)'}")
    print(f"  parameters: {', '.join(workflow.parameters) or 'none found'}")
    if not in_catalog:
        print(f"note: {out} is not one of the configured workflow_dirs; add it to comfyfleet.yaml")
    print(
        f"Review {contract_path}, then `comfyfleet workflows check` and "
        "`comfyfleet workflows reload`."
    )
    return 0


def _defined_elsewhere(settings: Settings, workflow_id: str) -> str | None:
    """Where the configured catalog already defines `workflow_id` (None: nowhere, or the
    catalog does not load, which `workflows check` reports)."""
    try:
        catalog = load_catalog(settings)
    except CliError:
        return None
    found = [w for w in catalog if w.id == workflow_id]
    return str(found[0].source) if found else None


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True
