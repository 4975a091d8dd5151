"""`POST /api/v2/batches` queues one job per item (all validated first) and
`GET /api/v2/batches/{id}` reports them with counts per status, to their owner."""

from __future__ import annotations

import httpx

from comfyfleet.settings import Settings
from comfyfleet.store import Database
from tests.fixtures.gateway import Accounts, acomplete_job
from tests.unit.api.test_tasks import png_bytes, stored_request


async def test_a_batch_queues_one_job_per_item_with_the_defaults_under_each(
    api_client: httpx.AsyncClient, api_users: Accounts, api_db: Database
) -> None:
    response = await api_client.post(
        "/api/v2/batches",
        headers=api_users.alice.headers,
        json={
            "workflow": "delay",
            "items": [{"seconds": 0.1}, {"seconds": 0.2, "seed": 7}],
            "defaults": {"seed": 1},
            "priority": "high",
        },
    )
    assert response.status_code == 202, response.text
    batch = response.json()
    assert [j["batch_id"] for j in batch["jobs"]] == [batch["batch_id"]] * 2
    assert [j["priority"] for j in batch["jobs"]] == ["high", "high"]
    requests = [stored_request(api_db, j["id"]) for j in batch["jobs"]]
    assert [(r["seconds"], r["seed"]) for r in requests] == [(0.1, 1), (0.2, 7)]


async def test_a_bad_item_is_named_and_nothing_is_queued(
    api_client: httpx.AsyncClient, api_users: Accounts
) -> None:
    bad = await api_client.post(
        "/api/v2/batches",
        headers=api_users.alice.headers,
        json={"workflow": "delay", "items": [{"seconds": 1}, {"seconds": -3}]},
    )
    assert bad.status_code == 422, bad.text
    assert bad.json()["field"] == "items[1].seconds" and "items[1].seconds" in bad.json()["message"]
    unknown = await api_client.post(
        "/api/v2/batches",
        headers=api_users.alice.headers,
        json={"workflow": "nope", "items": [{"seconds": 1}]},
    )
    assert unknown.status_code == 422 and unknown.json()["field"] == "workflow"
    empty = await api_client.post(
        "/api/v2/batches", headers=api_users.alice.headers, json={"workflow": "delay", "items": []}
    )
    assert empty.status_code == 422 and "items" in empty.text
    listed = (await api_client.get("/api/v2/tasks", headers=api_users.alice.headers)).json()
    assert listed["total"] == 0


async def test_a_batch_shows_its_jobs_and_counts_to_its_owner_only(
    api_client: httpx.AsyncClient, api_users: Accounts, api_db: Database, api_settings: Settings
) -> None:
    made = await api_client.post(
        "/api/v2/batches",
        headers=api_users.alice.headers,
        json={"workflow": "delay", "items": [{"seconds": 0.1, "seed": i} for i in range(3)]},
    )
    batch = made.json()
    first = batch["jobs"][0]["id"]
    await acomplete_job(api_db, first, {"out.png": png_bytes()}, api_settings.store.outputs_dir)
    url = f"/api/v2/batches/{batch['batch_id']}"
    shown = await api_client.get(url, headers=api_users.alice.headers)
    assert shown.status_code == 200, shown.text
    body = shown.json()
    assert body["total"] == 3 and body["counts"] == {"completed": 1, "queued": 2}
    assert not body["done"]
    assert [j["id"] for j in body["jobs"]] == [j["id"] for j in batch["jobs"]]  # oldest first
    assert body["jobs"][0]["outputs"][0]["name"] == "out.png"
    other = await api_client.get(url, headers=api_users.bob.headers)
    assert other.status_code == 404 and other.json()["field"] == "batch_id"
    admin = await api_client.get(url, headers=api_users.admin.headers)
    assert admin.status_code == 200 and admin.json()["total"] == 3
