"""Backlog order: priority level, then fair share between owners, then age; aging lifts."""

from __future__ import annotations

from datetime import timedelta

import pytest

from comfyfleet import store
from comfyfleet.store import Database, User, utcnow
from comfyfleet.store.users import add_user

pytestmark = pytest.mark.integration

CAPS = {"gpu-1": {"text_to_image"}}


def _users(db: Database, *names: str) -> list[User]:
    with db.session() as s:
        return [add_user(s, username=n, password_hash="!") for n in names]


def _queue(db: Database, owner: User, n: int, **kw: object) -> list[str]:
    with db.session() as s:
        return [
            store.create_job(
                s,
                workflow="sd15-basic",
                capability="text_to_image",
                params={"i": i},
                owner=owner,
                **kw,  # type: ignore[arg-type]
            ).id
            for i in range(n)
        ]


def _run_one(db: Database, **kw: object) -> tuple[str, int]:
    """One slot: claim the next job and finish it at once. (job id, owner id)."""
    with db.session() as s:
        job = store.claim_next_job(s, capabilities_free=CAPS, **kw)  # type: ignore[arg-type]
        assert job is not None
        store.create_attempt(s, job_id=job.id, node="gpu-1")
        store.complete_job(s, job_id=job.id)
        return job.id, job.owner_id


def test_a_late_owner_is_served_within_the_next_ten_dispatches(db: Database) -> None:
    alice, bob = _users(db, "alice", "bob")
    alice_jobs = _queue(db, alice, 50)
    for _ in range(3):  # alice's work is under way
        assert _run_one(db)[1] == alice.id
    bob_jobs = _queue(db, bob, 5)
    served = [_run_one(db) for _ in range(10)]
    served_bob = [job for job, owner in served if owner == bob.id]
    assert sorted(served_bob) == sorted(bob_jobs)  # all 5 of bob's within the next 10
    assert served_bob == bob_jobs  # each owner's jobs in age order
    served_alice = [job for job, owner in served if owner == alice.id]
    assert served_alice == alice_jobs[3:8]


def test_owners_take_turns(db: Database) -> None:
    owners = _users(db, "a1", "b1", "c1")
    for owner in owners:
        _queue(db, owner, 4)
    order = [_run_one(db)[1] for _ in range(12)]
    for round_start in range(0, 12, 3):
        assert sorted(order[round_start : round_start + 3]) == sorted(o.id for o in owners)


def test_priority_beats_fairness(db: Database) -> None:
    alice, bob = _users(db, "alice", "bob")
    _queue(db, alice, 3, priority="normal")
    _queue(db, bob, 2, priority="low")
    assert _run_one(db)[1] == alice.id  # bob was served never, but low < normal
    bob_high = _queue(db, bob, 1, priority="high")
    alice_high = _queue(db, alice, 1, priority="high")
    first, second = _run_one(db), _run_one(db)
    # inside the high level, bob (never served) goes before alice (served just now)
    assert [first[0], second[0]] == [bob_high[0], alice_high[0]]
    assert [_run_one(db)[1] for _ in range(2)] == [alice.id, alice.id]  # normal before low
    assert [_run_one(db)[1] for _ in range(2)] == [bob.id, bob.id]


def test_aging_lifts_a_starved_low_job(db: Database) -> None:
    alice, bob = _users(db, "alice", "bob")
    now = utcnow()
    aging = 600.0
    (waited_one,) = _queue(db, bob, 1, priority="low", now=now - timedelta(seconds=aging + 1))
    (waited_two,) = _queue(db, bob, 1, priority="low", now=now - timedelta(seconds=2 * aging + 1))
    _queue(db, alice, 5, priority="high", now=now)
    _queue(db, alice, 5, priority="normal", now=now)
    # bob's low job that waited 2 x aging competes as high: it goes first (never served, older)
    assert _run_one(db, now=now, aging_s=aging)[0] == waited_two
    high = [_run_one(db, now=now, aging_s=aging)[1] for _ in range(5)]
    assert high == [alice.id] * 5
    # the one that waited 1 x aging competes as normal, and is older than alice's normal jobs
    assert _run_one(db, now=now, aging_s=aging)[0] == waited_one


def test_without_aging_low_waits_for_higher_levels(db: Database) -> None:
    alice, bob = _users(db, "alice", "bob")
    (low,) = _queue(db, bob, 1, priority="low")
    _queue(db, alice, 3, priority="normal")
    order = [_run_one(db)[0] for _ in range(4)]
    assert order[-1] == low


def test_backlog_order_is_the_claim_order(db: Database) -> None:
    alice, bob = _users(db, "alice", "bob")
    _queue(db, alice, 4)
    _queue(db, bob, 2, priority="high")
    _queue(db, bob, 2)
    with db.session() as s:
        preview = [j.id for j in store.backlog_order(s, capabilities_free=CAPS)]
    assert len(preview) == 8
    assert _run_one(db)[0] == preview[0]
    with db.session() as s:
        counts = store.backlog_counts(s)
    assert counts == [("text_to_image", 0, 1), ("text_to_image", 1, 6)]
