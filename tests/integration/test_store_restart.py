"""A database server restart is survived: the same engine recovers, nothing written is lost.

Runs a PRIVATE mariadbd (temp datadir, free port), never the shared server: it is killed with
SIGKILL (a crash, not a clean shutdown) and started again on the same datadir.
"""

from __future__ import annotations

import threading
import time

import pymysql
import pytest
from sqlalchemy import func, select

from comfyfleet import store
from comfyfleet.store import Database, Job, upgrade
from comfyfleet.store.users import add_user
from tests.fixtures.db import PrivateMariaDB

pytestmark = pytest.mark.integration


def _create(db: Database, owner_id: int, job_id: str) -> str:
    def write(s: object) -> str:
        return store.create_job(
            s,  # type: ignore[arg-type]
            workflow="sd15-basic",
            capability="text_to_image",
            params={"job": job_id},
            owner=owner_id,
            job_id=job_id,
        ).id

    return db.run(write)


def test_engine_survives_a_server_crash_and_nothing_is_lost(
    private_mariadb: PrivateMariaDB,
) -> None:
    admin = pymysql.connect(host="127.0.0.1", port=private_mariadb.port, user="root")
    with admin.cursor() as cur:
        cur.execute("CREATE DATABASE cf CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    admin.close()
    db = Database(private_mariadb.url("cf"))
    try:
        upgrade(db)
        with db.session() as s:
            owner_id = add_user(s, username="alice", password_hash="!").id
        written = [_create(db, owner_id, store.new_job_id()) for _ in range(20)]
        with db.session() as s:  # one job in flight, with an attempt
            store.claim_job(s, job_id=written[0])
            store.create_attempt(s, job_id=written[0], node="gpu-1")

        private_mariadb.kill()

        # a write issued while the server is down waits (retries) and lands after the restart
        pending_id = store.new_job_id()
        outcome: dict[str, object] = {}

        def write_during_outage() -> None:
            try:
                outcome["id"] = _create(db, owner_id, pending_id)
                outcome["at"] = time.monotonic()
            except BaseException as exc:  # reported by the assertion below
                outcome["error"] = exc

        writer = threading.Thread(target=write_during_outage)
        writer.start()
        time.sleep(1.0)
        assert writer.is_alive(), outcome  # still retrying, not failed
        startup_s = private_mariadb.start()
        ready_at = time.monotonic()
        writer.join(timeout=60)
        assert "error" not in outcome, outcome.get("error")
        assert outcome["id"] == pending_id
        recovery_s = float(outcome["at"]) - ready_at  # type: ignore[arg-type]

        # a plain session (no retry) works too: pool_pre_ping replaced the dead connections
        with db.session() as s:
            ids = set(s.scalars(select(Job.id)))
            attempts = store.list_attempts(s, job_id=written[0])
            dispatched = s.scalar(select(func.count()).where(Job.status == "dispatched"))
        assert ids == {*written, pending_id}
        assert [a.id for a in attempts] == [f"{written[0]}-1"] and dispatched == 1
        print(
            f"\nmariadbd restart: server up in {startup_s:.2f} s; the waiting write landed "
            f"{recovery_s:.2f} s after the server accepted connections"
        )
        assert recovery_s < 5.0
    finally:
        db.dispose()


def test_a_write_fails_clearly_when_the_server_stays_down(
    private_mariadb: PrivateMariaDB,
) -> None:
    db = Database(private_mariadb.url("mysql"))
    try:
        with db.session() as s:
            s.execute(select(1))
        private_mariadb.kill()
        started = time.monotonic()
        with pytest.raises(Exception) as info:
            db.run(lambda s: s.execute(select(1)).scalar(), retry_for_s=2.0)
        assert time.monotonic() - started < 10
        assert store.is_retryable(info.value)  # a connection failure, reported after retrying
    finally:
        db.dispose()
