"""The processes a benchmark runs against: real ComfyUI CPU nodes and a ComfyFleet control plane.

- `NodeSet`: ComfyUI nodes with the test delay node (`tests/comfy_nodes`), started in parallel on
  free loopback ports under `var/bench/<run>/nodes/`, each with a speed factor (speed 2 runs the
  delay node twice as fast). Nodes outlive control planes, so B3 can reuse B1's nodes.
- `ControlPlane`: a Prefect server (SQLite in its home, or a fresh PostgreSQL database), the job
  store (a SQLite file or a fresh MariaDB database), the fleet's Prefect objects
  (`deployments.apply_fleet`), one `python -m comfyfleet.worker` for every pool, the fleet service
  (`python -m comfyfleet.fleet`) and, on request, the REST gateway (`python -m bench.gateway`).
  Every child gets the same environment (`COMFYFLEET_CONFIG`, `PREFECT_API_URL`, …) and a log file.

Everything is torn down by PID (process group), never by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from comfyfleet.local.node import LocalComfyUI, ensure_comfyui_install, free_port
from comfyfleet.local.prefect_server import PrefectServer, prefect_env, server_database_env
from comfyfleet.local.supervisor import stop_process_group
from comfyfleet.settings import REPO_ROOT, Settings

logger = logging.getLogger(__name__)

VAR_DIR = REPO_ROOT / "var"
BENCH_VAR = VAR_DIR / "bench"
TEST_CUSTOM_NODES = REPO_ROOT / "tests" / "comfy_nodes"
WORKFLOW_DIRS = [
    REPO_ROOT / "workflows",
    REPO_ROOT / "tests" / "workflows",
    REPO_ROOT / "bench" / "workflows",
]
PG_ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
MYSQL_ADMIN = {"host": "127.0.0.1", "port": 3306, "user": "root"}
BENCH_USER = "bench"
BENCH_PASSWORD = "bench-password-not-secret"


@dataclass
class BenchNode:
    id: str
    speed: float
    process: LocalComfyUI

    @property
    def url(self) -> str:
        return self.process.url


class NodeSet:
    """ComfyUI nodes for the benchmarks, keyed by id."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: dict[str, BenchNode] = {}
        self._install: Any = None

    def ensure(
        self, specs: Sequence[tuple[str, float]], *, timeout: float = 180.0
    ) -> list[BenchNode]:
        """Start the nodes of `specs` ((id, speed)) not running yet; all are ready on return."""
        if self._install is None:
            self._install = ensure_comfyui_install(VAR_DIR)
        fresh: list[BenchNode] = []
        for node_id, speed in specs:
            if node_id in self.nodes:
                continue
            process = LocalComfyUI(
                self._install, self.root / node_id, custom_nodes=[TEST_CUSTOM_NODES], speed=speed
            )
            process.start()
            node = self.nodes[node_id] = BenchNode(node_id, speed, process)
            fresh.append(node)
        if fresh:
            with ThreadPoolExecutor(max_workers=len(fresh)) as pool:
                list(pool.map(lambda n: n.process.wait_ready(timeout), fresh))
        return [self.nodes[node_id] for node_id, _ in specs]

    def __getitem__(self, node_id: str) -> BenchNode:
        return self.nodes[node_id]

    def pids(self) -> list[int]:
        return [n.process.pid for n in self.nodes.values() if n.process.pid is not None]

    def stop_all(self) -> None:
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                node.process.stop(timeout=5)
        self.nodes.clear()


# -- child processes -------------------------------------------------------------------------


@dataclass
class Child:
    """A child process in its own process group, with a log file."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path = REPO_ROOT
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            stop_process_group(proc, grace_s=timeout)


def _wait_http(url: str, timeout: float, child: Child | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and not child.alive():
            raise RuntimeError(f"{child.name} exited before it was ready:\n{child.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    tail = child.log_tail() if child is not None else ""
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s\n{tail}")


# -- databases -------------------------------------------------------------------------------


BENCH_REDIS_URL = "redis://127.0.0.1:6379/6"
"""The Redis database of a control plane with several Prefect API processes (emptied around it)."""


def _flush_redis() -> None:
    import redis

    redis.Redis.from_url(BENCH_REDIS_URL).flushdb()


def postgres_available() -> bool:
    try:
        import asyncpg  # noqa: F401  (ships with prefect)
    except ImportError:
        return False
    return _run_sql_pg("SELECT 1") is not None


def _run_sql_pg(sql: str) -> Any:
    import asyncpg

    async def go() -> Any:
        conn = await asyncpg.connect(**PG_ADMIN, database="postgres", timeout=5)
        try:
            return await conn.execute(sql)
        finally:
            await conn.close()

    try:
        return asyncio.run(go())
    except Exception as exc:  # unreachable server or a failed statement
        logger.warning("PostgreSQL: %s failed: %s", sql, exc)
        return None


def mysql_available() -> bool:
    return _run_sql_mysql("SELECT 1")


def _run_sql_mysql(sql: str) -> bool:
    import pymysql

    try:
        conn = pymysql.connect(**MYSQL_ADMIN, connect_timeout=3, autocommit=True)
    except Exception:
        return False
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
        return True
    except Exception as exc:
        logger.warning("MariaDB: %s failed: %s", sql, exc)
        return False
    finally:
        conn.close()


# -- the control plane -----------------------------------------------------------------------


@dataclass
class NodeEntry:
    """A node as the control plane's comfyfleet.yaml lists it."""

    id: str
    url: str
    capabilities: list[str]
    capacity: int = 2


@dataclass
class ControlPlane:
    """Prefect server + job store + worker + fleet service (+ gateway) for one set of nodes."""

    root: Path
    nodes: list[NodeEntry]
    prefect_db: str = "sqlite"  # or "postgres"
    store_db: str = "sqlite"  # or "mysql"
    gateway: bool = False
    strategy: str = "least_loaded"
    api_workers: int = 1  # Prefect API processes (> 1: PostgreSQL and Redis, as `prefect.*`)
    workers: int = 1  # ComfyFleet worker processes, each serving every node pool
    children: dict[str, Child] = field(default_factory=dict)
    prefect_port: int = 0
    gateway_port: int = 0
    _pg_db: str | None = None
    _mysql_db: str | None = None
    settings: Settings | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def config_path(self) -> Path:
        return self.root / "comfyfleet.yaml"

    def store_url(self) -> str:
        if self._mysql_db:
            return f"mysql+pymysql://root@127.0.0.1:3306/{self._mysql_db}"
        return f"sqlite:///{self.root / 'comfyfleet.db'}"

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            **prefect_env(api_url=self.api_url, home=self.root / "prefect-home"),
            "PREFECT_UI_ENABLED": "false",
            "COMFYFLEET_CONFIG": str(self.config_path),
            "PYTHONPATH": str(REPO_ROOT),
        }
        # the server's database through the supported switch (`prefect.database_url`)
        env.update(server_database_env(self.prefect_database_url()))
        return env

    def prefect_database_url(self) -> str | None:
        if self._pg_db:
            return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{self._pg_db}"
        return None

    def _write_config(self) -> None:
        config = {
            "routing": {"strategy": self.strategy},
            "nodes": [
                {"id": n.id, "url": n.url, "capacity": n.capacity, "capabilities": n.capabilities}
                for n in self.nodes
            ],
            "store": {
                "outputs_dir": str(self.root / "outputs"),
                "inputs_dir": str(self.root / "inputs"),
            },
            "database": {"url": self.store_url()},
            "prefect": {"api_url": self.api_url, "database_url": self.prefect_database_url()},
            "workflow_dirs": [str(p) for p in WORKFLOW_DIRS],
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.settings = Settings(**config)

    def start(self) -> None:
        started = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        stamp = f"{time.strftime('%Y%m%d%H%M%S')}_{secrets.token_hex(3)}"
        if self.prefect_db == "postgres":
            self._pg_db = f"cfbench_prefect_{stamp}"
            if _run_sql_pg(f'CREATE DATABASE "{self._pg_db}"') is None:
                raise RuntimeError("could not create the PostgreSQL database for Prefect")
        if self.store_db == "mysql":
            self._mysql_db = f"cfbench_store_{stamp}"
            if not _run_sql_mysql(
                f"CREATE DATABASE `{self._mysql_db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            ):
                raise RuntimeError("could not create the MariaDB database for the job store")
        self.prefect_port = free_port()
        self._write_config()
        env = self.env()
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        spec = PrefectServer(
            home=self.root / "prefect-home", port=self.prefect_port,
            database_url=self.prefect_database_url(), api_workers=self.api_workers,
            redis_url=BENCH_REDIS_URL if self.api_workers > 1 else None,
        )  # fmt: skip
        if self.api_workers > 1:
            _flush_redis()
            server_env = spec.server_env(env)
            spec.migrate(server_env, logs / "prefect-server.log")
        else:
            server_env = env
        server = self.children["prefect-server"] = Child(
            "prefect-server", spec.command(), server_env, logs / "prefect-server.log"
        )
        server.start()
        self._prepare_store()
        _wait_http(f"{self.api_url}/health", 240, server)
        services = spec.services_command()
        if services is not None:
            self.children["prefect-services"] = Child(
                "prefect-services", services, server_env, logs / "prefect-services.log"
            )
            self.children["prefect-services"].start()
        self.timings["prefect_server_ready_s"] = time.monotonic() - started
        applied = time.monotonic()
        self._apply()
        self.timings["apply_fleet_s"] = time.monotonic() - applied
        from deployments import pool_name

        pools = [a for node in self.nodes for a in ("--pool", pool_name(node.id))]
        for n in range(1, self.workers + 1):
            name, label = ("worker", "bench") if n == 1 else (f"worker-{n}", f"bench-{n}")
            args = [sys.executable, "-m", "comfyfleet.worker", "--name", label, *pools]
            self.children[name] = Child(name, args, env, logs / f"{name}.log")
        self.children["fleet-service"] = Child(
            "fleet-service",
            [sys.executable, "-m", "comfyfleet.fleet"],
            env,
            logs / "fleet-service.log",
        )
        if self.gateway:
            self.gateway_port = free_port()
            self.children["gateway"] = Child(
                "gateway",
                [sys.executable, "-m", "bench.gateway", "--port", str(self.gateway_port)],
                env,
                logs / "gateway.log",
            )
        for name, child in self.children.items():
            if name.startswith("worker") or name in ("fleet-service", "gateway"):
                child.start()
        if self.gateway:
            _wait_http(f"{self.gateway_url}/api/health", 120, self.children["gateway"])
        self.timings["start_s"] = time.monotonic() - started

    def _prepare_store(self) -> None:
        from comfyfleet.store import Database, upgrade

        db = Database(self.store_url())
        try:
            upgrade(db)
        finally:
            db.dispose()

    def _apply(self) -> None:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from comfyfleet.settings import NodeConfig
        from deployments import apply_fleet

        nodes = [
            NodeConfig(id=n.id, url=n.url, capacity=n.capacity, capabilities=n.capabilities)
            for n in self.nodes
        ]
        with temporary_settings(updates={PREFECT_API_URL: self.api_url}):
            asyncio.run(apply_fleet(nodes))

    @contextlib.contextmanager
    def prefect(self) -> Iterator[None]:
        """Prefect client calls in this process go to this control plane's server."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.api_url}):
            yield

    def database(self) -> Any:
        from comfyfleet.store import Database

        return Database(self.store_url())

    def bench_principal(self, db: Any) -> Any:
        """The `bench` admin user (created on first use) as a Principal."""
        from comfyfleet.auth import Principal, create_user
        from comfyfleet.store.models import User

        def get_or_create(session: Any) -> Any:
            user = session.query(User).filter_by(username=BENCH_USER).one_or_none()
            if user is None:
                user = create_user(
                    session, username=BENCH_USER, password=BENCH_PASSWORD, admin=True
                )
            session.flush()
            session.expunge(user)
            return user

        return Principal(user=db.run(get_or_create))

    def bench_token(self, db: Any) -> str:
        from comfyfleet.auth import issue_token

        principal = self.bench_principal(db)
        return db.run(lambda s: issue_token(s, principal=principal, ttl_minutes=600)).token

    def pids(self) -> dict[str, int]:
        return {name: c.pid for name, c in self.children.items() if c.pid is not None and c.alive()}

    def check_alive(self) -> None:
        for child in self.children.values():
            if not child.alive():
                raise RuntimeError(f"{child.name} died:\n{child.log_tail()}")

    def stop(self) -> None:
        workers = sorted(n for n in self.children if n.startswith("worker"))
        order = ("gateway", "fleet-service", *workers, "process-worker", "prefect-services",
                 "prefect-server")  # fmt: skip
        for name in order:
            child = self.children.pop(name, None)
            if child is not None:
                child.stop(timeout=20 if name == "prefect-server" else 10)
        for child in list(self.children.values()):
            child.stop()
        self.children.clear()
        if self._pg_db:
            _run_sql_pg(f'DROP DATABASE IF EXISTS "{self._pg_db}" WITH (FORCE)')
            self._pg_db = None
        if self.api_workers > 1:
            _flush_redis()
        if self._mysql_db:
            _run_sql_mysql(f"DROP DATABASE IF EXISTS `{self._mysql_db}`")
            self._mysql_db = None
