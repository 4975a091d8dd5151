"""Chaos: many short jobs on four real nodes while a node is killed, another restarted and a
worker killed (and restarted, as a supervisor would). Every job completes, exactly once."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from comfyfleet import jobs
from comfyfleet.jobs import JobRequest
from comfyfleet.store import Job, get_job
from tests.fixtures.chaos import shift_working, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]

FLEET_SIZE = 4
JOBS = 100
DELAY_S = 0.4


def batch_counts(db: Any, batch_id: str) -> Counter[str]:
    rows = db.run(
        lambda s: s.execute(
            select(Job.status, func.count()).where(Job.batch_id == batch_id).group_by(Job.status)
        ).all(),
        readonly=True,
    )
    return Counter({status: n for status, n in rows})


async def test_chaos_every_job_completes_exactly_once(
    fleet_service, prefect_fleet, fleet_db, principals, comfy_fleet, extra_nodes
) -> None:
    extra = [f"chaos-{i}" for i in range(1, max(1, FLEET_SIZE - len(comfy_fleet)) + 1)]
    async with extra_nodes(extra) as chaos:
        fleet = [*comfy_fleet, *chaos.nodes]
        victim = chaos.nodes[0]  # kill -9, stays dead
        bounced = comfy_fleet[-1]  # restarted (SIGTERM, start again: it forgets everything)
        await wait_for(
            lambda: all(n.healthy for n in _states(fleet)), timeout=60, what="chaos nodes healthy"
        )
        await wait_for(  # a node gets work only once its shift runs
            lambda: all(shift_working(fleet_db, n.id) for n in fleet), timeout=180,
            what="every node's shift running",
        )  # fmt: skip
        batch = f"chaos-{int(time.time())}"
        users = [principals["alice"], principals["bob"]]
        started = time.monotonic()

        def submit_all() -> list[str]:
            return [
                jobs.submit(
                    fleet_db,
                    JobRequest(workflow="delay", params={"seconds": DELAY_S, "steps": 2,
                                                         "seed": 9000 + i}, batch_id=batch),
                    principal=users[i % 2],
                ).id
                for i in range(JOBS)
            ]  # fmt: skip

        # Submitting goes on while the chaos happens: on a slow machine the nodes keep up with
        # the submits, and faults injected after the last one would find nothing to hit.
        submitting = asyncio.create_task(asyncio.to_thread(submit_all))
        events: list[str] = []

        def at(what: str) -> None:
            events.append(f"{time.monotonic() - started:5.1f}s {what}")

        async def completed_at_least(n: int) -> bool:
            return batch_counts(fleet_db, batch)["completed"] >= n

        await wait_for(lambda: completed_at_least(JOBS // 6), timeout=300, what="first jobs")
        await wait_for(  # the kill must hit a prompt, not an idle node
            lambda: _live_attempts(fleet_db, batch, victim.id, ("running",)), timeout=120,
            what=f"a job running on {victim.id}",
        )  # fmt: skip
        victim.kill()
        at(f"kill -9 node {victim.id}")
        await wait_for(lambda: completed_at_least(JOBS // 3), timeout=300, what="more jobs")
        await wait_for(
            lambda: _live_attempts(fleet_db, batch, bounced.id, ("pending", "running")),
            timeout=120, what=f"a job on {bounced.id}",
        )  # fmt: skip
        bounce = asyncio.create_task(asyncio.to_thread(bounced.restart))
        at(f"restart node {bounced.id}")
        await wait_for(lambda: completed_at_least(JOBS // 2), timeout=300, what="half the jobs")
        os.killpg(prefect_fleet.proc.pid, signal.SIGKILL)
        prefect_fleet.proc.wait()
        at(f"kill -9 worker serving {', '.join(prefect_fleet.pools)}")
        prefect_fleet.start()
        at("worker restarted")
        await bounce
        at(f"node {bounced.id} back")
        ids = await submitting
        at(f"all {JOBS} jobs submitted")

        def finished() -> bool:
            counts = batch_counts(fleet_db, batch)
            return sum(counts[s] for s in ("completed", "failed", "cancelled")) == JOBS

        try:
            await wait_for(finished, timeout=600, what=f"all {JOBS} chaos jobs finished", every=1)
        finally:
            elapsed = time.monotonic() - started
            print(f"\nchaos: {batch_counts(fleet_db, batch)} after {elapsed:.1f}s; events:")
            print("\n".join(f"  {e}" for e in events))
        done = [
            fleet_db.run(lambda s, i=i: get_job(s, job_id=i, with_details=True), readonly=True)
            for i in ids
        ]
        attempts = [a for j in done for a in j.attempts]
        outcome = Counter(a.status for a in attempts)
        moved = sum(1 for a in attempts if a.reason and "moved before it started" in a.reason)
        by_node = Counter(j.node for j in done if j.status == "completed")
        print(
            f"chaos: {JOBS} jobs on {len(fleet)} nodes in {elapsed:.1f}s: "
            f"{Counter(j.status for j in done)}; {len(attempts)} attempts {dict(outcome)} "
            f"({moved} moved before starting); completed per node {dict(sorted(by_node.items()))}"
        )
        problems = []
        for job in done:
            wins = [a for a in job.attempts if a.status == "completed"]
            if job.status != "completed" or len(wins) != 1:
                problems.append(f"{job.id}: {job.status} ({job.error}) wins={len(wins)}")
                continue
            [win] = wins
            others = {a.status for a in job.attempts if a is not win}
            folder = Path(job.outputs[0].path).parent if job.outputs else None
            files = sorted(folder.iterdir()) if folder is not None else []
            if len(job.outputs) != 1 or others - {"node_fault"}:
                problems.append(f"{job.id}: outputs={len(job.outputs)} others={others}")
                continue
            [out] = job.outputs
            if (out.attempt_id, out.prompt_id, out.node) != (win.id, win.id, win.node):
                problems.append(f"{job.id}: output from {out.attempt_id}, won by {win.id}")
            if len(files) != 1 or hashlib.sha256(files[0].read_bytes()).hexdigest() != out.sha256:
                problems.append(f"{job.id}: files on disk {[f.name for f in files]}")
        assert not problems, f"{len(problems)} jobs not completed exactly once:\n" + "\n".join(
            problems[:20]
        )
        assert outcome["node_fault"] >= 1  # the chaos did hit running or waiting attempts


def _live_attempts(db: Any, batch_id: str, node: str, statuses: tuple[str, ...]) -> int:
    from comfyfleet.store import Attempt

    stmt = (
        select(func.count())
        .select_from(Attempt)
        .join(Job, Job.id == Attempt.job_id)
        .where(Job.batch_id == batch_id, Attempt.node == node, Attempt.status.in_(statuses))
    )
    return int(db.run(lambda s: s.scalar(stmt), readonly=True) or 0)


def _states(nodes: list[Any]) -> list[Any]:
    from comfyfleet.fleet.state import node_states

    known = {s.id: s for s in node_states()}
    return [known.get(n.id) or _Missing() for n in nodes]


class _Missing:
    healthy = False
