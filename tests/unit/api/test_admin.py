"""Admin routes: nodes, users and audit, performance and fleet stats (and the job metrics they
share with /metrics)."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from comfyfleet.api import metrics
from comfyfleet.store import Database
from tests.fixtures.gateway import Accounts, complete_job
from tests.unit.api.test_tasks import png_bytes


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_node_admin_add_disable_drain_remove(
    api_client: httpx.AsyncClient, api_users: Accounts
) -> None:
    headers = api_users.admin.headers
    added = await api_client.post(
        "/api/v2/admin/nodes",
        headers=headers,
        json={"id": "gpu-9", "url": "http://127.0.0.1:9", "capacity": 3},
    )
    assert added.status_code == 201, added.text
    node = added.json()
    assert node["id"] == "gpu-9" and node["capacity"] == 3
    assert node["state"] == "down" and node["last_error"]  # nothing listens on port 9
    dup = await api_client.post(
        "/api/v2/admin/nodes", headers=headers, json={"id": "gpu-9", "url": "http://127.0.0.1:9"}
    )
    assert dup.status_code == 409
    bad = await api_client.post(
        "/api/v2/admin/nodes", headers=headers, json={"id": "GPU 9!", "url": "http://x"}
    )
    assert bad.status_code == 422 and bad.json()["field"] == "id"
    disabled = await api_client.post("/api/v2/admin/nodes/gpu-9/disable", headers=headers)
    assert disabled.json()["state"] == "disabled" and not disabled.json()["enabled"]
    enabled = await api_client.post("/api/v2/admin/nodes/gpu-9/enable", headers=headers)
    assert enabled.json()["enabled"]
    drained = await api_client.post("/api/v2/admin/nodes/gpu-9/drain", headers=headers)
    assert drained.json()["state"] == "draining"
    legacy = await api_client.get("/nodes", headers=headers)
    assert [n["id"] for n in legacy.json()] == ["gpu-9"]
    stats = (await api_client.get("/cluster/stats", headers=headers)).json()
    assert stats["nodes"] == 1 and stats["capacity"] == 3
    assert (
        await api_client.delete("/api/v2/admin/nodes/gpu-9", headers=headers)
    ).status_code == 204
    assert (await api_client.get("/api/v2/admin/nodes/gpu-9", headers=headers)).status_code == 404
    registered = await api_client.post(
        "/nodes/register",
        headers=headers,
        json={
            "node_id": "comfyui-worker-1",
            "host": "127.0.0.1",
            "port": 9,
            "max_concurrent": 4,
            "capabilities": ["text_to_image"],
            "metadata": {"gpu_model": "RTX 4090"},
        },
    )
    assert registered.status_code == 201
    assert registered.json()["url"] == "http://127.0.0.1:9"


async def test_user_admin_create_list_and_audit(
    api_client: httpx.AsyncClient, api_users: Accounts
) -> None:
    headers = api_users.admin.headers
    created = await api_client.post(
        "/api/v2/admin/users",
        headers=headers,
        json={"username": "carol", "password": "long enough pw"},
    )
    assert created.status_code == 201 and created.json()["role"] == "user"
    again = await api_client.post(
        "/api/v2/admin/users",
        headers=headers,
        json={"username": "carol", "password": "long enough pw"},
    )
    assert again.status_code == 409
    short = await api_client.post(
        "/api/v2/admin/users", headers=headers, json={"username": "dave", "password": "short"}
    )
    assert short.status_code == 422 and short.json()["field"] == "password"
    names = [
        u["username"] for u in (await api_client.get("/api/v2/admin/users", headers=headers)).json()
    ]
    assert {"root", "alice", "bob", "carol"} <= set(names)
    login = await api_client.post(
        "/api/v2/auth/login", json={"username": "carol", "password": "long enough pw"}
    )
    assert login.status_code == 200
    audit = (await api_client.get("/api/v2/admin/audit", headers=headers)).json()
    assert any(
        e["action"] == "user.create" and e["target"] == "carol" and e["actor"] == "root"
        for e in audit
    )
    missing = await api_client.post("/api/v2/admin/users/nobody/disable", headers=headers)
    assert missing.status_code == 404


async def test_performance_stats_and_metrics_reflect_finished_jobs(
    api_client: httpx.AsyncClient, api_users: Accounts, api_db: Database, api_settings: object
) -> None:
    ids = []
    for _ in range(3):
        r = await api_client.post(
            "/api/v2/tasks",
            headers=api_users.alice.headers,
            json={"workflow": "delay", "params": {}},
        )
        ids.append(r.json()["id"])
    complete_job(api_db, ids[0], {"a.png": png_bytes()}, api_settings.store.outputs_dir)  # type: ignore[attr-defined]
    complete_job(
        api_db,
        ids[1],
        {"a.png": png_bytes()},
        api_settings.store.outputs_dir,  # type: ignore[attr-defined]
        node="gpu-2",
    )
    await api_client.delete(f"/api/v2/tasks/{ids[2]}", headers=api_users.alice.headers)
    headers = api_users.admin.headers
    nodes = {
        n["node"]: n
        for n in (await api_client.get("/api/v2/admin/performance/nodes", headers=headers)).json()
    }
    assert nodes["gpu-1"]["completed"] == 1 and nodes["gpu-1"]["gpu_seconds"] == 1.5
    tasks = (await api_client.get("/api/v2/admin/performance/tasks", headers=headers)).json()
    assert tasks[0]["workflow"] == "delay" and tasks[0]["by_status"] == {
        "completed": 2,
        "cancelled": 1,
    }
    stats = (await api_client.get("/api/v2/admin/stats", headers=headers)).json()
    assert stats["jobs_per_hour"][0]["submitted"] == 3
    assert {r["key"] for r in stats["gpu_seconds_by_node"]} == {"gpu-1", "gpu-2"}
    assert stats["gpu_seconds_by_user"][0] == {
        "key": "alice",
        "gpu_seconds": 3.0,
        "attempts": 2,
        "jobs": 2,
    }
    text = (await api_client.get("/metrics")).text
    got = samples(text)
    assert got[("comfyfleet_jobs_submitted_total", (("workflow", "delay"),))] == 3
    assert (
        got[("comfyfleet_jobs_finished_total", (("status", "completed"), ("workflow", "delay")))]
        == 2
    )
    assert (
        got[("comfyfleet_jobs_finished_total", (("status", "cancelled"), ("workflow", "delay")))]
        == 1
    )
    assert got[("comfyfleet_job_run_seconds_count", (("workflow", "delay"),))] == 2
    assert got[("comfyfleet_job_queue_wait_seconds_count", (("workflow", "delay"),))] == 2
    assert got[("comfyfleet_gpu_seconds_total", (("node", "gpu-2"),))] == 1.5
    # each finished job is counted once, however often Prometheus scrapes
    gateway = api_client._transport.app.state.gateway  # type: ignore[attr-defined]
    for collector in list(gateway.registry._collector_to_names):
        if isinstance(collector, metrics.JobsCollector):
            collector.cache_s = 0
    again = samples((await api_client.get("/metrics")).text)
    assert again[("comfyfleet_job_run_seconds_count", (("workflow", "delay"),))] == 2
