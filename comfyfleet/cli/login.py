"""`comfyfleet login [--username U] [--password-stdin]`: log in to the gateway and keep the token
(per gateway, in `$XDG_CONFIG_HOME/comfyfleet/tokens.json`, mode 0600)."""

from __future__ import annotations

import argparse
import getpass
import sys

from comfyfleet.cli._gateway import check, client, save_token, unreachable


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("login", help="log in to the gateway and store a token")
    parser.add_argument("--username", help="default: your OS user name")
    parser.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    parser.set_defaults(func=cmd_login)


def cmd_login(args: argparse.Namespace) -> int:
    import httpx

    username = args.username or getpass.getuser()
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"Password for {username}@{args.gateway}: ")
    try:
        with client(args, auth=False) as http:
            body = check(
                http.post("/api/v2/auth/login", json={"username": username, "password": password})
            )
    except httpx.HTTPError as exc:
        raise unreachable(args, exc) from None
    path = save_token(args.gateway, body["access_token"], username)
    role = " (admin)" if body.get("is_admin") else ""
    print(f"logged in to {args.gateway} as {username}{role}; token in {path}")
    return 0
