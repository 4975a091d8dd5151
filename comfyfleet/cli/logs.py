"""`comfyfleet logs [COMPONENT] [-f]`: print (or follow) the embedded fleet's logs."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TextIO

from comfyfleet.cli import CliError, load_settings
from comfyfleet.logs import COMBINED


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "logs",
        help="print the embedded fleet's logs (combined, or one component's)",
        description="Print var/logs/fleet.log (every component, prefixed) or one component's "
        "file: prefect-server, comfyui-<node>, worker, fleet-service, web.",
    )
    parser.add_argument("component", nargs="?", default=COMBINED, help="default: all (fleet)")
    parser.add_argument("-n", "--lines", type=int, default=100, help="last N lines (0: all)")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    parser.set_defaults(func=cmd_logs)


def cmd_logs(args: argparse.Namespace) -> int:
    directory = load_settings().logging.dir
    path = directory / f"{args.component}.log"
    if not path.is_file():
        known = sorted(p.stem for p in directory.glob("*.log")) if directory.is_dir() else []
        raise CliError(f"no log {path} (components with logs: {', '.join(known) or 'none yet'})")
    if args.lines < 0:
        raise CliError("--lines must be 0 or more")
    print_tail(path, args.lines, sys.stdout)
    if args.follow:
        follow(path, sys.stdout)
    return 0


def print_tail(path: Path, lines: int, out: TextIO) -> None:
    text = path.read_text(errors="replace").splitlines()
    for line in text[-lines:] if lines else text:
        print(line, file=out)


def follow(path: Path, out: TextIO, *, interval_s: float = 0.25) -> None:
    """Print what the file gets from now on, until Ctrl-C."""
    offset = path.stat().st_size
    while True:
        size = path.stat().st_size
        if size < offset:
            offset = 0
        if size > offset:
            with path.open("rb") as fh:
                fh.seek(offset)
                out.write(fh.read(size - offset).decode(errors="replace"))
                out.flush()
            offset = size
        time.sleep(interval_s)
