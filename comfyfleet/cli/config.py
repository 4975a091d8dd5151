"""`comfyfleet config check|import-legacy|reload`: the configuration file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from comfyfleet.cli import CliError, group, load_settings
from comfyfleet.cli.workflows import load_catalog


def register(subparsers: argparse._SubParsersAction) -> None:
    from comfyfleet.fleet.config_reload import CHECK_S

    config = group(subparsers, "config", help="the configuration file")
    parser = config.add_parser("check", help="validate comfyfleet.yaml and the workflows it names")
    parser.add_argument("--json", action="store_true", help="print JSON")
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

    parser = config.add_parser(
        "reload",
        help="validate the config file and have the running fleet service apply it now",
        description="Validates the config file, then signals the fleet service on this host "
        f"(SIGHUP) to apply nodes, capacities and the routing strategy now. It watches the file "
        f"anyway and applies a change within {CHECK_S:g} s.",
    )
    parser.set_defaults(func=cmd_config_reload)


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
    if args.json:
        print(json.dumps({
            "config": str(path), "exists": path.is_file(), "nodes": len(settings.nodes),
            "workflows": len(catalog), "routing": settings.routing.strategy,
            "warnings": warnings, "ok": True,
        }, indent=1))  # fmt: skip
        return 0
    source = path if path.is_file() else f"{path} (absent: defaults and environment only)"
    print(f"config: {source}")
    strategy = settings.routing.strategy
    print(f"nodes: {len(settings.nodes)}; workflows: {len(catalog)}; routing: {strategy}")
    for warning in warnings:
        print(f"  warning: {warning}")
    print("OK")
    return 0


def cmd_config_import_legacy(args: argparse.Namespace) -> int:
    import yaml

    from comfyfleet.catalog import CatalogError, import_legacy

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


def cmd_config_reload(args: argparse.Namespace) -> int:
    import os
    import signal

    from comfyfleet.fleet.state import fleet_service_pid
    from comfyfleet.settings import config_path

    settings = load_settings()
    print(f"config: {config_path()}: valid ({len(settings.nodes)} node(s), "
          f"routing {settings.routing.strategy})")  # fmt: skip
    pid = fleet_service_pid(settings)
    if pid is None:
        raise CliError(
            "no fleet service runs on this host (no live pid in the node-state snapshot); "
            "it applies the file when it starts"
        )
    os.kill(pid, signal.SIGHUP)
    print(f"asked the fleet service (pid {pid}) to apply it; see its log for what changed")
    return 0
