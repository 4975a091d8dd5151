"""Named server locks (MySQL/MariaDB `GET_LOCK`), held by a connection: one migration at a time
per database (comfyfleet.store.migrate) and one leading fleet service (comfyfleet.fleet.leader).
SQLite has none (single host: a file lock does)."""

from __future__ import annotations

from sqlalchemy import Connection, text


def get_lock(conn: Connection, *, name: str, wait_s: float) -> bool:
    """Take the named lock for this connection, waiting up to `wait_s`; whether it was taken."""
    got = conn.execute(text("SELECT GET_LOCK(:name, :wait)"), {"name": name, "wait": wait_s})
    return got.scalar() == 1


def release_lock(conn: Connection, *, name: str) -> None:
    conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": name})
