"""`comfyfleet users create NAME [--admin] [--password-stdin] [quota options] | list
| disable NAME | enable NAME | grant|revoke NAME raw_graphs
| quota NAME [--max-running N|none] [--max-queued N|none] [--daily-gpu-seconds S|none]`: user
accounts, straight in `database.url` (no gateway needed).

The schema is brought to head first (idempotent), so `users create --admin --password-stdin`
works on a fresh database. Admin actions are written to the audit log."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any

from comfyfleet.cli import CliError, group, print_table
from comfyfleet.cli._db import run

_NOT_GIVEN: Any = object()


def register(subparsers: argparse._SubParsersAction) -> None:
    users = group(subparsers, "users", help="user accounts")
    parser = users.add_parser("create", help="create a user (no default accounts exist)")
    parser.add_argument("username")
    parser.add_argument("--admin", action="store_true", help="give the admin role")
    parser.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    _quota_options(parser)
    parser.set_defaults(func=cmd_users_create)
    parser = users.add_parser("list", help="list users")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=cmd_users_list)
    for word, help_text in (
        ("disable", "disable a user: logins, tokens and clients stop working at once"),
        ("enable", "enable a disabled user again"),
    ):
        parser = users.add_parser(word, help=help_text)
        parser.add_argument("username")
        parser.set_defaults(func=cmd_users_disable, disabled=word == "disable")
    for word, help_text in (
        ("grant", "grant a user a permission (raw_graphs: submit raw ComfyUI graphs)"),
        ("revoke", "withdraw a permission from a user"),
    ):
        parser = users.add_parser(word, help=help_text)
        parser.add_argument("username")
        parser.add_argument("permission", choices=["raw_graphs"])
        parser.set_defaults(func=cmd_users_grant, allowed=word == "grant")
    parser = users.add_parser("quota", help="set or clear a user's quotas")
    parser.add_argument("username")
    _quota_options(parser)
    parser.set_defaults(func=cmd_users_quota)


def _limit(text: str) -> float | None:
    if text.lower() in ("none", "off", "-"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a number or 'none'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 0 or more")
    return value


def _quota_options(parser: argparse.ArgumentParser) -> None:
    for option, help_text in (
        ("--max-running", "jobs of this user running at once (the rest wait)"),
        ("--max-queued", "jobs queued at once; more are refused"),
        ("--daily-gpu-seconds", "GPU-seconds per UTC day; more jobs are refused"),
    ):
        parser.add_argument(
            option, type=_limit, default=_NOT_GIVEN, metavar="N|none", help=help_text
        )


def _quota_values(args: argparse.Namespace) -> dict[str, Any]:
    """The quota options given on the command line (None: clear the limit)."""
    values: dict[str, Any] = {}
    for name in ("max_running", "max_queued", "daily_gpu_seconds"):
        value = getattr(args, name)
        if value is _NOT_GIVEN:
            continue
        if value is not None and name != "daily_gpu_seconds":
            value = int(value)
        values[name] = value
    return values


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.read().rstrip("\r\n")
        if not password:
            raise CliError("no password on standard input")
        return password
    if not sys.stdin.isatty():
        raise CliError("no password: give --password-stdin and pipe it in")
    password = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != password:
        raise CliError("the passwords differ")
    return password


def cmd_users_create(args: argparse.Namespace) -> int:
    from comfyfleet import auth, store

    password = _read_password(args)
    quotas = _quota_values(args)

    def create(session: Any) -> str:
        user = auth.create_user(
            session, username=args.username, password=password, admin=args.admin
        )
        if quotas:
            store.set_quotas(session, target=user, **quotas)
        return user.role

    role = run(create)
    print(f"created {role} {args.username}")
    return 0


def cmd_users_list(args: argparse.Namespace) -> int:
    from comfyfleet import store

    def rows(session: Any) -> list[dict[str, Any]]:
        return [
            {
                "id": u.id,
                "username": u.username,
                "role": u.role,
                "disabled": u.disabled,
                "created_at": u.created_at.isoformat(timespec="seconds"),
                "max_running": u.max_running,
                "max_queued": u.max_queued,
                "daily_gpu_seconds": u.daily_gpu_seconds,
                "permissions": "raw_graphs" if u.raw_graphs else "",
            }
            for u in store.list_users(session)
        ]

    users = run(rows)
    if args.json:
        print(json.dumps(users, indent=1))
        return 0
    headers = (
        "username",
        "role",
        "disabled",
        "created_at",
        "max_running",
        "max_queued",
        "permissions",
    )
    table = [[u[h] if u[h] is not None else "-" for h in headers] for u in users]
    print_table(headers, table)
    return 0


def cmd_users_disable(args: argparse.Namespace) -> int:
    from comfyfleet import auth

    run(lambda s: auth.disable_user(s, username=args.username, disabled=args.disabled))
    print(f"{'disabled' if args.disabled else 'enabled'} {args.username}")
    return 0


def cmd_users_grant(args: argparse.Namespace) -> int:
    from comfyfleet import auth, store
    from comfyfleet.store import users as rows

    def grant(session: Any) -> None:
        user = auth.require_user(session, username=args.username)
        rows.set_raw_graphs(session, target=user, allowed=args.allowed)
        store.audit(session, actor=None, action="user.permissions", target=args.username,
                    detail={args.permission: args.allowed})  # fmt: skip

    run(grant)
    print(f"{args.username}: {args.permission} {'granted' if args.allowed else 'revoked'}")
    return 0


def cmd_users_quota(args: argparse.Namespace) -> int:
    from comfyfleet import auth, store

    given = _quota_values(args)
    if not given:
        raise CliError("nothing to set: give --max-running, --max-queued or --daily-gpu-seconds")

    def set_quota(session: Any) -> None:
        user = auth.require_user(session, username=args.username)
        store.set_quotas(session, target=user, **given)
        store.audit(session, actor=None, action="user.quota", target=args.username, detail=given)

    run(set_quota)
    print(f"{args.username}: " + ", ".join(f"{k}={v}" for k, v in given.items()))
    return 0
