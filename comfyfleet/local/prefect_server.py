"""Start and stop a local Prefect server (the embedded fleet and the test session use it).

Prefect is always used with `PREFECT_API_URL` set: its ephemeral mode starts a throwaway server
per script (5–12 s each, measured) and workers refuse it.

The server's own database is SQLite in its home unless `prefect.database_url` names a PostgreSQL
database (`postgresql+asyncpg://user:pw@host:5432/db`): it becomes the server's
`PREFECT_SERVER_DATABASE_CONNECTION_URL` and nothing else sees it. Prefect's migrations create the
`pg_trgm` extension, so the role needs CREATE on the database (pg_trgm is a trusted extension:
the database owner may create it) or an administrator creates it beforehand. Prefect supports no
other database (MySQL is refused by Prefect itself).

Scale-out (`prefect.api_workers` > 1): `prefect server start --workers N` runs N API processes on
one port (uvicorn's supervisor starts a new one when one dies) without the loop services, which
run in one more process (`prefect server services start`). The database is migrated once before
(`prefect server database upgrade`) and its block types registered once: API processes doing
either at start-up race on `CREATE TABLE` and on the block types' unique keys.
The processes share state through PostgreSQL and Redis (`prefect.redis_url`, prefect-redis:
messaging, causal ordering, lease storage), which is also what lets API processes on several
hosts act as one server behind a load balancer (README "Operations").

Auth: with an auth string (`prefect.auth_string_file`; `comfyfleet up` creates one, mode 0600)
the server starts with `PREFECT_SERVER_API_AUTH_STRING` and refuses every API request but
`/health` without it; each ComfyFleet process gets `PREFECT_API_AUTH_STRING`, which Prefect's
client sends as HTTP Basic (the Prefect UI asks for it once in the browser).
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from comfyfleet.local.supervisor import stop_process_group

logger = logging.getLogger(__name__)

DATABASE_ENV = "PREFECT_SERVER_DATABASE_CONNECTION_URL"
AUTH_ENV = "PREFECT_API_AUTH_STRING"
"""What a Prefect client sends (HTTP Basic) when the server wants an auth string."""
SERVER_AUTH_ENV = "PREFECT_SERVER_API_AUTH_STRING"
"""The server's own setting: every API request but /health must carry the string."""
_LEGACY_DATABASE_ENV = "PREFECT_API_DATABASE_CONNECTION_URL"
MIGRATE_ENV = "PREFECT_SERVER_DATABASE_MIGRATE_ON_START"
REGISTER_BLOCKS_ENV = "PREFECT_SERVER_REGISTER_BLOCKS_ON_START"
_REGISTER_BLOCK_TYPES = """
import asyncio
import prefect.plugins
from prefect.server.database import provide_database_interface
from prefect.server.models.block_registration import run_block_auto_registration

async def main():
    prefect.plugins.load_prefect_collections()
    async with await provide_database_interface().session() as session:
        await run_block_auto_registration(session=session)

asyncio.run(main())
"""


def server_database_env(database_url: str | None) -> dict[str, str]:
    """The server's database setting for a `prefect.database_url` ({} = SQLite in its home).

    `postgresql://…` and `postgres://…` get the asyncpg driver Prefect's server uses; anything
    but PostgreSQL or SQLite is refused here with the reason, not after a server start."""
    if not database_url:
        return {}
    try:
        url = make_url(database_url)
    except ArgumentError as exc:
        raise ValueError(f"prefect.database_url is not a database URL: {exc}") from exc
    backend = url.get_backend_name()
    if backend in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+asyncpg")
    elif backend == "sqlite":
        url = url.set(drivername="sqlite+aiosqlite")
    else:
        raise ValueError(
            f"prefect.database_url: Prefect's server runs on PostgreSQL or SQLite, not {backend} "
            "(the ComfyFleet job store is `database.url`, which may be MySQL)"
        )
    return {DATABASE_ENV: url.render_as_string(hide_password=False)}


_REDIS_MODULES = {
    "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
    "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
    "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
}
REDIS_URL_ENV = "PREFECT_REDIS_MESSAGING_URL"


def server_redis_env(redis_url: str | None) -> dict[str, str]:
    """The server's settings that put its messaging, event ordering and concurrency leases in
    Redis (prefect-redis) for a `prefect.redis_url` ({} = in memory, one process)."""
    return {**_REDIS_MODULES, REDIS_URL_ENV: redis_url} if redis_url else {}


def check_scale_out(api_workers: int, database_url: str | None, redis_url: str | None) -> None:
    """Refuse, with the setting to change, a multi-process server Prefect cannot run."""
    if api_workers <= 1:
        return
    backend = make_url(database_url).get_backend_name() if database_url else "sqlite"
    if backend not in ("postgresql", "postgres"):
        raise ValueError(
            f"prefect.api_workers is {api_workers}: several API processes need the Prefect "
            "server on PostgreSQL (set prefect.database_url), not SQLite"
        )
    if not redis_url:
        raise ValueError(
            f"prefect.api_workers is {api_workers}: several API processes share events and "
            "leases through Redis (set prefect.redis_url, e.g. redis://127.0.0.1:6379/0)"
        )


def auth_string(path: Path | None, *, create: bool = False) -> str | None:
    """The auth string kept in `path` (`prefect.auth_string_file`); None without a path, or
    when the file is missing and `create` is off. Created with mode 0600, 32 random bytes."""
    if path is None:
        return None
    path = Path(path)
    if path.is_file():
        return path.read_text().strip() or None
    if not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    value = "comfyfleet:" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value


def auth_headers(auth: str | None) -> dict[str, str]:
    """The header a Prefect client sends for `auth` (none without one)."""
    if not auth:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}


def api_access(api_url: str, auth: str | None, *, timeout: float = 2.0) -> str:
    """How the Prefect API at `api_url` treats us: `open` (answers without auth), `ok` (answers
    with `auth`), `refused` (wants another string), `down`."""
    url = f"{api_url.rstrip('/')}/admin/version"
    try:
        if httpx.get(url, timeout=timeout).status_code == 200:
            return "open"
        if auth and httpx.get(url, headers=auth_headers(auth), timeout=timeout).is_success:
            return "ok"
    except httpx.HTTPError:
        return "down"
    return "refused"


def auth_string_path(settings: Any) -> Path:
    """Where the fleet's auth string is kept: `prefect.auth_string_file`, else
    `<embedded.var_dir>/prefect-auth-string`."""
    chosen = settings.prefect.auth_string_file
    return Path(chosen) if chosen else Path(settings.embedded.var_dir) / "prefect-auth-string"


def use_prefect(settings: Any) -> None:
    """Point this process's Prefect client at `prefect.api_url` with the fleet's auth string
    (values already in the environment win)."""
    os.environ.setdefault("PREFECT_API_URL", settings.prefect.api_url)
    auth = auth_string(auth_string_path(settings))
    if auth:
        os.environ.setdefault(AUTH_ENV, auth)
    context = sys.modules.get("prefect.context")
    if context is not None:  # Prefect read its settings at import: read them again
        context.refresh_global_settings_context()


def prefect_env(*, api_url: str, home: Path, auth: str | None = None) -> dict[str, str]:
    """Environment every ComfyFleet process that talks to Prefect runs with (`auth`: the API's
    auth string, sent by every client)."""
    extra = {AUTH_ENV: auth} if auth else {}
    return {
        **extra,
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_UI_ENABLED": os.environ.get("PREFECT_UI_ENABLED", "true"),
        # Workers: runs are few (a long-lived shift per node; pinned runs started from Prefect)
        # and the worker is woken by each run's Scheduled event, so the poll is only a fallback.
        "PREFECT_WORKER_QUERY_SECONDS": "5",
        "PREFECT_WORKER_HEARTBEAT_SECONDS": "10",
        # Per-run INFO lines (task run started/finished) cost the server a write each and say
        # nothing the run's states do not: only warnings and errors are shipped to the API.
        "PREFECT_LOGGING_HANDLERS_API_LEVEL": "WARNING",
        # Logs reach the UI within a fraction of a second instead of 2 s batches.
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
    }


@dataclass
class PrefectServer:
    """A `prefect server start` child process with its own PREFECT_HOME (SQLite inside it)."""

    home: Path
    port: int
    host: str = "127.0.0.1"
    log_path: Path | None = None
    database_url: str | None = None  # `prefect.database_url`; None = SQLite in `home`
    auth: str | None = None  # the API's auth string; None = no auth
    api_workers: int = 1  # `prefect.api_workers`
    redis_url: str | None = None  # `prefect.redis_url`
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _services: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        return prefect_env(api_url=self.api_url, home=self.home, auth=self.auth)

    def server_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The server process's environment: `base` (default: ours) + `env()` + its database.

        A database URL inherited from the caller's environment never leaks in: the setting
        decides, so two servers started from one process keep their own databases."""
        check_scale_out(self.api_workers, self.database_url, self.redis_url)
        env = dict(os.environ if base is None else base)
        for name in (DATABASE_ENV, _LEGACY_DATABASE_ENV, SERVER_AUTH_ENV, MIGRATE_ENV,
                     REGISTER_BLOCKS_ENV, *_REDIS_MODULES, REDIS_URL_ENV):  # fmt: skip
            env.pop(name, None)
        auth = {SERVER_AUTH_ENV: self.auth} if self.auth else {}
        # several API processes: `migrate` prepared the database once, none of them does it
        prepared = {MIGRATE_ENV: "false", REGISTER_BLOCKS_ENV: "false"}
        return {
            **env, **self.env(), **server_database_env(self.database_url),
            **server_redis_env(self.redis_url), **auth,
            **(prepared if self.api_workers > 1 else {}),
        }  # fmt: skip

    @property
    def database(self) -> str:
        """Where the server keeps its state, for logs (password hidden)."""
        if not self.database_url:
            return f"SQLite in {self.home}"
        return make_url(self.database_url).render_as_string(hide_password=True)

    def command(self) -> list[str]:
        """The server's command line (`prefect server start` on this host and port; with
        several API processes, `--workers N`, which leaves the loop services out)."""
        workers = ["--workers", str(self.api_workers)] if self.api_workers > 1 else []
        return [
            sys.executable, "-m", "prefect", "server", "start",
            "--host", self.host, "--port", str(self.port), *workers,
        ]  # fmt: skip

    def migrate(self, env: dict[str, str], log_path: Path) -> None:
        """With several API processes, bring the database to Prefect's schema and register the
        block types first, once (the processes then start with both off)."""
        if self.api_workers <= 1:
            return
        steps = {
            "prefect server database upgrade": [
                sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"
            ],
            "block type registration": [sys.executable, "-c", _REGISTER_BLOCK_TYPES],
        }  # fmt: skip
        for what, argv in steps.items():
            with log_path.open("ab") as log:
                done = subprocess.run(
                    argv, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=600, check=False
                )
            if done.returncode != 0:
                raise RuntimeError(f"{what} exited with {done.returncode} (log: {log_path})")

    def services_command(self) -> list[str] | None:
        """The loop services' own process when the API runs in several (None: in the API's)."""
        if self.api_workers <= 1:
            return None
        return [sys.executable, "-m", "prefect", "server", "services", "start"]

    def start(self, *, timeout: float = 120.0) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path or self.home / "server.log"
        self.log_path = log_path
        env = self.server_env()
        logger.info(
            "starting Prefect server on %s (home %s, database %s)",
            self.ui_url, self.home, self.database,
        )  # fmt: skip
        self.migrate(env, log_path)
        self._proc = _spawn(self.command(), env, log_path)
        self.wait_ready(timeout=timeout)
        services = self.services_command()
        if services is not None:
            services_log = log_path.with_name(log_path.stem + "-services.log")
            self._services = _spawn(services, env, services_log)

    def wait_ready(self, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(
                    f"Prefect server exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"Prefect server not ready after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, *, timeout: float = 20.0) -> None:
        for proc in (self._services, self._proc):
            if proc is not None and proc.poll() is None:
                stop_process_group(proc, grace_s=timeout)
        self._proc = self._services = None

    def api_pids(self) -> list[int]:
        """The API processes serving the port: the server's own, or with several API
        processes the children of uvicorn's supervisor (what a test kills to lose one)."""
        if self._proc is None:
            return []
        if self.api_workers <= 1:
            return [self._proc.pid]
        children = Path(f"/proc/{self._proc.pid}/task/{self._proc.pid}/children")
        try:
            pids = [int(pid) for pid in children.read_text().split()]
        except OSError:
            return []
        return [pid for pid in pids if b"spawn_main" in _cmdline(pid)]  # not the resource tracker


def _spawn(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """A child in a session of its own, its output appended to `log_path`."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
