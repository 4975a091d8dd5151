"""The node registry against a fake Prefect: attempts no shift took move off a node, and
enable/disable write the block, the audit log and the pool."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import pytest

from comfyfleet.fleet import registry
from comfyfleet.store import (
    Database,
    claim_node,
    get_job,
    hold,
    node_shifts,
    take_work,
)
from tests.unit.fleet.fakes import FakePrefect, dispatched_attempt


async def test_attempts_no_shift_took_move_off_a_node_out_of_rotation(
    sqlite_db: Database, tmp_path: Path
) -> None:
    prefect = FakePrefect()
    waiting = dispatched_attempt(sqlite_db, "gpu-1")
    taken = dispatched_attempt(sqlite_db, "gpu-1")
    running = dispatched_attempt(sqlite_db, "gpu-1", running=True)
    elsewhere = dispatched_attempt(sqlite_db, "gpu-2")
    sqlite_db.run(lambda s: take_work(s, shifts={"gpu-9": "x"}, lease_s=10))  # other node: none
    sqlite_db.run(lambda s: hold(s, attempt_id=taken.id, holder="shift-1", lease_s=10))
    moved = await registry.move_pending(prefect, sqlite_db, "gpu-1", why="circuit open")
    assert moved == 1  # only the one no shift took: the others run on the node
    job = sqlite_db.run(lambda s: get_job(s, job_id=waiting.job_id, with_details=True))
    assert job.status == "queued" and job.node_faults == 1
    [attempt] = job.attempts
    assert attempt.status == "node_fault" and registry.MOVED in attempt.reason
    for kept in (taken, running, elsewhere):
        assert sqlite_db.run(lambda s, k=kept: get_job(s, job_id=k.job_id)).status != "queued"
    assert prefect.states == []  # nothing to ask of Prefect


def test_stop_shift_frees_the_node_for_a_new_shift(sqlite_db: Database) -> None:
    sqlite_db.run(lambda s: claim_node(s, node="gpu-1", shift_id="old", holder="h",
                                       stale_after_s=10))  # fmt: skip
    assert registry.stop_shift(sqlite_db, "gpu-1")
    assert "gpu-1" not in sqlite_db.run(node_shifts, readonly=True)
    assert not registry.stop_shift(sqlite_db, "gpu-1")


@pytest.mark.parametrize("enabled", [True, False])
async def test_set_enabled_writes_the_block_audits_and_pauses_on_disable(
    sqlite_db: Database, enabled: bool
) -> None:
    prefect = FakePrefect()
    prefect.pools = {"comfyui-gpu-1": False}
    updates: list[dict[str, Any]] = []

    async def read_block(name: str, block_type_slug: str) -> Any:
        assert block_type_slug == "comfyui-node"
        return SimpleNamespace(id=uuid4(), name=name, data={"url": "http://x"})

    async def update_block(block_id: Any, update: Any) -> None:
        updates.append(update.data)

    prefect.read_block_document_by_name = read_block  # type: ignore[attr-defined]
    prefect.update_block_document = update_block  # type: ignore[attr-defined]
    await registry.set_enabled(prefect, "gpu-1", enabled, db=sqlite_db, actor="test")
    assert updates == [{"enabled": enabled}]
    assert prefect.pools["comfyui-gpu-1"] is (not enabled)
    from comfyfleet.store import list_audit

    [entry] = sqlite_db.run(list_audit, readonly=True)
    assert entry.action == f"node.{'enable' if enabled else 'disable'}" and entry.target == "gpu-1"
