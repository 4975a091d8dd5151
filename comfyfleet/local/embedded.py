"""The embedded fleet (`comfyfleet up`): everything on one machine, supervised in the foreground.

Starts, in order: the Prefect server (`prefect.api_url`, SQLite under `<embedded.var_dir>/prefect`)
unless one answers there already, a local CPU ComfyUI node for each enabled node whose URL is on
this machine's loopback and that nothing answers yet, the job store schema (and, the first time,
an `admin` user whose generated password is printed once), the fleet's Prefect objects (blocks,
pools, queues, deployments), one worker process for the control pool and every node pool, the
fleet service (monitor, dispatcher) and the web process (REST gateway and Gradio UI on
`gateway.host:port`). Then it prints where things are, runs one smoke job, and supervises:

- a child that dies is reported (log line, also in the combined log) and started again with
  backoff (comfyfleet.local.supervisor);
- one worker process serves the control pool and every node pool (`--pools-matching
  'comfyui-*'`), including pools of nodes added later (`comfyfleet nodes add`, the REST admin
  API, a config reload, `comfyfleet node join`); a deleted pool stops being served;
- logs: `<logging.dir>/<component>.log` per component, `fleet.log` for all of them;
- `<embedded.var_dir>/run/up.pid` and `components.json` (pids, restarts) say what runs.

Ctrl-C, SIGTERM or `comfyfleet down` stops it all, the last started first, each process group
with SIGTERM, then SIGKILL after `embedded.stop_grace_s`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from urllib.parse import urlparse

import httpx

from comfyfleet.comfyui import ComfyUIError, probe_node
from comfyfleet.local.node import LocalComfyUI, ensure_comfyui_install
from comfyfleet.local.prefect_server import (
    PrefectServer,
    api_access,
    auth_string,
    auth_string_path,
    prefect_env,
)
from comfyfleet.local.supervisor import Child, Command, Supervisor, stop_process_group
from comfyfleet.logs import COMBINED, FORMAT, CombinedLog, configure_logging
from comfyfleet.settings import REPO_ROOT, NodeConfig, Settings

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 180.0


class StartError(RuntimeError):
    """The fleet could not start; the message says why and what to do."""


def pid_file(settings: Settings) -> Path:
    return settings.embedded.var_dir / "run" / "up.pid"


def components_file(settings: Settings) -> Path:
    return settings.embedded.var_dir / "run" / "components.json"


def _local_port(node: NodeConfig) -> int | None:
    """The port of a node this machine should run itself (loopback URL), else None."""
    url = urlparse(node.url)
    if url.hostname in ("127.0.0.1", "localhost") and url.port:
        return url.port
    return None


def _get_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _comfyui_answers(url: str) -> bool:
    try:
        probe_node(url, timeout=2)
    except ComfyUIError:
        return False
    return True


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _wait_for(url: str, *, child: Child | None, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and child.returncode() is not None:
            raise StartError(f"{what} exited before it was ready (log {child.log_path})")
        if _get_ok(url):
            return
        time.sleep(0.25)
    raise StartError(f"{what} did not answer {url} within {timeout:.0f} s")


class LocalNode:
    """A local ComfyUI node as a supervised child (its own log under the node's folder, linked
    from the logs directory)."""

    def __init__(self, node: LocalComfyUI, *, name: str, log_link: Path) -> None:
        self.node, self.name, self.log_path = node, name, log_link

    @property
    def pid(self) -> int | None:
        return self.node.pid

    def start(self) -> None:
        self.node.start()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.log_path.unlink()
        self.log_path.symlink_to(self.node.log_path)

    def returncode(self) -> int | None:
        if self.node.is_running():
            return None
        code = self.node.returncode
        return code if code is not None else 1

    def stop(self, *, grace_s: float) -> None:
        if self.node.process is not None:
            stop_process_group(self.node.process, grace_s=grace_s)


class _CombinedHandler(logging.Handler):
    def __init__(self, combined: CombinedLog) -> None:
        super().__init__()
        self.combined = combined
        self.setFormatter(logging.Formatter(FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.combined.write(f"[up] {self.format(record)}")


class EmbeddedFleet:
    """The processes of `make up`, started in order, supervised, stopped together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.var = settings.embedded.var_dir
        self.logs = settings.logging.dir
        api = urlparse(settings.prefect.api_url)
        if not api.hostname or not api.port:
            raise StartError(f"prefect.api_url {settings.prefect.api_url!r} needs a host and port")
        self.api_url = settings.prefect.api_url.rstrip("/")
        self.prefect_host, self.prefect_port = api.hostname, api.port
        self.ui_url = f"{api.scheme}://{api.hostname}:{api.port}"
        self.combined = CombinedLog(self.logs / f"{COMBINED}.log")
        emb = settings.embedded
        self.supervisor = Supervisor(
            backoff_s=emb.restart_backoff_s, backoff_max_s=emb.restart_backoff_max_s,
            grace_s=emb.stop_grace_s, on_event=lambda event, msg, child: self.write_state(),
        )  # fmt: skip
        self.admin_password: str | None = None
        self.admin_created = False
        self.auth: str | None = None
        """The Prefect API's auth string (`start` reads or creates it)."""

    @property
    def web_url(self) -> str:
        host = self.settings.gateway.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{shown}:{self.settings.gateway.port}"

    # -- start ---------------------------------------------------------------------------------

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.combined.start()
        self.auth = auth_string(auth_string_path(self.settings), create=True)
        os.environ.update(
            prefect_env(api_url=self.api_url, home=self.var / "prefect", auth=self.auth)
        )
        self._check_ports()
        self._start_prefect()
        self._start_nodes()
        self._prepare_store()
        self._apply()
        self._start_children()
        web = self.supervisor.child("web")
        _wait_for(
            f"{self.web_url}/api/health", child=web, what="the web process", timeout=READY_TIMEOUT_S
        )
        self.write_state()

    def _supervise(self, child: Child) -> None:
        self.supervisor.start(child)
        self.combined.follow(child.name, child.log_path)

    def _check_ports(self) -> None:
        gw = self.settings.gateway
        if not _port_free(gw.host or "0.0.0.0", gw.port):
            raise StartError(
                f"port {gw.port} on {gw.host} is in use: stop what holds it, or set "
                "gateway.port (COMFYFLEET_GATEWAY__PORT)"
            )

    def _start_prefect(self) -> None:
        if _get_ok(f"{self.api_url}/health"):
            access = api_access(self.api_url, self.auth)
            if access == "refused":
                raise StartError(
                    f"a Prefect server already runs at {self.api_url} with another auth string: "
                    "stop it, or put its string in prefect.auth_string_file "
                    f"({auth_string_path(self.settings)})"
                )
            if access == "open" and self.auth:
                logger.warning(
                    "Prefect server already running at %s WITHOUT auth: using it; restart it "
                    "under `comfyfleet up` to protect its API", self.api_url,
                )  # fmt: skip
            else:
                logger.info("Prefect server already running at %s: using it", self.api_url)
            return
        if not _port_free(self.prefect_host, self.prefect_port):
            raise StartError(
                f"port {self.prefect_port} is in use but no Prefect server answers "
                f"{self.api_url}/health: stop what holds it, or change prefect.api_url"
            )
        home = self.var / "prefect"
        home.mkdir(parents=True, exist_ok=True)
        spec = PrefectServer(
            home=home, port=self.prefect_port, host=self.prefect_host,
            database_url=self.settings.prefect.database_url, auth=self.auth,
            api_workers=self.settings.prefect.api_workers,
            redis_url=self.settings.prefect.redis_url,
        )  # fmt: skip
        try:
            env = spec.server_env()
        except ValueError as exc:
            raise StartError(str(exc)) from None
        logger.info("starting the Prefect server (database: %s)", spec.database)
        try:
            spec.migrate(env, self.logs / "prefect-server.log")
        except RuntimeError as exc:
            raise StartError(str(exc)) from None
        server = Command(
            "prefect-server", spec.command(), log_path=self.logs / "prefect-server.log",
            cwd=REPO_ROOT, env=env,
        )  # fmt: skip
        self._supervise(server)
        _wait_for(
            f"{self.api_url}/health", child=server, what="the Prefect server",
            timeout=READY_TIMEOUT_S,
        )  # fmt: skip
        logger.info("Prefect server ready at %s", self.api_url)
        services = spec.services_command()
        if services is not None:
            self._supervise(Command(
                "prefect-services", services, log_path=self.logs / "prefect-services.log",
                cwd=REPO_ROOT, env=env,
            ))  # fmt: skip

    def _start_nodes(self) -> None:
        wanted = []
        for node in self.settings.nodes:
            port = _local_port(node)
            if not node.enabled or port is None:
                continue
            if _comfyui_answers(node.url):
                logger.info("node %s: ComfyUI already answers at %s: using it", node.id, node.url)
                continue
            wanted.append((node, port))
        if not wanted:
            return
        install = ensure_comfyui_install(REPO_ROOT / "var")
        children = []
        for node, port in wanted:
            local = LocalComfyUI(install, self.var / "nodes" / node.id, port=port)
            name = f"comfyui-{node.id}"
            child = LocalNode(local, name=name, log_link=self.logs / f"{name}.log")
            self._supervise(child)
            children.append((node, child))
        for node, child in children:
            stats = child.node.wait_ready(timeout=READY_TIMEOUT_S)
            version = stats.get("system", {}).get("comfyui_version")
            logger.info("ComfyUI %s node %s ready at %s", version, node.id, node.url)

    def _prepare_store(self) -> None:
        from comfyfleet.auth import create_user, generate_password
        from comfyfleet.store import Database, list_users, upgrade

        db = Database.from_settings(self.settings)
        try:
            upgrade(db)
            if not [u for u in db.run(list_users, readonly=True) if u.role == "admin"]:
                password = generate_password()
                db.run(lambda s: create_user(s, username="admin", password=password, admin=True))
                self.admin_password, self.admin_created = password, True
                logger.info("created user admin (its password is shown once, on the terminal)")
        finally:
            db.dispose()

    def _apply(self) -> None:
        """The fleet's Prefect objects, applied by the Prefect layer's entry (`python -m
        deployments`: it loads the flows) with the same config file and environment."""
        applied = subprocess.run(
            [sys.executable, "-m", "deployments", "apply"], cwd=REPO_ROOT, capture_output=True,
            text=True, timeout=READY_TIMEOUT_S, check=False,
        )  # fmt: skip
        with (self.logs / "deployments.log").open("a") as log:
            log.write(applied.stdout + applied.stderr)
        if applied.returncode != 0:
            tail = "\n".join((applied.stdout + applied.stderr).splitlines()[-20:])
            raise StartError(
                f"applying the fleet to Prefect failed (`python -m deployments`):\n{tail}"
            )
        for line in applied.stdout.splitlines():
            logger.info("%s", line)

    def _start_children(self) -> None:
        from comfyfleet.fleet.provision import CONTROL_POOL, POOL_PREFIX

        worker = [sys.executable, "-m", "comfyfleet.worker", "--pool", CONTROL_POOL,
                  "--pools-matching", f"{POOL_PREFIX}*"]  # fmt: skip
        host = socket.gethostname()
        workers = [
            ("worker", worker),
            *((f"worker-{n}", [*worker, "--name", f"{host}-{n}"])
              for n in range(2, self.settings.embedded.workers + 1)),
        ]  # fmt: skip
        for name, argv in (
            *workers,
            ("fleet-service", [sys.executable, "-m", "comfyfleet.fleet"]),
            ("web", [sys.executable, "-m", "gradio_app"]),
        ):
            self._supervise(Command(name, argv, log_path=self.logs / f"{name}.log", cwd=REPO_ROOT))

    # -- run -----------------------------------------------------------------------------------

    def check(self) -> None:
        self.supervisor.check()

    def write_state(self) -> None:
        path = components_file(self.settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"pid": os.getpid(), "components": self.supervisor.state()}
        tmp = path.with_suffix(".part")
        tmp.write_text(json.dumps(doc, indent=2))
        os.replace(tmp, path)

    def banner(self) -> str:
        if self.admin_created:
            admin = f"admin / {self.admin_password}   (shown once: note it now)"
        else:
            admin = "admin (password shown at the first start; `comfyfleet users …` manages users)"
        rows = [
            ("web UI (Gradio)", f"{self.web_url}/"),
            ("REST API docs", f"{self.web_url}/docs"),
            ("metrics", f"{self.web_url}/metrics"),
            ("Prefect UI", self.ui_url),
            ("login", admin),
            ("logs", f"{self.logs}/ (all: {COMBINED}.log, or `comfyfleet logs -f`)"),
            ("stop", "Ctrl-C, or `make down` / `comfyfleet down`"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(["", "ComfyFleet is up:", *(f"  {k:<{width}}  {v}" for k, v in rows), ""])

    def stop(self) -> None:
        self.supervisor.stop_all()
        with contextlib.suppress(FileNotFoundError):
            components_file(self.settings).unlink()
        self.combined.close()


def _smoke_job(settings: Settings) -> None:
    """One text-to-image job through the dispatcher, as the `prefect` service user."""
    from comfyfleet import jobs
    from comfyfleet.auth import Principal
    from comfyfleet.store import Database
    from comfyfleet.store.users import ensure_service_user

    db = Database.from_settings(settings)
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
    except Exception as exc:
        logger.error("smoke job failed: %s", exc)
    finally:
        db.dispose()


def _running_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) else None


class _Interrupted(Exception):
    pass


def up(settings: Settings, *, smoke: bool | None = None) -> int:
    """Run the embedded fleet until interrupted."""
    configure_logging(settings)
    if not settings.nodes:
        logger.error("no nodes configured (comfyfleet.yaml `nodes:`)")
        return 2
    pids = pid_file(settings)
    running = _running_pid(pids)
    if running is not None and running != os.getpid():
        logger.error("the fleet runs already (pid %d); `comfyfleet down` stops it", running)
        return 1
    pids.parent.mkdir(parents=True, exist_ok=True)
    pids.write_text(str(os.getpid()))
    fleet = EmbeddedFleet(settings)
    logging.getLogger().addHandler(_CombinedHandler(fleet.combined))
    stopping = threading.Event()
    starting = True

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("got %s", signal.Signals(signum).name)
        stopping.set()
        if starting:
            raise _Interrupted

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        try:
            fleet.start()
        except StartError as exc:
            logger.error("the fleet did not start: %s", exc)
            return 1
        starting = False
        print(fleet.banner(), flush=True)
        if settings.embedded.smoke_job if smoke is None else smoke:
            threading.Thread(target=_smoke_job, args=(settings,), daemon=True).start()
        while not stopping.wait(0.5):
            fleet.check()
        return 0
    except _Interrupted:
        return 130
    finally:
        starting = False
        logger.info("stopping the fleet")
        fleet.stop()
        logger.info("fleet stopped")
        with contextlib.suppress(FileNotFoundError):
            pids.unlink()


def down(settings: Settings, *, timeout: float = 90.0) -> int:
    """Stop a running `comfyfleet up` (by its pid file) and wait until it has stopped."""
    path = pid_file(settings)
    pid = _running_pid(path)
    if pid is None:
        print(f"comfyfleet: nothing to stop (no running fleet in {path})")
        path.unlink(missing_ok=True)
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            print("comfyfleet: stopped")
            return 0
        time.sleep(0.2)
    # Its children get SIGTERM when it dies (PR_SET_PDEATHSIG).
    print(f"comfyfleet: process {pid} still running after {timeout:.0f} s; killing it")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return 1


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (exited, not yet reaped by its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
