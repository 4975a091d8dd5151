"""`comfyfleet up` (the embedded fleet in the foreground) and `comfyfleet down`."""

from __future__ import annotations

import argparse

from comfyfleet.cli import load_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("up", help="run the embedded fleet in the foreground")
    parser.add_argument(
        "--no-smoke", action="store_true", help="skip the smoke job at start (embedded.smoke_job)"
    )
    parser.set_defaults(func=cmd_up)
    parser = subparsers.add_parser("down", help="stop what `comfyfleet up` started")
    parser.set_defaults(func=cmd_down)


def cmd_up(args: argparse.Namespace) -> int:
    from comfyfleet.local.embedded import up

    return up(load_settings(), smoke=False if args.no_smoke else None)


def cmd_down(args: argparse.Namespace) -> int:
    from comfyfleet.local.embedded import down

    return down(load_settings())
