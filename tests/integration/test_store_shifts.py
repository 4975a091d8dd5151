"""Node shifts in the job store, on SQLite and real MariaDB: one shift per node, attempts taken
once, leases kept by beats, handed back and moved, the backlog head in the order it is served."""

from __future__ import annotations

from datetime import timedelta

import pytest

from comfyfleet import store
from comfyfleet.store import Database, Job, User, utcnow
from comfyfleet.store.users import add_user

pytestmark = pytest.mark.integration

STALE_S = 10.0


def make_user(db: Database, name: str, **quotas: object) -> User:
    with db.session() as s:
        user = add_user(s, username=name, password_hash="!")
        if quotas:
            store.set_quotas(s, target=user, **quotas)  # type: ignore[arg-type]
        return user


def make_job(db: Database, owner: User, **kw: object) -> Job:
    values: dict[str, object] = {
        "workflow": "sd15-basic", "capability": "text_to_image",
        "params": {"prompt": "a cat", "seed": 1},
    }  # fmt: skip
    values.update(kw)
    with db.session() as s:
        return store.create_job(s, owner=owner, **values)  # type: ignore[arg-type]


def give(db: Database, job_id: str, node: str = "gpu-1") -> str:
    """What the dispatcher does: claim the job and give it an attempt on `node`."""
    [attempt] = db.run(lambda s: store.bind_jobs(s, [(job_id, node)]))
    return attempt.id


def take(db: Database, shifts: dict[str, str]) -> tuple[list[store.Work], list[str]]:
    return db.run(lambda s: store.take_work(s, shifts=shifts, lease_s=10))


def test_one_shift_per_node_reserved_claimed_and_taken_over_only_when_stale(db: Database) -> None:
    now = utcnow()
    assert db.run(lambda s: store.reserve(s, node="gpu-1", shift_id="run-a", stale_after_s=STALE_S,
                                          now=now))  # fmt: skip
    # a second ask while the reservation is fresh is refused; the reserved run claims it
    assert not db.run(lambda s: store.reserve(s, node="gpu-1", shift_id="run-b",
                                              stale_after_s=STALE_S, now=now))  # fmt: skip
    assert not db.run(lambda s: store.claim_node(s, node="gpu-1", shift_id="run-b", holder="h:2",
                                                 stale_after_s=STALE_S, now=now))  # fmt: skip
    assert db.run(lambda s: store.claim_node(s, node="gpu-1", shift_id="run-a", holder="h:1",
                                             stale_after_s=STALE_S, now=now))  # fmt: skip
    row = db.run(store.node_shifts, readonly=True)["gpu-1"]
    assert (row.shift_id, row.holder) == ("run-a", "h:1")
    # beating keeps it; a shift that stopped beating loses the node to the next one
    later = now + timedelta(seconds=STALE_S - 1)
    assert db.run(lambda s: store.beat(s, node="gpu-1", shift_id="run-a", lease_s=10, now=later))
    stale = later + timedelta(seconds=STALE_S + 1)
    assert db.run(lambda s: store.claim_node(s, node="gpu-1", shift_id="run-c", holder="h:3",
                                             stale_after_s=STALE_S, now=stale))  # fmt: skip
    assert not db.run(lambda s: store.beat(s, node="gpu-1", shift_id="run-a", lease_s=10))
    # handing over names the successor; ending removes the row
    assert db.run(lambda s: store.hand_over(s, node="gpu-1", shift_id="run-c",
                                            successor_id="run-d"))  # fmt: skip
    assert db.run(store.node_shifts, readonly=True)["gpu-1"].holder == ""
    assert not db.run(lambda s: store.end_shift(s, node="gpu-1", shift_id="run-c"))
    assert db.run(lambda s: store.end_shift(s, node="gpu-1", shift_id="run-d"))
    assert db.run(store.node_shifts, readonly=True) == {}


def test_an_attempt_is_taken_once_by_its_nodes_shift(db: Database) -> None:
    alice = make_user(db, "alice")
    on_1 = give(db, make_job(db, alice).id, "gpu-1")
    on_2 = give(db, make_job(db, alice).id, "gpu-2")
    work, cancels = take(db, {"gpu-1": "shift-1"})
    assert [(w.attempt_id, w.node, w.fresh) for w in work] == [(on_1, "gpu-1", True)]
    assert work[0].params == {"prompt": "a cat", "seed": 1} and cancels == []
    assert take(db, {"gpu-1": "shift-1"}) == ([], [])  # taken once
    attempt = db.run(lambda s: store.get_attempt(s, attempt_id=on_1), readonly=True)
    assert attempt.flow_run_id == "shift-1" and attempt.lease_expires_at is not None
    # another process's shift of gpu-2 takes its own
    assert [w.attempt_id for w in take(db, {"gpu-2": "shift-2"})[0]] == [on_2]


def test_beats_renew_the_leases_of_what_a_shift_holds(db: Database) -> None:
    alice = make_user(db, "alice")
    attempt_id = give(db, make_job(db, alice).id)
    db.run(lambda s: store.claim_node(s, node="gpu-1", shift_id="shift-1", holder="h",
                                      stale_after_s=STALE_S))  # fmt: skip
    take(db, {"gpu-1": "shift-1"})
    soon = utcnow() + timedelta(seconds=8)
    assert db.run(lambda s: store.beat(s, node="gpu-1", shift_id="shift-1", lease_s=10, now=soon))
    later = soon + timedelta(seconds=5)  # past the first lease, within the renewed one
    assert db.run(lambda s: store.expired_leases(s, now=later), readonly=True) == []
    assert [a.id for a in db.run(
        lambda s: store.expired_leases(s, now=later + timedelta(seconds=10)), readonly=True
    )] == [attempt_id]  # fmt: skip


def test_cancels_reach_the_holder_and_an_untaken_attempt_never_runs(db: Database) -> None:
    alice = make_user(db, "alice")
    held_job, waiting_job = make_job(db, alice), make_job(db, alice)
    held = give(db, held_job.id, "gpu-1")
    take(db, {"gpu-1": "shift-1"})
    give(db, waiting_job.id, "gpu-1")
    for job in (held_job, waiting_job):
        db.run(lambda s, j=job: store.request_cancel(s, job_id=j.id))
    work, cancels = take(db, {"gpu-1": "shift-1"})
    assert work == [] and cancels == [held]
    with db.session() as s:
        assert store.get_job(s, job_id=waiting_job.id).status == "cancelled"
        assert store.get_job(s, job_id=held_job.id).status == "dispatched"  # its holder ends it


def test_handed_back_attempts_are_not_fresh_and_moved_ones_go_back_to_the_backlog(
    db: Database,
) -> None:
    alice = make_user(db, "alice")
    first, second = make_job(db, alice), make_job(db, alice)
    held = give(db, first.id, "gpu-1")
    take(db, {"gpu-1": "lost-shift"})
    assert db.run(lambda s: store.untake(s, attempt_id=held, lease_s=30))
    [again], _ = take(db, {"gpu-1": "next-shift"})
    assert again.attempt_id == held and not again.fresh  # its prompt may be on the node
    waiting = give(db, second.id, "gpu-1")
    assert [
        a.id for a in db.run(lambda s: store.untaken_attempts(s, nodes=["gpu-1"]), readonly=True)
    ] == [waiting]
    assert db.run(lambda s: store.move_untaken(s, attempt_id=waiting, reason="gpu-1: down")) == (
        "queued"
    )  # fmt: skip
    assert db.run(lambda s: store.move_untaken(s, attempt_id=held, reason="x")) is None  # held
    assert take(db, {"gpu-1": "next-shift"}) == ([], [])


def test_the_backlog_head_is_served_in_turns_within_quotas(db: Database) -> None:
    alice, bob = make_user(db, "alice"), make_user(db, "bob", max_running=1)
    a = [make_job(db, alice).id for _ in range(3)]
    b = [make_job(db, bob).id for _ in range(3)]
    high = make_job(db, alice, priority="high").id
    head = db.run(lambda s: store.backlog_head(s, capabilities={"gpu-1": {"text_to_image"}},
                                               limit=20), readonly=True)  # fmt: skip
    # high first; then owners take turns (bob, never served, before alice, just served); bob
    # may run one job at a time, so his others wait
    assert [q.id for q in head] == [high, b[0], a[0], a[1], a[2]]
    assert store.has_queued is not None and db.run(store.has_queued, readonly=True)
    made = db.run(lambda s: store.bind_jobs(s, [(q.id, "gpu-1") for q in head[:2]]))
    assert [m.job_id for m in made] == [high, b[0]]
    # a job claimed meanwhile is skipped, not bound twice
    assert db.run(lambda s: store.bind_jobs(s, [(high, "gpu-2")])) == []
