"""CLI: direct database bootstrap commands (no gateway needed).

    comfyfleet db upgrade [--revision REV] | downgrade REV | current
    comfyfleet users create NAME [--admin] [--password-stdin] [quota options] | list | disable NAME
                     | enable NAME | quota NAME [--max-running N|none] [--max-queued N|none]
                     [--daily-gpu-seconds S|none]
    comfyfleet clients create --owner USER --name NAME [--description TEXT] | list | revoke ID
    comfyfleet tokens revoke ID|TOKEN|-

They talk to `database.url` directly; the users/clients/tokens commands first bring the schema to
head (idempotent), so `users create --admin --password-stdin` works on a fresh database. Admin
actions are written to the audit log as `cli:<os user>`.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import TYPE_CHECKING, Any

from comfyfleet.cli import CliError, group, load_settings, print_table

if TYPE_CHECKING:
    from comfyfleet.store import Database


def register(subparsers: argparse._SubParsersAction) -> None:
    db = group(subparsers, "db", help="the ComfyFleet database")
    parser = db.add_parser("upgrade", help="migrate the database schema (default: to the newest)")
    parser.add_argument("--revision", default="head", help="target revision (default: head)")
    parser.set_defaults(func=cmd_db_upgrade)
    parser = db.add_parser("downgrade", help="migrate the schema back (e.g. -1: one step)")
    parser.add_argument("revision", help="target revision: -1, base, or a revision id")
    parser.set_defaults(func=cmd_db_downgrade)
    parser = db.add_parser("current", help="print the schema revision of the database")
    parser.set_defaults(func=cmd_db_current)

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
    parser = users.add_parser("quota", help="set or clear a user's quotas")
    parser.add_argument("username")
    _quota_options(parser)
    parser.set_defaults(func=cmd_users_quota)

    clients = group(subparsers, "clients", help="API clients (client_id + client_secret)")
    parser = clients.add_parser("create", help="create a client; its secret is shown once")
    parser.add_argument("--owner", required=True, metavar="USER", help="the user it acts as")
    parser.add_argument("--name", required=True, dest="client_name", help="client_name")
    parser.add_argument("--description", default="")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=cmd_clients_create)
    parser = clients.add_parser("list", help="list clients")
    parser.add_argument("--owner", metavar="USER")
    parser.add_argument("--all", action="store_true", help="include revoked clients")
    parser.set_defaults(func=cmd_clients_list)
    parser = clients.add_parser("revoke", help="revoke a client and its tokens, at once")
    parser.add_argument("client_id")
    parser.set_defaults(func=cmd_clients_revoke)

    tokens = group(subparsers, "tokens", help="bearer and join tokens")
    parser = tokens.add_parser("revoke", help="revoke a token, at once")
    parser.add_argument("token", help="the token's id, the token itself, or - to read it on stdin")
    parser.set_defaults(func=cmd_tokens_revoke)


_NOT_GIVEN: Any = object()


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


def _database(*, migrate: bool = True) -> Database:
    from comfyfleet.store import Database, upgrade

    settings = load_settings()
    try:
        database = Database(settings.database.url)
        if migrate:
            upgrade(database)
    except Exception as exc:  # unreachable server, bad URL
        raise CliError(f"database {_safe_url(settings.database.url)}: {exc}") from None
    return database


def _safe_url(url: str) -> str:
    from sqlalchemy import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(invalid URL)"


def _run(fn: Any) -> Any:
    from comfyfleet.store import StoreError

    database = _database()
    try:
        return database.run(fn)
    except StoreError as exc:
        raise CliError(str(exc)) from None
    finally:
        database.dispose()


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from comfyfleet.store import current_revision, upgrade

    database = _database(migrate=False)
    try:
        before = current_revision(database)
        upgrade(database, args.revision)
        after = current_revision(database)
    finally:
        database.dispose()
    url = database.url.render_as_string(hide_password=True)
    print(f"database {url}: {before or '(empty)'} -> {after}")
    return 0


def cmd_db_downgrade(args: argparse.Namespace) -> int:
    from comfyfleet.store import current_revision, downgrade

    database = _database(migrate=False)
    try:
        before = current_revision(database)
        downgrade(database, args.revision)
        after = current_revision(database)
    finally:
        database.dispose()
    print(f"database: {before or '(empty)'} -> {after or '(empty)'}")
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    from comfyfleet.store import current_revision, head_revision

    database = _database(migrate=False)
    try:
        current = current_revision(database)
    finally:
        database.dispose()
    head = head_revision()
    state = "up to date" if current == head else f"behind head {head}: run `comfyfleet db upgrade`"
    print(f"{current or '(empty)'} ({state})")
    return 0


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

    role = _run(create)
    print(f"created {role} {args.username}")
    return 0


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
            }
            for u in store.list_users(session)
        ]

    users = _run(rows)
    if args.json:
        print(json.dumps(users, indent=1))
        return 0
    headers = ("username", "role", "disabled", "created_at", "max_running", "max_queued")
    table = [[u[h] if u[h] is not None else "-" for h in headers] for u in users]
    print_table(headers, table)
    return 0


def cmd_users_disable(args: argparse.Namespace) -> int:
    from comfyfleet import auth

    _run(lambda s: auth.disable_user(s, username=args.username, disabled=args.disabled))
    print(f"{'disabled' if args.disabled else 'enabled'} {args.username}")
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

    _run(set_quota)
    print(f"{args.username}: " + ", ".join(f"{k}={v}" for k, v in given.items()))
    return 0


def cmd_clients_create(args: argparse.Namespace) -> int:
    from comfyfleet import auth

    def create(session: Any) -> tuple[str, str]:
        owner = auth.require_user(session, username=args.owner)
        client, secret = auth.create_client(
            session,
            owner=owner,
            client_name=args.client_name,
            description=args.description,
            actor=None,
        )
        return client.id, secret

    client_id, secret = _run(create)
    if args.json:
        print(json.dumps({"client_id": client_id, "client_secret": secret}))
    else:
        print(f"client_id:     {client_id}")
        print(f"client_secret: {secret}")
        print("(the secret is shown only now; it is stored hashed)")
    return 0


def cmd_clients_list(args: argparse.Namespace) -> int:
    from comfyfleet import auth, store

    def rows(session: Any) -> list[list[Any]]:
        owner = auth.require_user(session, username=args.owner) if args.owner else None
        return [
            [
                c.id,
                c.client_name,
                c.owner.username,
                c.created_at.isoformat(timespec="seconds"),
                c.revoked_at.isoformat(timespec="seconds") if c.revoked_at else "-",
                c.description or "-",
            ]
            for c in store.list_clients(session, owner=owner, include_revoked=args.all)
        ]

    headers = ("client_id", "client_name", "owner", "created_at", "revoked_at", "description")
    print_table(headers, _run(rows))
    return 0


def cmd_clients_revoke(args: argparse.Namespace) -> int:
    from comfyfleet import auth

    if not _run(lambda s: auth.revoke_client(s, client_id=args.client_id)):
        raise CliError(f"no active client {args.client_id!r}")
    print(f"revoked client {args.client_id} and its tokens")
    return 0


def cmd_tokens_revoke(args: argparse.Namespace) -> int:
    from comfyfleet import auth

    value = sys.stdin.read().strip() if args.token == "-" else args.token
    if value.isdigit():
        done = _run(lambda s: auth.revoke_token(s, token_id=int(value)))
        label = f"token {value}"
    else:
        done = _run(lambda s: auth.revoke_token(s, token=value))
        label = "the token"
    if not done:
        raise CliError(f"{label}: unknown or already revoked")
    print(f"revoked {label}")
    return 0
