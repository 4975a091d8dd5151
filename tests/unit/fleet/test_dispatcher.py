"""The dispatcher over a real (SQLite) job store: jobs go to nodes whose shift works them, up to
each node's capacity, bound in one transaction; the workers' bell rings; a job whose workflow is
gone fails with the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from comfyfleet import bell
from comfyfleet.fleet.dispatcher import Dispatcher
from comfyfleet.store import (
    Database,
    claim_node,
    create_job,
    get_job,
    list_attempts,
    live_attempts_by_node,
    requeue_job_after_node_fault,
)
from comfyfleet.store.users import ensure_service_user
from tests.unit.fleet.fakes import gpu, service


def queued(db: Database, workflow: str = "delay") -> Any:
    def make(s: Any) -> Any:
        owner = ensure_service_user(s)
        return create_job(s, workflow=workflow, capability="delay", params={"seconds": 1},
                          owner=owner)  # fmt: skip

    return db.run(make)


def working(db: Database, node: str) -> None:
    db.run(lambda s: claim_node(s, node=node, shift_id=f"shift-{node}", holder="test",
                                stale_after_s=10))  # fmt: skip


def dispatcher(svc: Any) -> Dispatcher:
    return Dispatcher(db=svc.db, router=svc.router, monitor=svc.monitor, catalog=svc.catalog)


async def test_jobs_go_to_nodes_whose_shift_works_them_up_to_their_capacity(
    sqlite_db: Database, tmp_path: Path
) -> None:
    svc = service(sqlite_db, tmp_path, gpu(1, capacity=2), gpu(2, capacity=2))
    d = dispatcher(svc)
    jobs = [queued(sqlite_db) for _ in range(5)]
    assert await d.tick(svc.nodes) == 0  # no node has a shift: nothing is placed
    working(sqlite_db, "gpu-1")
    doorbell = bell.Bell(d.bells, bell.WORK).open()
    try:
        assert await d.tick(svc.nodes) == 2
        assert await doorbell.wait(2.0)  # the workers are told at once
    finally:
        doorbell.close()
    assert sqlite_db.run(live_attempts_by_node, readonly=True) == {"gpu-1": 2}
    working(sqlite_db, "gpu-2")
    assert await d.tick(svc.nodes) == 2
    assert await d.tick(svc.nodes) == 0  # every slot taken
    statuses = [sqlite_db.run(lambda s, j=j: get_job(s, job_id=j.id)).status for j in jobs]
    assert statuses == ["dispatched"] * 4 + ["queued"]  # oldest first (one owner)


async def test_a_job_whose_workflow_is_gone_fails_with_the_reason(
    sqlite_db: Database, tmp_path: Path
) -> None:
    svc = service(sqlite_db, tmp_path, gpu(1))
    working(sqlite_db, "gpu-1")
    gone = queued(sqlite_db, workflow="no-such-workflow")
    ok = queued(sqlite_db)
    assert await dispatcher(svc).tick(svc.nodes) == 1
    job = sqlite_db.run(lambda s: get_job(s, job_id=gone.id))
    assert job.status == "failed" and "no-such-workflow" in (job.error or "")
    assert sqlite_db.run(lambda s: get_job(s, job_id=ok.id)).status == "dispatched"


async def test_a_node_out_of_rotation_gets_nothing(sqlite_db: Database, tmp_path: Path) -> None:
    svc = service(sqlite_db, tmp_path, gpu(1))
    working(sqlite_db, "gpu-1")
    svc.monitor.nodes["gpu-1"].state = "open"
    queued(sqlite_db)
    assert await dispatcher(svc).tick(svc.nodes) == 0


async def test_a_job_avoids_the_node_that_failed_it_unless_no_other_can_take_it(
    sqlite_db: Database, tmp_path: Path
) -> None:
    svc = service(sqlite_db, tmp_path, gpu(1), gpu(2))
    working(sqlite_db, "gpu-1")
    d = dispatcher(svc)
    job = queued(sqlite_db)
    assert await d.tick(svc.nodes) == 1
    [attempt] = sqlite_db.run(lambda s: list_attempts(s, job_id=job.id))
    sqlite_db.run(lambda s: requeue_job_after_node_fault(
        s, job_id=job.id, attempt_id=attempt.id, reason="gone"))  # fmt: skip
    assert await d.tick(svc.nodes) == 1  # gpu-2 has no shift: gpu-1 tries again
    second = sqlite_db.run(lambda s: list_attempts(s, job_id=job.id))[-1]
    assert second.node == "gpu-1"
    sqlite_db.run(lambda s: requeue_job_after_node_fault(
        s, job_id=job.id, attempt_id=second.id, reason="gone"))  # fmt: skip
    working(sqlite_db, "gpu-2")
    assert await d.tick(svc.nodes) == 1
    assert sqlite_db.run(lambda s: list_attempts(s, job_id=job.id))[-1].node == "gpu-2"
