"""Alembic migrations on empty SQLite and MariaDB databases: head, one step down, up again."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select, text

from comfyfleet.store import (
    Database,
    User,
    current_revision,
    downgrade,
    head_revision,
    upgrade,
)
from comfyfleet.store.migrate import alembic_config
from comfyfleet.store.models import load_all_models
from comfyfleet.store.users import add_user
from tests.fixtures.db import mysql_database

pytestmark = pytest.mark.integration


def _tables(database: Database) -> set[str]:
    return set(inspect(database.engine).get_table_names())


def _previous(revision: str) -> str | None:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config()).get_revision(revision)
    assert script is not None
    return script.down_revision  # type: ignore[return-value]


def test_empty_database_upgrades_to_head_matching_the_models(empty_database_url: str) -> None:
    database = Database(empty_database_url)
    try:
        assert current_revision(database) is None
        upgrade(database)
        assert current_revision(database) == head_revision()
        metadata = load_all_models()
        assert _tables(database) == set(metadata.tables) | {"alembic_version"}
        with database.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
        upgrade(database)  # idempotent
        assert current_revision(database) == head_revision()
    finally:
        database.dispose()


def test_downgrade_one_step_then_upgrade_again_keeps_data(empty_database_url: str) -> None:
    database = Database(empty_database_url)
    try:
        upgrade(empty_database_url)  # a URL works as well as a Database
        with database.session() as s:
            add_user(s, username="alice", password_hash="!")
        head = head_revision()
        downgrade(database, "-1")
        assert current_revision(database) == _previous(head)
        upgrade(database)
        assert current_revision(database) == head
        downgrade(database, "0001_identity")  # down past the jobs tables: identity stays
        assert "jobs" not in _tables(database) and "users" in _tables(database)
        with database.session() as s:
            assert s.scalars(select(User.username)).all() == ["alice"]
        upgrade(database)
        assert current_revision(database) == head_revision()
        assert {"jobs", "attempts", "outputs", "owner_shares"} <= _tables(database)
        downgrade(database, "base")
        assert _tables(database) <= {"alembic_version"}
        assert current_revision(database) is None
    finally:
        database.dispose()


def test_mysql_tables_are_innodb_utf8mb4_with_binary_collation() -> None:
    with mysql_database() as url:
        database = Database(url)
        try:
            upgrade(database)
            with database.engine.connect() as conn:
                rows = conn.execute(
                    text(
                        "SELECT table_name, engine, table_collation FROM information_schema.tables"
                        " WHERE table_schema = DATABASE() AND table_name <> 'alembic_version'"
                    )
                ).all()
                datetime_type = conn.execute(
                    text(
                        "SELECT column_type FROM information_schema.columns WHERE "
                        "table_schema = DATABASE() AND table_name = 'jobs' "
                        "AND column_name = 'created_at'"
                    )
                ).scalar()
        finally:
            database.dispose()
    assert {r[0] for r in rows} == set(load_all_models().tables)
    assert {(r[1], r[2]) for r in rows} == {("InnoDB", "utf8mb4_bin")}
    assert datetime_type == "datetime(6)"  # microseconds: exact ordering by age


def test_concurrent_upgrades_of_one_mysql_database_are_serialised() -> None:
    import threading

    with mysql_database() as url:
        errors: list[BaseException] = []
        barrier = threading.Barrier(3)

        def run() -> None:
            try:
                barrier.wait()
                upgrade(url)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert errors == []
        assert current_revision(url) == head_revision()
