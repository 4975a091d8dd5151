"""Recovery against a fake Prefect and a real (SQLite) job store: every node in rotation gets a
shift run (one, reserved first), a lost shift is replaced, a lost attempt goes back to its node's
shift or to the backlog, an attempt no shift took leaves its node."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from prefect.client.schemas.objects import StateType
from sqlalchemy import update

from comfyfleet.fleet.recovery import FIRST_BEAT_S, STRANDED_S
from comfyfleet.jobs.shift import STALE_AFTER_S
from comfyfleet.store import (
    Attempt,
    Database,
    claim_node,
    get_attempt,
    get_job,
    hold,
    node_shifts,
    reserve,
    utcnow,
)
from tests.unit.fleet.fakes import FakeDeployments, dispatched_attempt, gpu, recovery, service


async def test_every_node_in_rotation_gets_one_shift(sqlite_db: Database, tmp_path: Path) -> None:
    svc = service(sqlite_db, tmp_path, gpu(1), gpu(2), gpu(3, enabled=False))
    prefect = FakeDeployments()
    rec = recovery(svc)
    await rec.keep_shifts(prefect)  # type: ignore[arg-type]
    assert sorted(c["parameters"]["node"] for c in prefect.created) == ["gpu-1", "gpu-2"]
    rows = sqlite_db.run(node_shifts, readonly=True)
    assert {n: r.shift_id for n, r in rows.items()} == {
        c["parameters"]["node"]: r for c, r in zip(prefect.created, prefect.runs, strict=True)
    }
    await rec.keep_shifts(prefect)  # type: ignore[arg-type]
    assert len(prefect.created) == 2  # reserved: not asked for twice


async def test_a_lost_shift_is_replaced_but_one_waiting_for_a_worker_is_not(
    sqlite_db: Database, tmp_path: Path
) -> None:
    svc = service(sqlite_db, tmp_path, gpu(1), gpu(2), gpu(3))
    prefect = FakeDeployments()
    long_ago = utcnow() - timedelta(seconds=STALE_AFTER_S * 3)
    for node, state in (("gpu-1", StateType.SCHEDULED), ("gpu-2", StateType.RUNNING),
                        ("gpu-3", StateType.CRASHED)):  # fmt: skip
        run = await prefect.create_flow_run_from_deployment(None, parameters={"node": node})
        prefect.runs[str(run.id)] = state
        sqlite_db.run(lambda s, n=node, r=run: reserve(
            s, node=n, shift_id=str(r.id), stale_after_s=STALE_AFTER_S, now=long_ago))  # fmt: skip
    stale_running = str(prefect.created[1]) and list(prefect.runs)[1]
    prefect.created.clear()
    await recovery(svc).keep_shifts(prefect)  # type: ignore[arg-type]
    assert sorted(c["parameters"]["node"] for c in prefect.created) == ["gpu-2", "gpu-3"]
    assert (stale_running, "CRASHED") in prefect.states  # said in Prefect: its worker is lost


async def test_a_shift_run_on_its_way_to_its_first_beat_is_not_doubled(
    sqlite_db: Database, tmp_path: Path
) -> None:
    svc = service(sqlite_db, tmp_path, gpu(1), gpu(2))
    prefect = FakeDeployments()
    stale = utcnow() - timedelta(seconds=STALE_AFTER_S * 3)  # when the runs were reserved
    for node, running_for in (("gpu-1", 30.0), ("gpu-2", FIRST_BEAT_S + 30)):
        run = await prefect.create_flow_run_from_deployment(None, parameters={"node": node})
        prefect.runs[str(run.id)] = StateType.RUNNING  # picked up by a busy worker
        prefect.started[str(run.id)] = utcnow() - timedelta(seconds=running_for)
        sqlite_db.run(lambda s, n=node, r=run: reserve(
            s, node=n, shift_id=str(r.id), stale_after_s=STALE_AFTER_S, now=stale))  # fmt: skip
    prefect.created.clear()
    await recovery(svc).keep_shifts(prefect)  # type: ignore[arg-type]
    # gpu-1's run started 30 s ago and has not claimed the node yet: waited for; gpu-2's has
    # been Running without a beat for longer than FIRST_BEAT_S: lost, replaced
    assert [c["parameters"]["node"] for c in prefect.created] == ["gpu-2"]


async def test_a_lost_attempt_goes_back_to_its_nodes_shift_or_to_the_backlog(
    sqlite_db: Database, tmp_path: Path
) -> None:
    svc = service(sqlite_db, tmp_path, gpu(1), gpu(2, enabled=False))
    sqlite_db.run(lambda s: claim_node(s, node="gpu-1", shift_id="s1", holder="h",
                                       stale_after_s=STALE_AFTER_S))  # fmt: skip
    here = dispatched_attempt(sqlite_db, "gpu-1", running=True)
    out = dispatched_attempt(sqlite_db, "gpu-2", running=True)
    past = utcnow() - timedelta(seconds=5)
    for attempt in (here, out):
        sqlite_db.run(lambda s, a=attempt: hold(s, attempt_id=a.id, holder="dead", lease_s=-5,
                                                now=utcnow()))  # fmt: skip
    assert past < utcnow()
    await recovery(svc).check(FakeDeployments())  # type: ignore[arg-type]
    handed = sqlite_db.run(lambda s: get_attempt(s, attempt_id=here.id))
    assert handed.flow_run_id is None and handed.status == "running"  # the shift follows it
    job = sqlite_db.run(lambda s: get_job(s, job_id=out.job_id, with_details=True))
    assert job.status == "queued" and job.attempts[0].status == "node_fault"


async def test_an_attempt_no_shift_took_leaves_its_node(
    sqlite_db: Database, tmp_path: Path
) -> None:
    svc = service(sqlite_db, tmp_path, gpu(1))
    old = dispatched_attempt(sqlite_db, "gpu-1")
    new = dispatched_attempt(sqlite_db, "gpu-1")
    sqlite_db.run(lambda s: s.execute(update(Attempt).where(Attempt.id == old.id).values(
        created_at=utcnow() - timedelta(seconds=STRANDED_S + 1))))  # fmt: skip
    await recovery(svc).move_stranded()
    assert sqlite_db.run(lambda s: get_job(s, job_id=old.job_id)).status == "queued"
    assert sqlite_db.run(lambda s: get_job(s, job_id=new.job_id)).status == "dispatched"
