"""`comfyfleet node join|leave`: this GPU host in the fleet, through the gateway.

    comfyfleet node join --url URL [--name NAME] [--capacity N] [--capability C …]
                         [--meta K=V …] [--gpu MODEL] [--token cfj_…]
    comfyfleet node leave [--name NAME] [--timeout S]

`join` presents the join token (`--token` or `COMFYFLEET_JOIN_TOKEN`; an admin creates one with
`comfyfleet tokens create-join`) and keeps the node key it gets back in
`$XDG_CONFIG_HOME/comfyfleet/nodes.json` (mode 0600); `leave` presents that key (or, without
one, an admin's token: `COMFYFLEET_TOKEN` or `comfyfleet login`) and waits while the node
drains, then it is removed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

from comfyfleet.cli import CliError, group
from comfyfleet.cli._gateway import (
    check,
    client,
    config_dir,
    read_private,
    token_for,
    unreachable,
    write_private,
)

JOIN_TOKEN_ENV = "COMFYFLEET_JOIN_TOKEN"
_NODE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def register(subparsers: argparse._SubParsersAction) -> None:
    node = group(subparsers, "node", help="this GPU host in the fleet: join, leave")
    parser = node.add_parser("join", help="register this host's ComfyUI with a join token")
    parser.add_argument(
        "--url", required=True, help="where the control plane reaches this ComfyUI, e.g. "
        "http://10.0.0.7:8188",
    )  # fmt: skip
    parser.add_argument("--name", help="node id (default: this host's name)")
    parser.add_argument("--capacity", type=int, help="jobs in flight at once (default 2)")
    parser.add_argument(
        "--capability", action="append", dest="capabilities", metavar="C",
        help="generation type it serves (repeatable; default: the four bundled types)",
    )  # fmt: skip
    parser.add_argument(
        "--meta", action="append", default=[], metavar="K=V", help="a fact about the node"
    )
    parser.add_argument("--gpu", help="GPU model (default: read from the node's /system_stats)")
    parser.add_argument("--token", help=f"the join token (default: ${JOIN_TOKEN_ENV})")
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")
    parser.set_defaults(func=cmd_join)

    parser = node.add_parser("leave", help="drain this host's node, then remove it")
    parser.add_argument("--name", help="node id (default: this host's name)")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for jobs in flight"
    )
    parser.add_argument("--poll", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.set_defaults(func=cmd_leave)


def host_node_id() -> str:
    """This host's name as a node id (`GPU-Box7.lab` → `gpu-box7`)."""
    name = socket.gethostname().split(".")[0].lower()
    name = re.sub(r"[^a-z0-9-]+", "-", name).strip("-")[:63]
    if not _NODE_ID.match(name):
        raise CliError(
            f"host name {socket.gethostname()!r} is not a usable node id: give --name "
            "(lowercase letters, digits and '-')"
        )
    return name


def keys_file() -> Path:
    return config_dir() / "nodes.json"


def node_key(gateway: str, name: str) -> str | None:
    return read_private(keys_file()).get(gateway.rstrip("/"), {}).get(name)


def _set_node_key(gateway: str, name: str, key: str | None) -> Path:
    data = read_private(keys_file())
    entry = data.setdefault(gateway.rstrip("/"), {})
    if key is None:
        entry.pop(name, None)
    else:
        entry[name] = key
    return write_private(keys_file(), data)


def _post(args: argparse.Namespace, path: str, token: str, **kwargs: Any) -> tuple[int, Any]:
    """POST with a join token, a node key or an admin token; (status, JSON of a 2xx answer)."""
    import httpx

    try:
        with client(args, token=token, timeout=60) as http:
            response = http.post(path, **kwargs)
    except httpx.HTTPError as exc:
        raise unreachable(args, exc) from None
    return response.status_code, check(response, login_hint=False)


def cmd_join(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get(JOIN_TOKEN_ENV)
    if not token:
        raise CliError(
            f"no join token: give --token or set {JOIN_TOKEN_ENV} "
            "(an admin creates one with `comfyfleet tokens create-join`)"
        )
    name = args.name or host_node_id()
    metadata: dict[str, Any] = {}
    for item in args.meta:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--meta {item!r}: use K=V")
        metadata[key] = value
    if args.gpu:
        metadata["gpu"] = args.gpu
    body: dict[str, Any] = {"name": name, "url": args.url}
    if args.capacity is not None:
        body["capacity"] = args.capacity
    if args.capabilities:
        body["capabilities"] = args.capabilities
    if metadata:
        body["metadata"] = metadata
    kept = node_key(args.gateway, name)
    if kept:  # re-joining its own name: the key from the last join proves it is this node
        body["node_key"] = kept
    _, answer = _post(args, "/api/v2/nodes/join", token, json=body)
    path = _set_node_key(args.gateway, name, answer["node_key"])
    if args.json:
        print(json.dumps({k: v for k, v in answer.items() if k != "node_key"}, indent=1))
        return 0
    print(answer["message"])
    node = answer["node"]
    gpu = (node.get("metadata") or {}).get("gpu") or "?"
    print(f"  url {node['url']}  capacity {node['capacity']}  gpu {gpu}")
    print(f"  capabilities {', '.join(node['capabilities'])}")
    print(f"node key kept in {path} (for `comfyfleet node leave`)")
    print(f"a worker must serve its pool (`make up` starts one by itself; elsewhere run "
          f"python -m comfyfleet.worker --pool {answer['pool']})")  # fmt: skip
    return 0


def cmd_leave(args: argparse.Namespace) -> int:
    name = args.name or host_node_id()
    token = node_key(args.gateway, name)
    if token is None:
        try:
            token = token_for(args.gateway)
        except CliError:
            raise CliError(
                f"no node key for {name} at {args.gateway} (`comfyfleet node join` on this host "
                "keeps one) and no admin token (COMFYFLEET_TOKEN or `comfyfleet login`)"
            ) from None
    deadline = time.monotonic() + args.timeout
    said = None
    while True:
        status, answer = _post(args, f"/api/v2/nodes/{name}/leave", token)
        if status == 200 and answer["status"] == "removed":
            _set_node_key(args.gateway, name, None)
            print(answer["message"])
            return 0
        if answer["in_flight"] != said:
            said = answer["in_flight"]
            print(f"{answer['message']}; waiting (no new jobs go there)", file=sys.stderr)
        if time.monotonic() >= deadline:
            raise CliError(
                f"node {name} still has {said} job(s) in flight after {args.timeout:.0f} s; it "
                "stays drained (no new jobs): run `comfyfleet node leave` again later"
            )
        time.sleep(args.poll)
