"""``python -m comfyfleet.local.node``: build the local ComfyUI, or run one node in the foreground.

    python -m comfyfleet.local.node setup [--var DIR] [--force]
    python -m comfyfleet.local.node run [--port 8188] [--id local-1] [--var DIR]
                                       [--custom-nodes DIR ...] [--speed 1.0]

``run`` keeps the node in the foreground until Ctrl-C / SIGTERM, then stops it (SIGTERM, then
SIGKILL). Its folders are ``<var>/nodes/<id>/`` (log: ``comfyui.log`` there).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from comfyfleet.local.node.process import ComfyUIStartError, LocalComfyUI
from comfyfleet.local.node.venv import InstallError, ensure_comfyui_install
from comfyfleet.settings import REPO_ROOT

logger = logging.getLogger("comfyfleet.local.node")

DEFAULT_VAR = REPO_ROOT / "var"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m comfyfleet.local.node", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    setup = sub.add_parser("setup", help="build or reuse the ComfyUI venv and tiny checkpoints")
    setup.add_argument("--var", type=Path, default=DEFAULT_VAR, help="runtime data folder")
    setup.add_argument("--force", action="store_true", help="rebuild everything")
    run = sub.add_parser("run", help="run one ComfyUI node in the foreground")
    run.add_argument("--var", type=Path, default=DEFAULT_VAR, help="runtime data folder")
    run.add_argument("--port", type=int, default=8188)
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--id", default="local-1", help="node id (names the folder under var/nodes)")
    run.add_argument(
        "--custom-nodes",
        type=Path,
        action="append",
        default=[],
        help="a folder of custom node packages (repeatable)",
    )
    run.add_argument("--speed", type=float, default=1.0, help="test delay node speed factor")
    run.add_argument("--ready-timeout", type=float, default=120.0)
    return parser


def _setup(args: argparse.Namespace) -> int:
    install = ensure_comfyui_install(args.var, force=args.force)
    logger.info("python:      %s", install.python)
    logger.info("main.py:     %s", install.main_py)
    logger.info("checkpoints: %s", install.checkpoints_dir)
    return 0


def _run(args: argparse.Namespace) -> int:
    install = ensure_comfyui_install(args.var)
    node = LocalComfyUI(
        install,
        args.var / "nodes" / args.id,
        port=args.port,
        host=args.host,
        custom_nodes=args.custom_nodes,
        speed=args.speed,
    )
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("got %s; stopping the node", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    node.start()
    try:
        stats = node.wait_ready(args.ready_timeout)
        version = stats.get("system", {}).get("comfyui_version", "?")
        logger.info("ComfyUI %s node %s ready on %s (pid %s)", version, args.id, node.url, node.pid)
        while not stop.is_set():
            if not node.is_running():
                logger.error("ComfyUI exited unexpectedly\n%s", node.log_tail())
                return 1
            stop.wait(0.5)
    except ComfyUIStartError as exc:
        logger.error("%s", exc)
        return 1
    finally:
        started = time.monotonic()
        code = node.stop()
        logger.info("node stopped (exit %s, %.1f s)", code, time.monotonic() - started)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m comfyfleet.local.node``."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        if args.command == "setup":
            return _setup(args)
        return _run(args)
    except InstallError as exc:
        logger.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
