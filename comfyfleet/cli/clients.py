"""`comfyfleet clients create --owner USER --name NAME [--description TEXT] | list | revoke ID`:
API clients (client_id + client_secret), straight in `database.url`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from comfyfleet.cli import CliError, group, print_table
from comfyfleet.cli._db import run


def register(subparsers: argparse._SubParsersAction) -> None:
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
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=cmd_clients_list)
    parser = clients.add_parser("revoke", help="revoke a client and its tokens, at once")
    parser.add_argument("client_id")
    parser.set_defaults(func=cmd_clients_revoke)


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

    client_id, secret = run(create)
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
    found = run(rows)
    if args.json:
        nulls = {"revoked_at", "description"}
        print(json.dumps([
            {h: None if h in nulls and v == "-" else v for h, v in zip(headers, row, strict=True)}
            for row in found
        ], indent=1))  # fmt: skip
        return 0
    print_table(headers, found)
    return 0


def cmd_clients_revoke(args: argparse.Namespace) -> int:
    from comfyfleet import auth

    if not run(lambda s: auth.revoke_client(s, client_id=args.client_id)):
        raise CliError(f"no active client {args.client_id!r}")
    print(f"revoked client {args.client_id} and its tokens")
    return 0
