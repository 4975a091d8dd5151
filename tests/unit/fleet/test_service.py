"""The fleet service's leader loop against fake nodes and a fake Prefect: pools follow the nodes,
the store's facts feed the monitor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from comfyfleet.fleet.state import node_states
from comfyfleet.store import (
    Database,
    audit,
    claim_job,
    create_attempt,
    create_job,
    list_attempts,
    mark_attempt_running,
    requeue_job_after_node_fault,
)
from comfyfleet.store.users import ensure_service_user
from tests.unit.fleet.fakes import (
    FakePrefect,
    dispatched_attempt,
    gpu,
    read_facts,
    service,
)


async def test_pools_follow_the_nodes_and_the_snapshot_says_why(
    sqlite_db: Database, tmp_path: Path
) -> None:
    svc = service(sqlite_db, tmp_path, gpu(1), gpu(2), gpu(3, enabled=False))
    prefect = FakePrefect()
    prefect.pools = {"comfyui-gpu-1": True, "comfyui-gpu-2": False, "comfyui-gpu-3": False}
    svc.monitor.nodes["gpu-2"].state = "open"
    await svc.sync_pools(prefect)
    assert prefect.pools == {"comfyui-gpu-1": False, "comfyui-gpu-2": True, "comfyui-gpu-3": True}
    svc.write_snapshot()
    states = {s.id: s for s in node_states(path=svc.state_file)}
    assert states["gpu-1"].healthy and states["gpu-1"].paused is False
    assert states["gpu-2"].circuit == "open" and not states["gpu-2"].healthy
    assert states["gpu-3"].state == "disabled" and states["gpu-3"].paused


async def test_store_facts_feed_quarantine_release_and_last_checkpoint(
    sqlite_db: Database, tmp_path: Path
) -> None:
    svc = service(sqlite_db, tmp_path, gpu(1), gpu(2))
    for _ in range(3):
        attempt = dispatched_attempt(sqlite_db, "gpu-1", running=True)
        sqlite_db.run(lambda s, a=attempt: requeue_job_after_node_fault(
            s, job_id=a.job_id, attempt_id=a.id, reason="gone", max_node_faults=9))  # fmt: skip
    unstarted = dispatched_attempt(sqlite_db, "gpu-2")
    sqlite_db.run(lambda s: requeue_job_after_node_fault(
        s, job_id=unstarted.job_id, attempt_id=unstarted.id, reason="moved"))  # fmt: skip

    def t2i(s: Any) -> None:
        job = create_job(s, workflow="sd15-basic", capability="text_to_image",
                         params={"prompt": "x", "checkpoint": "sd15"},
                         owner=ensure_service_user(s))  # fmt: skip
        claim_job(s, job_id=job.id)
        attempt = create_attempt(s, job_id=job.id, node="gpu-2")
        mark_attempt_running(s, attempt_id=attempt.id, lease_s=10)

    sqlite_db.run(t2i)
    facts = sqlite_db.run(read_facts, readonly=True)
    assert len(facts.faults["gpu-1"]) == 3 and "gpu-2" not in facts.faults
    assert facts.in_flight == {"gpu-2": 1}
    svc.facts = facts
    for node_id in ("gpu-1", "gpu-2"):
        svc.monitor.record_attempt_faults(node_id, facts.faults.get(node_id, ()))
    assert svc.monitor.nodes["gpu-1"].quarantined  # 3 > N = 2
    assert svc.out_of_rotation(svc.nodes[0]) == "node quarantined"
    assert svc._checkpoint("gpu-2") == "sd15"
    sqlite_db.run(lambda s: audit(s, actor="test", action="node.enable", target="gpu-1"))
    facts = sqlite_db.run(read_facts, readonly=True)
    svc.monitor.record_attempt_faults(
        "gpu-1", facts.faults["gpu-1"], released_at=facts.releases["gpu-1"]
    )
    assert svc.monitor.nodes["gpu-1"].healthy
    assert [a.status for a in sqlite_db.run(lambda s: list_attempts(s, job_id=unstarted.job_id))
            ] == ["node_fault"]  # fmt: skip
