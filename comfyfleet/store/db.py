"""Engines, sessions and retried transactions for the ComfyFleet database.

`make_engine(url)` applies the settings each backend needs:

- MySQL/MariaDB (`mysql+pymysql://…`): `pool_pre_ping` (a connection that died with a server
  restart is replaced at checkout instead of failing the first statement), `pool_recycle` below
  the server's `wait_timeout`, `utf8mb4`, connect/read/write timeouts, and READ COMMITTED
  isolation (fewer gap locks, so fewer deadlocks between the dispatcher and writers; every
  state change in the repositories is a guarded `UPDATE … WHERE status IN (…)`, which reads the
  latest committed row under any isolation level).
- SQLite (the single-host default): WAL, `foreign_keys=ON`, a 30 s busy timeout, and write
  transactions opened with `BEGIN IMMEDIATE` (the write lock is taken at the start, so two
  writers queue instead of failing with "database is locked" half-way through). Read-only
  sessions (`readonly=True`) use a plain deferred `BEGIN` and never block writers.

`Database` bundles an engine and its session factories. `Database.session()` is a transaction
scope (commit on success, rollback on error). `Database.run(fn)` runs `fn(session)` in a
transaction and runs it again, in a fresh session, when the failure is transient: a dropped or
refused connection (server restart), a deadlock, a lock wait timeout, SQLite busy. `fn` must
therefore be safe to run twice: generate ids before calling `run`, not inside `fn`. A connection
lost during COMMIT is ambiguous (the commit may have happened); the repositories' guarded
updates make a second run of the same state change a no-op, and ids chosen up front turn a
repeated insert into a duplicate-key error instead of a second row.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import URL, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_RETRY_S = 30.0
"""How long `Database.run` keeps retrying a transient failure (a MariaDB restart takes seconds)."""

_READONLY = "comfyfleet_readonly"

# MySQL/MariaDB error codes worth retrying the whole transaction for.
_MYSQL_RETRYABLE = {
    1053,  # server shutdown in progress
    1205,  # lock wait timeout
    1213,  # deadlock found
    1927,  # connection was killed (MariaDB)
    2003,  # can't connect (server down or restarting)
    2006,  # server has gone away
    2013,  # lost connection during query
    2055,  # lost connection (system error)
    4031,  # disconnected by the server (inactivity)
}


def is_mysql(bind: Engine | Session) -> bool:
    engine = bind.get_bind() if isinstance(bind, Session) else bind
    return engine.dialect.name in ("mysql", "mariadb")


POOL_SIZE = 20
"""Connections a MySQL/MariaDB engine keeps open: as many as a process's threads use at once
under load (the gateway's sync handlers and `to_thread` calls). With SQLAlchemy's default of 5,
a burst of REST submits opened and closed a connection (TCP, auth and a TLS context in pymysql)
for most transactions: 22 ms of gateway CPU per job on MariaDB, against 6.6 on SQLite."""
POOL_OVERFLOW = 20


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """An engine for `url` with the backend's safe settings; `kwargs` go to `create_engine`."""
    url = make_url(url)
    backend = url.get_backend_name()
    options: dict[str, Any] = {}
    if backend in ("mysql", "mariadb"):
        if "charset" not in url.query:
            url = url.update_query_dict({"charset": "utf8mb4"})
        connect_args: dict[str, Any] = {"connect_timeout": 5}
        if url.get_driver_name() == "pymysql":
            connect_args.update(read_timeout=60, write_timeout=60)
        options = {
            "pool_pre_ping": True,
            "pool_recycle": 1800,
            "isolation_level": "READ COMMITTED",
            "connect_args": connect_args,
        }
        if "poolclass" not in kwargs:  # e.g. migrations use a NullPool, which has no size
            options.update(pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW)
    elif backend == "sqlite":
        database = url.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        options = {"connect_args": {"check_same_thread": False, "timeout": 30}}
    engine = create_engine(url, **{**options, **kwargs})
    if backend == "sqlite":
        _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # pysqlite's own BEGIN off: we emit ours
        cursor = dbapi_connection.cursor()
        for pragma in (
            "PRAGMA foreign_keys=ON",
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=NORMAL",
            "PRAGMA busy_timeout=30000",
        ):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        readonly = connection.get_execution_options().get(_READONLY, False)
        connection.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def is_retryable(exc: BaseException) -> bool:
    """Whether a failed transaction may simply be run again (see the module docstring)."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    if isinstance(orig, sqlite3.OperationalError):
        message = str(orig).lower()
        return "database is locked" in message or "database is busy" in message
    args = getattr(orig, "args", ())
    return bool(args) and isinstance(args[0], int) and args[0] in _MYSQL_RETRYABLE


class Database:
    """An engine plus session factories: the one object a process keeps for the store."""

    def __init__(self, url: str | URL | Engine, **engine_kwargs: Any) -> None:
        self.engine = url if isinstance(url, Engine) else make_engine(url, **engine_kwargs)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._readonly_sessions = sessionmaker(
            self.engine.execution_options(**{_READONLY: True}), expire_on_commit=False
        )

    @classmethod
    def from_settings(cls, settings: Any = None) -> Database:
        """The database at `database.url` of the given (default: the process's) settings."""
        if settings is None:
            from comfyfleet.settings import get_settings

            settings = get_settings()
        return cls(settings.database.url)

    @property
    def url(self) -> URL:
        return self.engine.url

    @property
    def is_mysql(self) -> bool:
        return is_mysql(self.engine)

    def __repr__(self) -> str:
        return f"Database({self.url.render_as_string(hide_password=True)!r})"

    @contextmanager
    def session(self, *, readonly: bool = False) -> Iterator[Session]:
        """A session in one transaction: committed when the block ends, rolled back on error.

        Objects loaded in it stay usable after the block (detached, not expired); relationships
        not loaded inside the block cannot be loaded afterwards (`with_details=True` loads them).
        `readonly=True`: nothing is committed, and on SQLite no write lock is taken.
        """
        factory = self._readonly_sessions if readonly else self._sessions
        with factory() as session:
            try:
                yield session
                if not readonly:
                    session.commit()
                # read-only: closing ends the transaction; no rollback(), which would expire
                # the objects read (callers use them after the block, detached)
            except BaseException:
                session.rollback()
                raise

    def run(
        self,
        fn: Callable[[Session], T],
        *,
        readonly: bool = False,
        retry_for_s: float = DEFAULT_RETRY_S,
    ) -> T:
        """`fn(session)` in a transaction, run again on transient failures for `retry_for_s`."""
        deadline = time.monotonic() + retry_for_s
        delay = 0.05
        tries = 0
        while True:
            tries += 1
            try:
                with self.session(readonly=readonly) as session:
                    return fn(session)
            except DBAPIError as exc:
                if not is_retryable(exc) or time.monotonic() + delay > deadline:
                    raise
                log.warning("database: transient failure (try %d), retrying: %s", tries, exc.orig)
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 0.5)

    def dispose(self) -> None:
        self.engine.dispose()


@contextmanager
def session_scope(
    bind: Database | Engine | str | URL, *, readonly: bool = False
) -> Iterator[Session]:
    """`with session_scope(db) as session:` — `Database.session()` for a Database, engine or URL.

    Given a URL it builds (and disposes of) an engine for this one transaction: keep a
    `Database` in long-lived processes instead.
    """
    database = bind if isinstance(bind, Database) else Database(bind)
    try:
        with database.session(readonly=readonly) as session:
            yield session
    finally:
        if isinstance(bind, str | URL):
            database.dispose()


def ping(session: Session) -> None:
    """One trivial statement: the database answers (the gateway's health check)."""
    session.execute(text("SELECT 1"))
