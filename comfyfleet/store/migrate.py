"""Schema migrations, run programmatically: no alembic.ini, no working-directory assumptions.

    upgrade("mysql+pymysql://…")           # empty database -> head (idempotent)
    downgrade(engine, "-1")                # one step back
    current_revision(url), head_revision()

The Alembic environment and versions live in `comfyfleet/store/migrations/`. On MySQL/MariaDB
a named server lock (`GET_LOCK`) serialises concurrent upgrades (the control plane and a CLI
started at the same moment); MySQL DDL is not transactional, SQLite's is.
For new revisions: `python -m comfyfleet.store.migrate revision -m "what changed" URL`
(autogenerate against a database at head).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Connection, Engine, pool

from comfyfleet.store.db import Database, make_engine
from comfyfleet.store.locks import get_lock, release_lock

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_LOCK_NAME = "comfyfleet.migrate"
_LOCK_WAIT_S = 120

Target = str | URL | Engine | Database


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic `Config` for the shipped migrations, bound to `connection` if given."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@contextmanager
def _connection(target: Target) -> Iterator[Connection]:
    if isinstance(target, Database):
        target = target.engine
    engine = target if isinstance(target, Engine) else make_engine(target, poolclass=pool.NullPool)
    mysql = engine.dialect.name in ("mysql", "mariadb")
    lock_name = f"{_LOCK_NAME}.{engine.url.database or ''}"[:64]  # one lock per database
    try:
        with engine.connect() as lock_conn:
            if mysql and not get_lock(lock_conn, name=lock_name, wait_s=_LOCK_WAIT_S):
                raise RuntimeError(f"another migration holds the lock {lock_name!r}")
            try:
                with engine.begin() as connection:
                    yield connection
            finally:
                if mysql:
                    release_lock(lock_conn, name=lock_name)
                lock_conn.rollback()
    finally:
        if engine is not target:
            engine.dispose()


def upgrade(target: Target, revision: str = "head") -> None:
    """Upgrade the database to `revision` (default: the newest)."""
    with _connection(target) as connection:
        command.upgrade(alembic_config(connection), revision)


def downgrade(target: Target, revision: str = "-1") -> None:
    """Downgrade the database to `revision` (`-1`: one step, `base`: empty)."""
    with _connection(target) as connection:
        command.downgrade(alembic_config(connection), revision)


def current_revision(target: Target) -> str | None:
    """The database's revision, None for an empty (unmigrated) database."""
    with _connection(target) as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    """The newest revision shipped with this version of ComfyFleet."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "revision" and argv[1] == "-m":
        message, url = argv[2], argv[3]
        with _connection(url) as connection:
            command.revision(alembic_config(connection), message=message, autogenerate=True)
        return 0
    print("usage: python -m comfyfleet.store.migrate revision -m MESSAGE URL", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
