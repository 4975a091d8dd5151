"""Routing strategies on real nodes, and a mixed workload of every generation type.

Each strategy test restarts the fleet service with `COMFYFLEET_ROUTING__STRATEGY` and, where it
matters, node capacities/weights applied to the registry, then restores the session's fleet.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from comfyfleet import jobs
from comfyfleet.fleet.state import node_states, state_path
from comfyfleet.jobs.inputs import InputStore
from comfyfleet.settings import get_settings
from deployments import apply_fleet
from tests.integration.test_dispatch import delay, wait_all

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def in_rotation(service: Any, nodes: list[Any], *, timeout: float = 60.0) -> None:
    """Until the restarted service's snapshot shows every node healthy, as configured (its
    first probe of every node)."""
    path = state_path()
    want = {n.id: n.capacity for n in nodes}
    deadline = time.monotonic() + timeout
    while True:
        try:
            written_by = json.loads(path.read_text())["pid"]
        except (OSError, ValueError, KeyError):
            written_by = None
        seen = {n.id: n for n in node_states()} if written_by == service.proc.pid else {}
        if all(i in seen and seen[i].healthy and seen[i].capacity == c for i, c in want.items()):
            return
        assert time.monotonic() < deadline, f"nodes not in rotation after {timeout}s: {seen}"
        time.sleep(0.2)


@pytest.fixture
def fleet_as(fleet_service, comfy_fleet) -> Iterator[Any]:
    """`fleet_as(strategy, capacity=…, weights={node: w})`: the service restarted that way."""
    original = get_settings().nodes

    def restart(strategy: str, *, capacity: int | None = None,
                weights: dict[str, float] | None = None) -> None:  # fmt: skip
        nodes = [
            n.model_copy(update={
                "capacity": capacity or n.capacity, "weight": (weights or {}).get(n.id, n.weight),
            })
            for n in original
        ]  # fmt: skip
        asyncio.run(apply_fleet(nodes))
        fleet_service.stop()
        fleet_service.start(COMFYFLEET_ROUTING__STRATEGY=strategy)
        in_rotation(fleet_service, nodes)

    yield restart
    asyncio.run(apply_fleet(original))
    fleet_service.stop()
    fleet_service.start()


def _nodes_of(db, ids: list[str]) -> Counter[str]:
    return Counter(jobs.get(db, i).node for i in ids)


def test_round_robin_spreads_jobs_exactly_evenly(
    fleet_as, fleet_db, principals, comfy_fleet
) -> None:
    """A wave that fits the fleet's free slots is dealt out in turn, one job per node per round.
    (Later jobs go to whichever node frees a slot first, so only a wave is exact.)"""
    fleet_as("round_robin", capacity=4)
    n = len(comfy_fleet)
    ids = [jobs.submit(fleet_db, delay(2, seed=11_000 + i), principal=principals["alice"]).id
           for i in range(4 * n)]  # fmt: skip
    done = asyncio.run(wait_all(fleet_db, ids))
    assert all(j.status == "completed" for j in done)
    counts = _nodes_of(fleet_db, ids)
    print(f"round_robin: {dict(counts)}")
    assert sorted(counts.values()) == [4] * n


def test_weighted_shares_follow_the_weights(fleet_as, fleet_db, principals, comfy_fleet) -> None:
    """With every node free, a wave of jobs splits by weight (late binding: weights set the
    shares while several nodes have a free slot). Capacity 2 x weight lets each node take
    exactly its share of a wave of 2 x sum(weights) jobs without filling up early."""
    spread = (1, 1, 2, 4) + (1,) * max(0, len(comfy_fleet) - 4)
    weights = {node.id: w for node, w in zip(comfy_fleet, spread, strict=False)}
    fleet_as("weighted", capacity=2 * max(weights.values()), weights=weights)
    wave = 2 * int(sum(weights.values()))
    ids = [jobs.submit(fleet_db, delay(2, seed=12_000 + i), principal=principals["bob"]).id
           for i in range(wave)]  # fmt: skip
    done = asyncio.run(wait_all(fleet_db, ids, timeout=300))
    assert all(j.status == "completed" for j in done)
    counts = _nodes_of(fleet_db, ids)
    print(f"weighted {weights}: {dict(counts)}")
    assert counts == Counter({node: 2 * int(w) for node, w in weights.items()})


def test_least_loaded_leaves_no_node_idle_while_jobs_wait(
    fleet_as, fleet_db, principals, comfy_fleet
) -> None:
    fleet_as("least_loaded")
    n = len(comfy_fleet)
    ids = [jobs.submit(fleet_db, delay(1.5, seed=13_000 + i), principal=principals["alice"]).id
           for i in range(4 * n)]  # fmt: skip
    done = asyncio.run(wait_all(fleet_db, ids))
    assert all(j.status == "completed" for j in done)
    first_wave = sorted(done, key=lambda j: j.attempts[0].created_at)[: 2 * n]
    print(f"least_loaded first wave: {Counter(j.node for j in first_wave)}")
    assert Counter(j.node for j in first_wave) == Counter({node.id: 2 for node in comfy_fleet})
    counts = _nodes_of(fleet_db, ids)
    assert all(abs(c - 4) <= 1 for c in counts.values()), counts


def test_thirty_mixed_jobs_of_every_type_all_complete(
    fleet_service, fleet_db, principals, comfy_fleet, tmp_path: Path
) -> None:
    still = tmp_path / "still.png"
    Image.new("RGB", (64, 64), (30, 120, 200)).save(still)
    image = InputStore(get_settings().store.inputs_dir).put_file(still).ref
    requests = (
        [jobs.JobRequest(workflow="sd15-basic", params={"prompt": f"fox {i}"}) for i in range(8)]
        + [jobs.JobRequest(workflow="sdxl-basic", params={"prompt": f"owl {i}"}) for i in range(4)]
        + [jobs.JobRequest(workflow="svd-basic", params={"image": image, "seed": i})
           for i in range(4)]
        + [delay(0.5, seed=14_000 + i) for i in range(14)]
    )  # fmt: skip
    started = time.monotonic()
    ids = [jobs.submit(fleet_db, r, principal=principals["bob"]).id for r in requests]
    done = asyncio.run(wait_all(fleet_db, ids, timeout=600))
    print(f"30 mixed jobs on {len(comfy_fleet)} nodes: {time.monotonic() - started:.1f}s, "
          f"by node {dict(Counter(j.node for j in done))}")  # fmt: skip
    assert [j.status for j in done] == ["completed"] * 30, [(j.workflow, j.error) for j in done]
    by_workflow = Counter(j.workflow for j in done)
    assert by_workflow == {"sd15-basic": 8, "sdxl-basic": 4, "svd-basic": 4, "delay": 14}
    for job in done:
        [output] = job.outputs
        if job.workflow == "svd-basic":
            with Image.open(output.path) as img:
                assert img.n_frames == 4
    assert len({j.node for j in done}) == len(comfy_fleet)
