"""Concurrent writers on one row: exactly-once claims, and no late write over a terminal status.

Real contention: threads (each with its own pooled connection) and separate processes (each
with its own engine) against the same database, started together on a barrier.
"""

from __future__ import annotations

import multiprocessing
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select

from comfyfleet import store
from comfyfleet.store import Database, Job, User
from comfyfleet.store.users import add_user
from tests.fixtures.db import clear

pytestmark = pytest.mark.integration

CAPS = {"gpu-1": {"text_to_image"}}


def _owner(db: Database, name: str = "alice") -> User:
    with db.session() as s:
        return store.get_user(s, username=name) or add_user(s, username=name, password_hash="!")


def _jobs(db: Database, owner: User, n: int) -> list[str]:
    with db.session() as s:
        return [
            store.create_job(
                s, workflow="sd15-basic", capability="text_to_image", params={"i": i}, owner=owner
            ).id
            for i in range(n)
        ]


def _together(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run fn(0..n-1) in n threads released at the same moment; their results."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait()
            results[i] = fn(i)
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    if errors:
        raise errors[0]
    return results


def _claim(db: Database) -> str | None:
    job = db.run(lambda s: store.claim_next_job(s, capabilities_free=CAPS))
    return job.id if job is not None else None


def test_two_dispatchers_claim_one_job_exactly_once(db: Database) -> None:
    owner = _owner(db)
    for _ in range(40):
        (job_id,) = _jobs(db, owner, 1)
        results = _together(2, lambda _i: _claim(db))
        assert sorted(results, key=str) == sorted([job_id, None], key=str), results
        with db.session() as s:
            assert store.get_job(s, job_id=job_id).status == "dispatched"  # type: ignore[union-attr]


def test_two_dispatchers_claiming_a_given_job_one_wins(db: Database) -> None:
    owner = _owner(db)
    for _ in range(25):
        (job_id,) = _jobs(db, owner, 1)
        results = _together(2, lambda _i, j=job_id: db.run(lambda s: store.claim_job(s, job_id=j)))
        assert sum(r is not None for r in results) == 1


def test_many_claimers_over_many_jobs_claim_each_job_once(db: Database) -> None:
    owners = [_owner(db, f"user{i}") for i in range(3)]
    expected = [job for owner in owners for job in _jobs(db, owner, 30)]

    def drain(_i: int) -> list[str]:
        mine = []
        while (job_id := _claim(db)) is not None:
            mine.append(job_id)
        return mine

    per_claimer = _together(6, drain)
    claimed = [job for jobs in per_claimer for job in jobs]
    assert Counter(claimed).most_common(1)[0][1] == 1
    assert sorted(claimed) == sorted(expected)
    with db.session() as s:
        statuses = Counter(s.scalars(select(Job.status)))
    assert statuses == {"dispatched": len(expected)}


def _process_drain(url: str, start_at: float) -> list[str]:
    database = Database(url)
    try:
        time.sleep(max(0.0, start_at - time.time()))
        mine = []
        while (job_id := _claim(database)) is not None:
            mine.append(job_id)
        return mine
    finally:
        database.dispose()


def test_claimers_in_separate_processes_claim_each_job_once(db: Database) -> None:
    owner = _owner(db)
    expected = _jobs(db, owner, 60)
    url = db.url.render_as_string(hide_password=False)
    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        start_at = time.time() + 3.0  # all three start claiming at the same moment
        per_process = pool.starmap(_process_drain, [(url, start_at)] * 3)
    claimed = [job for jobs in per_process for job in jobs]
    assert len(claimed) == len(set(claimed)) == len(expected)
    assert set(claimed) == set(expected)


def test_late_progress_write_races_completion_and_never_wins(db: Database) -> None:
    owner = _owner(db)
    for _ in range(20):
        (job_id,) = _jobs(db, owner, 1)
        with db.session() as s:
            store.claim_job(s, job_id=job_id)
            attempt = store.create_attempt(s, job_id=job_id, node="gpu-1")
            store.mark_attempt_running(s, attempt_id=attempt.id, lease_s=30)
            store.update_progress(s, job_id=job_id, value=1, max=10)

        def act(i: int, job_id: str = job_id) -> bool:
            if i == 0:
                return db.run(lambda s: store.complete_job(s, job_id=job_id))
            wrote = False
            for step in range(2, 8):
                wrote |= db.run(
                    lambda s, step=step: store.update_progress(
                        s, job_id=job_id, value=step, max=10, node="gpu-1"
                    )
                )
            return wrote

        _together(2, act)
        with db.session() as s:
            job = store.get_job(s, job_id=job_id)
            assert job is not None
            assert job.status == "completed"
            assert job.progress_value == job.progress_max  # completion's value, never overwritten


def test_progress_after_a_concurrent_commit_sees_the_terminal_status(mysql_db: Database) -> None:
    """The exact interleaving on MySQL: a writer that read `running` before another session
    committed `completed` still cannot write over it (guarded UPDATE, not read-modify-write)."""
    owner = _owner(mysql_db, "interleave")
    (job_id,) = _jobs(mysql_db, owner, 1)
    with mysql_db.session() as s:
        store.claim_job(s, job_id=job_id)
        attempt = store.create_attempt(s, job_id=job_id, node="gpu-1")
        store.mark_attempt_running(s, attempt_id=attempt.id, lease_s=30)
    with mysql_db.session() as late:
        seen = store.get_job(late, job_id=job_id)
        assert seen is not None and seen.status == "running"  # read before the completion
        with mysql_db.session() as other:
            assert store.complete_job(other, job_id=job_id)
        assert not store.update_progress(late, job_id=job_id, value=5, max=10, node="gpu-x")
        assert not store.renew_lease(late, attempt_id=attempt.id, lease_s=30)
    with mysql_db.session() as s:
        job = store.get_job(s, job_id=job_id)
        assert job is not None and job.status == "completed" and job.node == "gpu-1"
    clear(mysql_db)


@pytest.mark.parametrize("backlog", [500])
def test_claim_latency(db: Database, backlog: int, record_property: Any) -> None:
    """Measured, not a benchmark: median claim time with a backlog of 500 jobs, 5 owners."""
    owners = [_owner(db, f"lat{i}") for i in range(5)]
    for owner in owners:
        _jobs(db, owner, backlog // len(owners))
    timings = []
    for _ in range(50):
        started = time.perf_counter()
        assert _claim(db) is not None
        timings.append(time.perf_counter() - started)
    median_ms = statistics.median(timings) * 1000
    backend = db.engine.dialect.name
    record_property(f"claim_median_ms_{backend}", round(median_ms, 2))
    print(f"\nclaim latency {backend}: median {median_ms:.2f} ms, max {max(timings) * 1000:.2f} ms")
    with db.session() as s:
        assert s.scalar(select(func.count()).where(Job.status == "dispatched")) == 50
    assert median_ms < 250
