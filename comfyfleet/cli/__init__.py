"""The `comfyfleet` command (also `python -m comfyfleet`): one module per command word.

Each module listed in `COMMANDS` has `register(subparsers)`, which adds its word's parsers and
sets `func=handler` on each leaf; a handler takes the parsed `argparse.Namespace` and returns the
exit status. `group()` makes a word with subcommands (`config check|import-legacy|reload`). Keep
`register` cheap: import heavy things (Prefect, SQLAlchemy) inside the handlers, so
`comfyfleet --help` stays fast. Nothing in the library imports this package.

`comfyfleet completion` prints the shell code that completes commands (argcomplete).

Global options: `--config PATH` (the comfyfleet.yaml to read; same as `COMFYFLEET_CONFIG`) and
`--gateway URL` (`COMFYFLEET_GATEWAY`, default http://127.0.0.1:8000) for commands that talk to
the gateway.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from comfyfleet.settings import Settings

COMMANDS: tuple[str, ...] = tuple(
    f"comfyfleet.cli.{word}"
    for word in (
        "up", "logs", "doctor", "workflows", "config", "db", "users", "clients", "tokens",
        "nodes", "login", "submit", "batch", "jobs", "node", "completion",
    )
)  # fmt: skip
"""Modules whose `register(subparsers)` adds a command word (`up` also adds `down`), in help
order."""

DEFAULT_GATEWAY = "http://127.0.0.1:8000"

Handler = Callable[[argparse.Namespace], int | None]


class CliError(Exception):
    """A user-facing failure: printed as `comfyfleet: error: …`, exit status 1."""


def group(
    subparsers: argparse._SubParsersAction, name: str, *, help: str
) -> argparse._SubParsersAction:
    """The subcommand group `name` (`comfyfleet <name> …`), created on first use.

    Returns the group's own subparsers, to which an area adds its leaves.
    """
    parser = subparsers.choices.get(name)
    if parser is None:
        parser = subparsers.add_parser(name, help=help, description=help)
        nested = parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)
        parser.set_defaults(_group=nested)
    return parser.get_default("_group")


def load_settings() -> Settings:
    """The settings in force, with a readable error instead of a traceback."""
    from pydantic import ValidationError

    from comfyfleet.settings import Settings, config_path

    try:
        return Settings()
    except ValidationError as exc:
        from comfyfleet.settings import format_errors

        raise CliError(format_errors(exc, config_path())) from None
    except (OSError, ValueError) as exc:  # unreadable file, YAML syntax errors
        raise CliError(f"{config_path()}: {exc}") from None


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], *, file: TextIO | None = None
) -> None:
    """A plain aligned text table (no colours: it is read by people and by grep)."""
    out = file or sys.stdout
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)
        if index == 0:
            print("  ".join("-" * w for w in widths), file=out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comfyfleet",
        description="ComfyFleet: run ComfyUI jobs on a fleet of ComfyUI nodes.",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="the comfyfleet.yaml to read (default: $COMFYFLEET_CONFIG or ./comfyfleet.yaml)",
    )
    parser.add_argument(
        "--gateway",
        metavar="URL",
        default=os.environ.get("COMFYFLEET_GATEWAY", DEFAULT_GATEWAY),
        help=f"the gateway to talk to (default: $COMFYFLEET_GATEWAY or {DEFAULT_GATEWAY})",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMANDS:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions (`comfyfleet completion`)
        import argcomplete

        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    if args.config:
        os.environ["COMFYFLEET_CONFIG"] = args.config
        from comfyfleet.settings import get_settings

        get_settings.cache_clear()
    handler: Handler | None = getattr(args, "func", None)
    if handler is None:
        parser.error("missing subcommand")
    try:
        return int(handler(args) or 0)
    except CliError as exc:
        print(f"comfyfleet: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
