"""`comfyfleet tokens create-join [--ttl MINUTES] [--note TEXT] [--single-use] [--json] |
revoke ID|TOKEN|-`:
join tokens for GPU hosts (`comfyfleet node join`) and revoking any token, straight in
`database.url`. A join token is printed once; only its SHA-256 is stored."""

from __future__ import annotations

import argparse
import json
import sys

from comfyfleet.cli import CliError, group
from comfyfleet.cli._db import run
from comfyfleet.cli.node import JOIN_TOKEN_ENV


def register(subparsers: argparse._SubParsersAction) -> None:
    tokens = group(subparsers, "tokens", help="bearer and join tokens")
    parser = tokens.add_parser(
        "create-join", help="a join token for GPU hosts (`comfyfleet node join`), shown once"
    )
    parser.add_argument("--ttl", type=int, default=60, metavar="MINUTES", help="default 60")
    parser.add_argument("--note", default="", help="what it is for (listed with the nodes)")
    parser.add_argument("--single-use", action="store_true", help="only the first join may use it")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=cmd_create_join)
    parser = tokens.add_parser("revoke", help="revoke a token, at once")
    parser.add_argument("token", help="the token's id, the token itself, or - to read it on stdin")
    parser.set_defaults(func=cmd_tokens_revoke)


def cmd_create_join(args: argparse.Namespace) -> int:
    from comfyfleet import auth

    if args.ttl <= 0:
        raise CliError(f"--ttl {args.ttl}: must be a positive number of minutes")
    issued = run(
        lambda s: auth.issue_join_token(
            s, ttl_minutes=args.ttl, note=args.note, single_use=args.single_use, actor=None
        )
    )
    expires = issued.expires_at.strftime("%Y-%m-%d %H:%M UTC") if issued.expires_at else "never"
    if args.json:
        print(
            json.dumps(
                {
                    "id": issued.id,
                    "token": issued.token,
                    "expires_at": expires,
                    "single_use": args.single_use,
                }
            )
        )
        return 0
    once = "; single-use" if args.single_use else ""
    print(f"join token {issued.id} (shown only now; expires {expires}{once}):\n{issued.token}")
    print(f"on a GPU host:  {JOIN_TOKEN_ENV}=… comfyfleet --gateway URL node join --url URL")
    print(f"revoke it:      comfyfleet tokens revoke {issued.id}")
    return 0


def cmd_tokens_revoke(args: argparse.Namespace) -> int:
    from comfyfleet import auth

    value = sys.stdin.read().strip() if args.token == "-" else args.token
    if value.isdigit():
        done = run(lambda s: auth.revoke_token(s, token_id=int(value)))
        label = f"token {value}"
    else:
        done = run(lambda s: auth.revoke_token(s, token=value))
        label = "the token"
    if not done:
        raise CliError(f"{label}: unknown or already revoked")
    print(f"revoked {label}")
    return 0
