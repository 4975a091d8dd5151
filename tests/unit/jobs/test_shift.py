"""Node shifts over a real (SQLite) job store, with the attempt body replaced by a seam: a shift
takes every attempt given to its node once, runs them concurrently, relays cancels, leaves the node
when another shift took it, and hands back what it holds when it is stopped."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from comfyfleet.jobs import shift as shifts
from comfyfleet.store import (
    Database,
    Work,
    claim_job,
    claim_node,
    create_attempt,
    create_job,
    get_attempt,
    node_shifts,
    request_cancel,
)
from comfyfleet.store.users import ensure_service_user


def given(db: Database, node: str) -> Any:
    """A job placed on `node` (what the dispatcher does)."""

    def make(s: Any) -> Any:
        job = create_job(s, workflow="delay", capability="delay", params={"seconds": 1},
                         owner=ensure_service_user(s))  # fmt: skip
        claim_job(s, job_id=job.id)
        return create_attempt(s, job_id=job.id, node=node)

    return db.run(make)


class Runs:
    """The attempt body's seam: records what ran, holds each attempt until released."""

    def __init__(self) -> None:
        self.started: list[Work] = []
        self.cancelled: list[str] = []
        self.release = asyncio.Event()
        self.changed = asyncio.Event()

    async def __call__(self, work: Work) -> None:
        self.started.append(work)
        self.changed.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(work.attempt_id)
            self.changed.set()
            raise

    async def until(self, check: Any, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shifts, "BEAT_S", 0.2)


async def test_a_shift_runs_every_attempt_given_to_its_node_once_and_at_once(
    sqlite_db: Database,
) -> None:
    runs = Runs()
    mine = [given(sqlite_db, "gpu-1") for _ in range(3)]
    other = given(sqlite_db, "gpu-2")
    shift = shifts.NodeShift(sqlite_db, node="gpu-1", shift_id="s-1", run=runs)
    body = asyncio.create_task(shift.run())
    await runs.until(lambda: len(runs.started) == 3)  # concurrently: none has ended yet
    assert sorted(w.attempt_id for w in runs.started) == sorted(a.id for a in mine)
    assert all(w.fresh for w in runs.started)
    later = given(sqlite_db, "gpu-1")
    await runs.until(lambda: len(runs.started) == 4)
    assert runs.started[-1].attempt_id == later.id
    held = sqlite_db.run(lambda s: get_attempt(s, attempt_id=later.id))
    assert held.flow_run_id == "s-1" and held.lease_expires_at is not None
    assert sqlite_db.run(lambda s: get_attempt(s, attempt_id=other.id)).flow_run_id is None
    runs.release.set()
    shift.leave("test over")
    assert await asyncio.wait_for(body, 10) == "test over"
    assert len(runs.started) == 4  # nothing twice


async def test_a_cancel_reaches_the_attempt_the_shift_runs(sqlite_db: Database) -> None:
    runs = Runs()
    attempt = given(sqlite_db, "gpu-1")
    shift = shifts.NodeShift(sqlite_db, node="gpu-1", shift_id="s-1", run=runs)
    body = asyncio.create_task(shift.run())
    await runs.until(lambda: len(runs.started) == 1)
    sqlite_db.run(lambda s: request_cancel(s, job_id=attempt.job_id))
    await runs.until(lambda: runs.cancelled == [attempt.id])
    shift.leave("test over")
    await asyncio.wait_for(body, 10)


async def test_a_shift_leaves_a_node_another_shift_took(sqlite_db: Database) -> None:
    runs = Runs()
    shift = shifts.NodeShift(sqlite_db, node="gpu-1", shift_id="s-1", run=runs)
    body = asyncio.create_task(shift.run())
    async with asyncio.timeout(10):  # it works the node
        while "gpu-1" not in await asyncio.to_thread(  # noqa: ASYNC110 (a database state)
            sqlite_db.run, node_shifts, readonly=True
        ):
            await asyncio.sleep(0.02)
    # the fleet service decided the node needs a new shift (stop_shift, a takeover)
    assert sqlite_db.run(lambda s: claim_node(s, node="gpu-1", shift_id="s-2", holder="other",
                                              stale_after_s=0))  # fmt: skip
    assert "another shift" in await asyncio.wait_for(body, 10)
    given(sqlite_db, "gpu-1")
    await asyncio.sleep(shifts.POLL_S * 2)
    assert runs.started == []  # the old shift takes nothing more


async def test_a_stopped_shift_hands_back_what_it_holds(sqlite_db: Database) -> None:
    runs = Runs()
    attempt = given(sqlite_db, "gpu-1")
    shift = shifts.NodeShift(sqlite_db, node="gpu-1", shift_id="s-1", run=runs)
    body = asyncio.create_task(shift.run())
    await runs.until(lambda: len(runs.started) == 1)
    body.cancel()  # the run was cancelled, or its worker is stopping
    with pytest.raises(asyncio.CancelledError):
        await body
    back = sqlite_db.run(lambda s: get_attempt(s, attempt_id=attempt.id))
    assert back.flow_run_id is None and back.status == "pending"  # the next shift takes it
    assert "gpu-1" not in sqlite_db.run(node_shifts, readonly=True)
    again = Runs()
    successor = shifts.NodeShift(sqlite_db, node="gpu-1", shift_id="s-2", run=again)
    body = asyncio.create_task(successor.run())
    await again.until(lambda: len(again.started) == 1)
    assert again.started[0].attempt_id == attempt.id and not again.started[0].fresh
    again.release.set()
    successor.leave("test over")
    await asyncio.wait_for(body, 10)
