"""`POST /api/v2/admin/nodes/{id}/refresh`: an admin asks the fleet service to read again what a
node has installed; the request is an audit entry `node.refresh` (the fleet service's facts)."""

from __future__ import annotations

from datetime import datetime

import httpx

from comfyfleet.store import Database, list_audit
from tests.fixtures.gateway import Accounts


async def test_an_admin_asks_for_a_node_inventory_refresh(
    api_client: httpx.AsyncClient, api_users: Accounts, api_db: Database
) -> None:
    admin = api_users.admin.headers
    added = await api_client.post(
        "/api/v2/admin/nodes", headers=admin, json={"id": "gpu-9", "url": "http://127.0.0.1:9"}
    )
    assert added.status_code == 201, added.text
    path = "/api/v2/admin/nodes/gpu-9/refresh"
    assert (await api_client.post(path)).status_code == 401
    assert (await api_client.post(path, headers=api_users.alice.headers)).status_code == 403
    unknown = await api_client.post("/api/v2/admin/nodes/gpu-404/refresh", headers=admin)
    assert unknown.status_code == 404
    asked = await api_client.post(path, headers=admin)
    assert asked.status_code == 202, asked.text
    body = asked.json()
    assert body["node"] == "gpu-9" and datetime.fromisoformat(body["requested_at"])
    [entry] = api_db.run(lambda s: list_audit(s, actions=["node.refresh"]), readonly=True)
    assert (entry.action, entry.target, entry.actor) == ("node.refresh", "gpu-9", "root")
