"""The embedded fleet (`comfyfleet up`): everything on one machine, supervised in the foreground.

Starts, in order: the Prefect server (127.0.0.1:4200, SQLite under `var/prefect/`), a local CPU
ComfyUI node for each configured node whose URL is on this machine's loopback and that nothing
answers yet, the job store schema (and, the first time, an `admin` user whose generated password
is printed once), the fleet's Prefect objects (blocks, pools, queues, deployments), one worker
process for all pools, the fleet service (monitor, dispatcher) and the web process (REST gateway
and Gradio UI on 127.0.0.1:8000). Then it runs one smoke job through the dispatcher, prints where
things are, and waits.
Ctrl-C, SIGTERM or `comfyfleet down` stops it all in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx

from comfyfleet.localnode import LocalComfyUI, ensure_comfyui_install
from comfyfleet.prefect_server import PrefectServer
from comfyfleet.settings import REPO_ROOT, NodeConfig, Settings, get_settings

logger = logging.getLogger(__name__)

VAR = REPO_ROOT / "var"
PID_FILE = VAR / "run" / "up.pid"


def _local_port(node: NodeConfig) -> int | None:
    """The port of a node this machine should run itself (loopback URL), else None."""
    url = urlparse(node.url)
    if url.hostname in ("127.0.0.1", "localhost") and url.port:
        return url.port
    return None


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url.rstrip('/')}/system_stats", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


class EmbeddedFleet:
    """The processes of `make up`, started and stopped together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        api = urlparse(settings.prefect.api_url)
        self.server = PrefectServer(
            home=VAR / "prefect", port=api.port or 4200, host=api.hostname or "127.0.0.1",
            log_path=VAR / "logs" / "prefect-server.log",
            database_url=settings.prefect.database_url,
        )  # fmt: skip
        self.nodes: list[LocalComfyUI] = []
        self.children: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        (VAR / "logs").mkdir(parents=True, exist_ok=True)
        os.environ.update(self.server.env())
        if _answers_health(self.server.api_url):
            logger.info("Prefect server already running at %s", self.server.api_url)
        else:
            self.server.start(timeout=180)
        logger.info("Prefect server and UI: %s", self.server.ui_url)
        self._start_nodes()
        self._prepare_store()
        self._apply()
        self._start_children()

    def _start_nodes(self) -> None:
        local = [(n, _local_port(n)) for n in self.settings.nodes if n.enabled]
        wanted = [(n, p) for n, p in local if p is not None and not _answers(n.url)]
        if not wanted:
            return
        install = ensure_comfyui_install(VAR)
        for node, port in wanted:
            process = LocalComfyUI(
                install, VAR / "nodes" / node.id, port=port, die_with_parent=True
            )
            process.start()
            self.nodes.append(process)
        for process in self.nodes:
            stats = process.wait_ready(timeout=120)
            logger.info(
                "ComfyUI %s ready at %s (log %s)",
                stats.get("system", {}).get("comfyui_version"), process.url, process.log_path,
            )  # fmt: skip

    def _apply(self) -> None:
        from deployments import apply_fleet

        asyncio.run(apply_fleet(self.settings.nodes))
        for node in self.settings.nodes:
            logger.info("node %s → pool comfyui-%s, deployments */%s", node.id, node.id, node.id)

    def _prepare_store(self) -> None:
        from comfyfleet.auth import create_user, generate_password
        from comfyfleet.store import Database, list_users, upgrade

        db = Database.from_settings(self.settings)
        try:
            upgrade(db)
            if not [u for u in db.run(list_users, readonly=True) if u.role == "admin"]:
                password = generate_password()
                db.run(lambda s: create_user(s, username="admin", password=password, admin=True))
                logger.info("created user admin with password %s (shown once)", password)
        finally:
            db.dispose()

    def _start_children(self) -> None:
        from deployments import CONTROL_POOL, pool_name

        worker = [sys.executable, "-m", "comfyfleet.worker", "--pool", CONTROL_POOL]
        for node in self.settings.nodes:
            worker += ["--pool", pool_name(node.id)]
        for name, args in (
            ("worker", worker),
            ("fleet", [sys.executable, "-m", "comfyfleet.fleet"]),
            ("web", [sys.executable, "-m", "gradio_app"]),
        ):
            log = (VAR / "logs" / f"{name}.log").open("ab")
            self.children[name] = subprocess.Popen(
                args, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            logger.info("%s pid %d (log var/logs/%s.log)", name, self.children[name].pid, name)

    def stop(self) -> None:
        for proc in reversed(list(self.children.values())):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        for process in reversed(self.nodes):
            process.stop()
        self.server.stop()

    def alive(self) -> str | None:
        """The name of a child that died, or None while all run."""
        for name, proc in self.children.items():
            if proc.poll() is not None:
                return name
        for process in self.nodes:
            if not process.is_running():
                return f"ComfyUI node {process.url}"
        return None


def _answers_health(api_url: str) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _smoke_job() -> None:
    """One text-to-image job through the dispatcher, as the `prefect` service user."""
    from comfyfleet import jobs
    from comfyfleet.auth import Principal
    from comfyfleet.store import Database
    from comfyfleet.store.users import ensure_service_user

    db = Database.from_settings()
    try:
        principal = Principal(user=db.run(ensure_service_user))
        started = time.monotonic()
        job = jobs.submit(
            db, jobs.JobRequest(workflow="sd15-basic", params={"prompt": "a lighthouse at dawn"}),
            principal=principal,
        )  # fmt: skip
        job = jobs.wait(db, job.id, timeout=300)
        logger.info(
            "smoke job %s: %s on %s in %.1fs → %s", job.id, job.status, job.node,
            time.monotonic() - started, ", ".join(o.path for o in job.outputs) or job.error,
        )  # fmt: skip
    finally:
        db.dispose()


def up(*, smoke: bool = True) -> int:
    """Run the embedded fleet until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = get_settings()
    if not settings.nodes:
        logger.error("no nodes configured (comfyfleet.yaml `nodes:`)")
        return 2
    PID_FILE.parent.mkdir(parents=True, exist_ok=True)
    PID_FILE.write_text(str(os.getpid()))
    fleet = EmbeddedFleet(settings)
    stopping = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        fleet.start()
        if smoke:
            _smoke_job()
        logger.info(
            "fleet up: web UI and REST http://%s:%d (docs at /docs), Prefect UI %s — try: "
            "PREFECT_API_URL=%s prefect deployment run 'text-to-image/fleet' -p prompt=\"a red "
            "fox\" --watch — Ctrl-C or `make down` stops it",
            settings.gateway.host, settings.gateway.port, fleet.server.ui_url, fleet.server.api_url,
        )  # fmt: skip
        while not stopping:
            dead = fleet.alive()
            if dead:
                logger.error("%s exited; stopping the fleet (see var/logs/)", dead)
                return 1
            time.sleep(0.5)
        return 0
    finally:
        logger.info("stopping the fleet")
        fleet.stop()
        with contextlib.suppress(FileNotFoundError):
            PID_FILE.unlink()


def down() -> int:
    """Stop a running `comfyfleet up` (by its pid file)."""
    try:
        pid = int(Path(PID_FILE).read_text())
    except (FileNotFoundError, ValueError):
        print("comfyfleet: nothing to stop (no var/run/up.pid)")
        return 0
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        PID_FILE.unlink(missing_ok=True)
        return 0
    for _ in range(300):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print("comfyfleet: stopped")
            return 0
        time.sleep(0.1)
    print(f"comfyfleet: process {pid} still running after 30 s")
    return 1


def register(subparsers: object) -> None:
    """`comfyfleet up` and `comfyfleet down`."""
    parser = subparsers.add_parser("up", help="run the embedded fleet in the foreground")  # type: ignore[attr-defined]
    parser.add_argument("--no-smoke", action="store_true", help="skip the smoke job at start")
    parser.set_defaults(func=lambda args: up(smoke=not args.no_smoke))
    parser = subparsers.add_parser("down", help="stop what `comfyfleet up` started")  # type: ignore[attr-defined]
    parser.set_defaults(func=lambda args: down())
