"""`comfyfleet db upgrade [--revision REV] | downgrade REV | current`: the database schema
(`database.url`, no gateway needed)."""

from __future__ import annotations

import argparse
import json

from comfyfleet.cli import group
from comfyfleet.cli._db import database


def register(subparsers: argparse._SubParsersAction) -> None:
    db = group(subparsers, "db", help="the ComfyFleet database")
    parser = db.add_parser("upgrade", help="migrate the database schema (default: to the newest)")
    parser.add_argument("--revision", default="head", help="target revision (default: head)")
    parser.set_defaults(func=cmd_db_upgrade)
    parser = db.add_parser("downgrade", help="migrate the schema back (e.g. -1: one step)")
    parser.add_argument("revision", help="target revision: -1, base, or a revision id")
    parser.set_defaults(func=cmd_db_downgrade)
    parser = db.add_parser("current", help="print the schema revision of the database")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=cmd_db_current)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from comfyfleet.store import current_revision, upgrade

    db = database(migrate=False)
    try:
        before = current_revision(db)
        upgrade(db, args.revision)
        after = current_revision(db)
    finally:
        db.dispose()
    url = db.url.render_as_string(hide_password=True)
    print(f"database {url}: {before or '(empty)'} -> {after}")
    return 0


def cmd_db_downgrade(args: argparse.Namespace) -> int:
    from comfyfleet.store import current_revision, downgrade

    db = database(migrate=False)
    try:
        before = current_revision(db)
        downgrade(db, args.revision)
        after = current_revision(db)
    finally:
        db.dispose()
    print(f"database: {before or '(empty)'} -> {after or '(empty)'}")
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    from comfyfleet.store import current_revision, head_revision

    db = database(migrate=False)
    try:
        current = current_revision(db)
    finally:
        db.dispose()
    head = head_revision()
    if args.json:
        print(json.dumps({"current": current, "head": head, "up_to_date": current == head}))
        return 0
    state = "up to date" if current == head else f"behind head {head}: run `comfyfleet db upgrade`"
    print(f"{current or '(empty)'} ({state})")
    return 0
