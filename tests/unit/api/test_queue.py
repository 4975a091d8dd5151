"""Where queued jobs stand: positions in the dispatcher's own serving order (priorities, fair
share), counted among the jobs that compete for a node, and the fleet's free slots; on REST
job status while queued."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import httpx

from comfyfleet import jobs
from comfyfleet.api import gateway_of
from comfyfleet.api.queue import QueueView
from comfyfleet.auth import Principal
from comfyfleet.settings import Settings
from comfyfleet.store import (
    Database,
    claim_job,
    create_attempt,
    get_user,
    mark_attempt_running,
)
from tests.fixtures.gateway import Accounts


def node(id_: str, capabilities: list[str], *, capacity: int = 2, state: str = "up") -> Any:
    return SimpleNamespace(
        id=id_, capabilities=capabilities, capacity=capacity, enabled=True, state=state
    )


def submit(db: Database, settings: Settings, who: str, workflow: str, priority: str) -> str:
    user = db.run(lambda s: get_user(s, username=who), readonly=True)
    params = {"seconds": 1} if workflow == "delay" else {"prompt": "a fox"}
    request = jobs.JobRequest(workflow=workflow, params=params, priority=priority)
    catalog = jobs.load_catalog(settings)
    return jobs.submit(db, request, principal=Principal(user=user), catalog=catalog).id


def run_on(db: Database, job_id: str, node_id: str) -> None:
    with db.session() as s:
        claim_job(s, job_id=job_id)
        attempt = create_attempt(s, job_id=job_id, node=node_id, lease_s=60)
        mark_attempt_running(s, attempt_id=attempt.id, lease_s=60)


def test_positions_follow_priorities_and_fair_share_and_free_slots_count_live_attempts(
    api_settings: Settings, api_db: Database, api_users: Accounts
) -> None:
    fleet = [node("gpu-1", ["delay"], capacity=2), node("gpu-2", ["delay"], capacity=1)]
    view = QueueView(api_db, lambda: fleet, ttl_s=0)
    first = submit(api_db, api_settings, "alice", "delay", "normal")
    run_on(api_db, first, "gpu-1")
    queued = [submit(api_db, api_settings, "alice", "delay", "normal") for _ in range(2)]
    urgent = submit(api_db, api_settings, "bob", "delay", "high")
    bobs = submit(api_db, api_settings, "bob", "delay", "normal")
    snap = view.snapshot()
    assert snap.slots == 3 and snap.free_slots == 2
    assert snap.position(urgent) == 0  # high before every normal job
    # serving bob's urgent job makes him the owner served last: alice and bob then take turns
    assert [snap.position(j) for j in (queued[0], bobs, queued[1])] == [1, 2, 3]
    run_on(api_db, urgent, "gpu-2")
    snap = view.snapshot()
    assert snap.free_slots == 1
    assert [snap.position(j) for j in (queued[0], bobs, queued[1])] == [0, 1, 2]


def test_only_jobs_that_compete_for_a_node_count_and_a_down_node_has_no_free_slots(
    api_settings: Settings, api_db: Database, api_users: Accounts
) -> None:
    fleet = [
        node("gpu-1", ["delay"]),
        node("gpu-2", ["text_to_image"]),
        node("gpu-3", ["delay"], state="down"),
    ]
    view = QueueView(api_db, lambda: fleet, ttl_s=0)
    images = submit(api_db, api_settings, "bob", "sd15-basic", "high")
    delay = submit(api_db, api_settings, "alice", "delay", "low")
    snap = view.snapshot()
    assert snap.position(images) == 0
    assert snap.position(delay) == 0  # the image job needs another node
    assert snap.slots == 4 and snap.free_slots == 4


def test_the_snapshot_is_shared_for_its_ttl(
    api_settings: Settings, api_db: Database, api_users: Accounts
) -> None:
    reads = []
    view = QueueView(api_db, lambda: reads.append(1) or [node("gpu-1", ["delay"])], ttl_s=60)
    for _ in range(5):
        view.snapshot()
    assert len(reads) == 1


async def test_rest_job_status_shows_the_position_while_queued(
    api_app: Any, api_client: httpx.AsyncClient, api_users: Accounts
) -> None:
    gateway_of(api_app).queue.ttl_s = 0
    ids = []
    for priority in ("high", "normal"):
        response = await api_client.post(
            "/api/v2/tasks",
            headers=api_users.bob.headers if priority == "high" else api_users.alice.headers,
            json={"workflow": "delay", "params": {"seconds": 1}, "priority": priority},
        )
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    shown = await api_client.get(f"/api/v2/tasks/{ids[1]}", headers=api_users.alice.headers)
    assert shown.status_code == 200
    assert shown.json()["position"] == 1 and shown.json()["free_slots"] == 0
    first = await api_client.get(f"/api/v2/tasks/{ids[0]}", headers=api_users.bob.headers)
    assert first.json()["position"] == 0
    await api_client.delete(f"/api/v2/tasks/{ids[0]}", headers=api_users.bob.headers)
    assert (await api_client.get(f"/api/v2/tasks/{ids[1]}", headers=api_users.alice.headers)
            ).json()["position"] == 0  # fmt: skip
    ended = await api_client.get(f"/api/v2/tasks/{ids[0]}", headers=api_users.bob.headers)
    assert ended.json()["status"] == "cancelled" and ended.json()["position"] is None


def test_raw_graph_jobs_compete_for_every_node(api_db: Database, api_users: Accounts) -> None:
    from comfyfleet.catalog.raw import GRAPH_CAPABILITY, GRAPH_WORKFLOW
    from comfyfleet.store import create_job

    fleet = [node("gpu-1", ["delay"])]
    view = QueueView(api_db, lambda: fleet, ttl_s=0)
    graph = {"1": {"class_type": "SaveImage", "inputs": {}}}

    def make(s: Any) -> str:
        owner = get_user(s, username="alice")
        return create_job(s, workflow=GRAPH_WORKFLOW, capability=GRAPH_CAPABILITY,
                          params={"graph": graph}, owner=owner).id  # fmt: skip

    ids = [api_db.run(make) for _ in range(2)]
    snap = view.snapshot()
    assert [snap.position(i) for i in ids] == [0, 1]  # in the backlog, not blocked
