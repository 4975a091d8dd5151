"""`comfyfleet nodes …`: the fleet's nodes, straight against the registry (Prefect blocks and
pools) and the store.

    comfyfleet nodes list [--json]
    comfyfleet nodes add ID --url URL [--capacity N] [--capability C …] [--weight W]
                         [--priority P] [--disabled]
    comfyfleet nodes disable ID | enable ID
    comfyfleet nodes drain ID [--wait] [--timeout S]
    comfyfleet nodes remove ID [--timeout S]
    comfyfleet nodes models [--json]
    comfyfleet nodes refresh ID

`disable` stops new attempts at once (the node's pool is paused, its attempts that have not
started move to other nodes); running ones finish. `enable` puts the node back and releases it
from quarantine. `drain` is `disable` (with `--wait`: until nothing is in flight); `remove`
drains, waits up to `--timeout` for the in-flight jobs, then deletes the node's deployments,
pool and block. Live state (circuit, queue, models, last error) comes from the fleet service's
snapshot (comfyfleet.fleet.state). Actions are written to the audit log as `cli:<os user>`.
`refresh` asks the fleet service, through the gateway (`POST /api/v2/admin/nodes/ID/refresh`, as
the logged-in admin), to read again what the node has installed (class types, models: what raw
graphs are routed by), e.g. after installing custom nodes on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from comfyfleet.cli import CliError, group, load_settings, print_table
from comfyfleet.local.prefect_server import use_prefect

if TYPE_CHECKING:
    from comfyfleet.store import Database

T = TypeVar("T")


def register(subparsers: argparse._SubParsersAction) -> None:
    nodes = group(subparsers, "nodes", help="the fleet's ComfyUI nodes")
    parser = nodes.add_parser("list", help="nodes with their state, load and last error")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=cmd_list)

    parser = nodes.add_parser("add", help="register a node (block, pool, deployments)")
    parser.add_argument("node_id", metavar="ID", help="node id, e.g. gpu-3")
    parser.add_argument("--url", required=True, help="ComfyUI base URL, e.g. http://10.0.0.7:8188")
    parser.add_argument("--capacity", type=int, default=2, help="jobs in flight at once")
    parser.add_argument(
        "--capability", action="append", dest="capabilities", metavar="C",
        help="generation type it serves (repeatable; default: the four bundled types)",
    )  # fmt: skip
    parser.add_argument("--weight", type=float, default=1.0)
    parser.add_argument("--priority", type=int, default=0)
    parser.add_argument("--disabled", action="store_true", help="register it disabled")
    parser.set_defaults(func=cmd_add)

    for word, help_text in (
        ("disable", "no new jobs for the node (running ones finish)"),
        ("enable", "take jobs again; also releases a quarantined node"),
    ):
        parser = nodes.add_parser(word, help=help_text)
        parser.add_argument("node_id", metavar="ID")
        parser.set_defaults(func=cmd_enable, enabled=word == "enable")

    parser = nodes.add_parser("drain", help="disable, optionally waiting for in-flight jobs")
    parser.add_argument("node_id", metavar="ID")
    parser.add_argument("--wait", action="store_true", help="wait until nothing is in flight")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds --wait waits")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=cmd_drain)

    parser = nodes.add_parser("remove", help="drain, then delete deployments, pool and block")
    parser.add_argument("node_id", metavar="ID")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for in-flight jobs"
    )
    parser.set_defaults(func=cmd_remove)

    parser = nodes.add_parser("models", help="which node has which model")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=cmd_models)

    parser = nodes.add_parser(
        "refresh", help="read again what the node has installed (class types, models)"
    )
    parser.add_argument("node_id", metavar="ID")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=cmd_refresh)


def _run(make: Callable[[Any, Database], Awaitable[T]]) -> T:
    """Run `make(prefect_client, db)` with the configured Prefect server and database."""
    settings = load_settings()
    use_prefect(settings)  # the API URL and the fleet's auth string
    from prefect.client.orchestration import get_client

    from comfyfleet.store import Conflict, Database, NotFound, StoreError

    db = Database(settings.database.url)

    async def main() -> T:
        async with get_client() as client:
            return await make(client, db)

    try:
        return asyncio.run(main())
    except (NotFound, Conflict) as exc:
        raise CliError(str(exc)) from None
    except StoreError as exc:
        raise CliError(f"database: {exc}") from None
    except OSError as exc:
        raise CliError(f"Prefect at {settings.prefect.api_url}: {exc}") from None
    finally:
        db.dispose()


def _nodes(client: Any, db: Database) -> Awaitable[list[Any]]:
    from comfyfleet.fleet.registry import read_nodes
    from comfyfleet.fleet.state import merge_state, node_states
    from comfyfleet.store import live_attempts_by_node

    async def collect() -> list[Any]:
        configs = await read_nodes(client)
        known = {n.id: n for n in node_states(load_settings())}
        busy = await asyncio.to_thread(db.run, live_attempts_by_node, readonly=True)
        return [merge_state(c, known.get(c.id), in_flight=busy.get(c.id, 0)) for c in configs]

    return collect()


def _ago(value: Any) -> str:
    if value is None:
        return "never"
    from datetime import UTC, datetime

    seconds = (datetime.now(UTC) - value).total_seconds()
    return f"{seconds:.0f}s ago" if seconds < 120 else value.strftime("%Y-%m-%d %H:%M:%S")


def _inventory(node: Any) -> str:
    """`1234 types, 40s ago`: the class types the node has installed and when they were read
    (`-`: not yet; raw graphs go only to nodes whose inventory is known)."""
    if node.class_types is None:
        return "-"
    return f"{node.class_types} types, {_ago(node.inventory_read_at)}"


def _joined(metadata: dict[str, Any]) -> str:
    """How the node came: `token 4 2025-06-01 10:02` (self-join, `comfyfleet node join`) or
    `-` (an admin or comfyfleet.yaml added it)."""
    from comfyfleet.fleet.join import joined_record

    record = joined_record(metadata)
    return "-" if record is None else f"token {record.token_id} {record.joined_at:%Y-%m-%d %H:%M}"


def cmd_list(args: argparse.Namespace) -> int:
    nodes = _run(_nodes)
    if args.json:
        print(json.dumps([n.model_dump(mode="json") for n in nodes], indent=2))
        return 0
    if not nodes:
        print("no nodes registered (comfyfleet.yaml `nodes:` or `comfyfleet nodes add`)")
        return 0
    rows = [
        [n.id, n.url, n.state, n.circuit, f"{n.in_flight}/{n.capacity}",
         "-" if n.queue_depth is None else n.queue_depth, n.last_checkpoint or "-",
         _inventory(n), _ago(n.last_seen), _joined(n.metadata), (n.last_error or "")[:60]]
        for n in nodes
    ]  # fmt: skip
    headers = ["NODE", "URL", "STATE", "CIRCUIT", "IN FLIGHT", "QUEUE", "CHECKPOINT",
               "INVENTORY", "LAST SEEN", "JOINED", "LAST ERROR"]  # fmt: skip
    print_table(headers, rows)
    if any(n.stale for n in nodes) or not any(n.updated_at for n in nodes):
        print("(no fresh state: is the fleet service running?)")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from comfyfleet.fleet.registry import add_node
    from comfyfleet.settings import NodeConfig

    fields: dict[str, Any] = {
        "id": args.node_id, "url": args.url, "capacity": args.capacity, "weight": args.weight,
        "priority": args.priority, "enabled": not args.disabled,
    }  # fmt: skip
    if args.capabilities:
        fields["capabilities"] = args.capabilities
    try:
        node = NodeConfig(**fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CliError(f"invalid node: {problems}") from None
    _run(lambda client, db: add_node(client, node, db=db))
    print(f"node {node.id} added: pool comfyui-{node.id}; it takes jobs once it answers probes")
    print("(a worker must serve the new pool: restart the worker, or start one for it)")
    return 0


def cmd_enable(args: argparse.Namespace) -> int:
    from comfyfleet.fleet.registry import set_enabled

    moved = _run(lambda client, db: set_enabled(client, args.node_id, args.enabled, db=db))
    if args.enabled:
        print(f"node {args.node_id} enabled (released from quarantine if it was there)")
    else:
        print(f"node {args.node_id} disabled: no new jobs; {moved} waiting job(s) moved")
    return 0


def cmd_drain(args: argparse.Namespace) -> int:
    from comfyfleet.fleet.registry import drain

    if not args.wait:
        left = _run(lambda client, db: drain(client, args.node_id, db=db))
    else:
        left = _run(lambda client, db: _drain_with_bar(client, db, args.node_id, args.timeout))
    if args.json:
        print(json.dumps({"node": args.node_id, "in_flight": left, "drained": not left}))
    elif left:
        print(f"node {args.node_id} draining: {left} job(s) still in flight")
    else:
        print(f"node {args.node_id} drained: nothing in flight")
    return 1 if left and args.wait else 0


DRAIN_STEP_S = 1.0


async def _drain_with_bar(client: Any, db: Database, node_id: str, timeout: float) -> int:
    """Drain, drawing a bar of the jobs that were in flight and have ended; how many are left
    after `timeout`."""
    import time

    from comfyfleet.cli._progress import Bar
    from comfyfleet.fleet.registry import drain

    deadline = time.monotonic() + timeout
    left = total = await drain(client, node_id, db=db)
    with Bar(f"drain {node_id}") as bar:
        while left and (remaining := deadline - time.monotonic()) > 0:
            bar.update(total - left, total, f"{left} in flight")
            step = min(DRAIN_STEP_S, remaining)
            left = await drain(client, node_id, db=db, wait_s=step, poll_s=step)
            total = max(total, left)
        bar.update(total - left, total, f"{left} in flight")
    return left


def cmd_remove(args: argparse.Namespace) -> int:
    from comfyfleet.fleet.registry import remove_node

    _run(lambda client, db: remove_node(client, args.node_id, db=db, wait_s=args.timeout))
    print(f"node {args.node_id} removed (deployments, pool comfyui-{args.node_id}, block)")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    nodes = _run(_nodes)
    missing = [n for n in nodes if n.models is None]
    if missing:
        probed = asyncio.run(_probe_models([(n.id, n.url) for n in missing]))
        nodes = [n.model_copy(update={"models": probed.get(n.id)}) if n in missing else n
                 for n in nodes]  # fmt: skip
    table: dict[tuple[str, str], list[str]] = {}
    for node in nodes:
        for folder, files in (node.models or {}).items():
            for name in files:
                table.setdefault((folder, name), []).append(node.id)
    if args.json:
        print(json.dumps({n.id: n.models for n in nodes}, indent=2))
        return 0
    rows = [[folder, name, " ".join(sorted(ids))] for (folder, name), ids in sorted(table.items())]
    unknown = [n.id for n in nodes if n.models is None]
    if rows:
        print_table(["FOLDER", "MODEL", "NODES"], rows)
    if unknown:
        print(f"(no answer from {', '.join(unknown)})")
    return 0


def cmd_refresh(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    from comfyfleet.cli._gateway import request

    answer = request(args, "POST", f"/api/v2/admin/nodes/{quote(args.node_id, safe='')}/refresh")
    if args.json:
        print(json.dumps(answer))
    else:
        print(f"node {args.node_id}: inventory refresh requested; the fleet service reads it "
              "after its next probe of the node (`comfyfleet nodes list` shows when)")  # fmt: skip
    return 0


async def _probe_models(nodes: list[tuple[str, str]]) -> dict[str, dict[str, list[str]]]:
    """Ask nodes the fleet service has no inventory of (it is not running, or just started)."""
    import httpx

    async def one(url: str) -> dict[str, list[str]] | None:
        try:
            async with httpx.AsyncClient(timeout=3) as http:
                response = await http.get(f"{url.rstrip('/')}/models/checkpoints")
                response.raise_for_status()
                return {"checkpoints": sorted(response.json())}
        except (httpx.HTTPError, ValueError):
            return None

    found = await asyncio.gather(*(one(url) for _, url in nodes))
    return {node_id: m for (node_id, _), m in zip(nodes, found, strict=True) if m is not None}
