"""`python -m bench.simnode --count 300 --base-port 20000 [--seconds 1.0]`: serve simulated
ComfyUI nodes until Ctrl-C (or SIGTERM, or ``--run-for`` seconds), printing one URL per line.

`python -m bench.simnode --record-object-info [--from-url URL]` rewrites the recorded
`/object_info` snapshot from a real node (a local one is started when no URL is given).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import resource
import signal
import sys

from bench.simnode.fleet import SimFleet
from bench.simnode.record import record
from comfyfleet.local.node import TINY_CHECKPOINTS

FILES_PER_NODE = 4
"""Descriptors a busy node may hold: its listening socket, a websocket, a couple of requests."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.simnode", description=__doc__)
    parser.add_argument("--count", type=int, default=1, help="how many nodes (default 1)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--base-port", type=int, default=None, help="first port; the next nodes count up from it"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=1.0,
        help="work per job whose graph has no test delay node (default 1.0)",
    )
    parser.add_argument("--speed", type=float, default=1.0, help="divides every duration")
    parser.add_argument("--no-previews", action="store_true", help="no binary preview frames")
    parser.add_argument(
        "--checkpoints",
        default=",".join(TINY_CHECKPOINTS),
        help="comma-separated checkpoint files the nodes list (default: the tiny local ones)",
    )
    parser.add_argument("--run-for", type=float, default=None, help="stop after this many seconds")
    parser.add_argument(
        "--record-object-info",
        action="store_true",
        help="rewrite bench/simnode/object_info.json from a real node, then exit",
    )
    parser.add_argument("--from-url", default=None, help="with --record-object-info: that node")
    return parser


def _raise_file_limit(count: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, count * FILES_PER_NODE + 256)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    fleet = SimFleet(
        args.count,
        host=args.host,
        base_port=args.base_port,
        seconds=args.seconds,
        speeds=[args.speed] * args.count,
        previews=not args.no_previews,
        models={"checkpoints": [name for name in args.checkpoints.split(",") if name]},
    )
    async with fleet:
        print("\n".join(fleet.urls), flush=True)
        print(f"{args.count} simulated ComfyUI nodes ready; Ctrl-C stops them", file=sys.stderr)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.run_for)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.record_object_info:
        print(record(args.from_url))
        return 0
    _raise_file_limit(args.count)
    try:
        asyncio.run(_serve(args))
    except OSError as exc:  # a port in use, too many open files
        print(f"cannot serve {args.count} nodes: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
