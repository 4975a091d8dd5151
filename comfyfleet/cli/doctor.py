"""`comfyfleet doctor`: check the whole installation (comfyfleet.local.doctor) and print it."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from comfyfleet.cli import CliError, load_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    from comfyfleet.local import doctor

    parser = subparsers.add_parser(
        "doctor",
        help="check the installation (Prefect, nodes, workflows, database, stores, auth)",
        description=doctor.__doc__.split("\n\n")[1] if doctor.__doc__ else None,
    )
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    parser.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    from comfyfleet.local.doctor import fail, ok, run_checks
    from comfyfleet.settings import config_path

    try:
        settings = load_settings()
    except CliError as exc:
        broken = fail("config", str(exc), "fix the file, then `comfyfleet config check`")
        _print([broken], as_json=args.json)
        return 1
    source = config_path() if config_path().is_file() else "defaults and environment"
    checks = [ok("config", f"{source}: {len(settings.nodes)} node(s), routing "
                           f"{settings.routing.strategy}")]  # fmt: skip
    checks += run_checks(settings)
    _print(checks, as_json=args.json)
    return 1 if any(c.failed for c in checks) else 0


def _print(checks: list[Any], *, as_json: bool) -> None:
    from comfyfleet.local.doctor import render

    failed = [c for c in checks if c.failed]
    if as_json:
        print(json.dumps({"ok": not failed, "checks": [dataclasses.asdict(c) for c in checks]},
                         indent=1))  # fmt: skip
        return
    for line in render(checks):
        print(line)
    print(f"\n{len(failed)} check(s) failed." if failed else "\nAll checks passed.")
