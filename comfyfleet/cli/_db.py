"""What the commands that talk to `database.url` directly share: the database, brought to the
schema head first (idempotent), and a transaction whose store errors become `CliError`s."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from comfyfleet.cli import CliError, load_settings

if TYPE_CHECKING:
    from comfyfleet.store import Database


def database(*, migrate: bool = True) -> Database:
    from comfyfleet.store import Database, upgrade

    settings = load_settings()
    try:
        db = Database(settings.database.url)
        if migrate:
            upgrade(db)
    except Exception as exc:  # unreachable server, bad URL
        raise CliError(f"database {safe_url(settings.database.url)}: {exc}") from None
    return db


def safe_url(url: str) -> str:
    from sqlalchemy import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(invalid URL)"


def run(fn: Any) -> Any:
    """`fn(session)` in one transaction on the migrated database."""
    from comfyfleet.store import StoreError

    db = database()
    try:
        return db.run(fn)
    except StoreError as exc:
        raise CliError(str(exc)) from None
    finally:
        db.dispose()
