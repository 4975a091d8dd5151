"""Node self-join over REST, on the in-process gateway (its in-memory fleet) with a stand-in
ComfyUI served on a loopback port: token refusals, probe refusals, input errors, re-join, leave
with drain, join tokens listed and revoked. The real ComfyUI + Prefect path is
tests/integration/test_node_join.py."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx

from comfyfleet import auth
from comfyfleet.store import (
    Database,
    claim_job,
    complete_job,
    create_attempt,
    mark_attempt_running,
    utcnow,
)
from comfyfleet.store.models import Token
from tests.fixtures.gateway import Accounts, free_port
from tests.unit.api.joining import admin_nodes, bearer, join_token


async def test_join_is_refused_without_a_valid_join_token_and_registers_nothing(
    api_client: httpx.AsyncClient, api_users: Accounts, api_db: Database, comfy_stand_in: Any
) -> None:
    body = {"name": "gpu-7", "url": comfy_stand_in.url}
    expired, revoked = join_token(api_db), join_token(api_db)
    with api_db.session() as s:
        s.get(Token, expired.id).expires_at = utcnow() - timedelta(minutes=1)
        auth.revoke_token(s, token_id=revoked.id, actor="test")
    cases = {
        None: "a join token is required",
        "cfj_" + "x" * 43: "unknown join token",
        expired.token: f"join token {expired.id} expired at",
        revoked.token: f"join token {revoked.id} was revoked at",
        api_users.admin.token: "that is a bearer token, not a join token",
        "hello": "not a join token",
    }
    for token, reason in cases.items():
        response = await api_client.post(
            "/api/v2/nodes/join", json=body, headers=bearer(token) if token else {}
        )
        assert response.status_code == 401, response.text
        error = response.json()
        assert error["error"] == "join_refused" and error["field"] == "Authorization"
        assert error["message"].startswith("join refused: ") and reason in error["message"]
    assert await admin_nodes(api_client, api_users) == {}


async def test_join_is_refused_when_the_url_does_not_answer_as_a_comfyui(
    api_client: httpx.AsyncClient, api_users: Accounts, api_db: Database, comfy_stand_in: Any
) -> None:
    token = join_token(api_db).token
    closed = f"http://127.0.0.1:{free_port()}"
    for url, reason in (
        (closed, f"cannot reach {closed}"),
        (f"{comfy_stand_in.url}/elsewhere", "answered HTTP 404: not a ComfyUI server?"),
    ):
        response = await api_client.post(
            "/api/v2/nodes/join", json={"name": "gpu-7", "url": url}, headers=bearer(token)
        )
        assert response.status_code == 422, response.text
        error = response.json()
        assert error["error"] == "node_unreachable" and error["field"] == "url"
        assert reason in error["message"], error
    assert await admin_nodes(api_client, api_users) == {}


async def test_join_names_the_bad_field(
    api_client: httpx.AsyncClient, api_users: Accounts, api_db: Database, comfy_stand_in: Any
) -> None:
    token = join_token(api_db).token
    good = {"name": "gpu-7", "url": comfy_stand_in.url}
    for change, field, words in (
        ({"name": "GPU 7!"}, "name", "pattern"),
        ({"url": "ftp://10.0.0.7:8188"}, "url", "http:// or https://"),
        ({"url": "http://10.0.0.7:8188/?x=1"}, "url", "without ?query"),
        ({"capacity": 0}, "capacity", "greater than or equal to 1"),
        ({"capabilities": ["text2img"]}, "capabilities", "unknown capability 'text2img'"),
        ({"metadata": {"joined": "yes"}}, "metadata", "reserved"),
        ({"metadata": {"rack": ["a"]}}, "metadata", "text, a number or a boolean"),
        ({"colour": "red"}, "colour", "Extra inputs"),
    ):
        response = await api_client.post(
            "/api/v2/nodes/join", json={**good, **change}, headers=bearer(token)
        )
        assert response.status_code == 422, (change, response.text)
        assert response.json()["field"] == field, response.json()
        assert words in response.json()["message"], response.json()
    assert await admin_nodes(api_client, api_users) == {}


async def test_a_node_joins_rejoins_to_update_and_leaves_after_its_job_finishes(
    api_client: httpx.AsyncClient, api_users: Accounts, api_db: Database, comfy_stand_in: Any
) -> None:
    first, second = join_token(api_db, note="rack 3"), join_token(api_db, note="rack 4")
    joined = await api_client.post(
        "/api/v2/nodes/join",
        json={"name": "gpu-7", "url": comfy_stand_in.url + "/", "capabilities": ["delay"]},
        headers=bearer(first.token),
    )
    assert joined.status_code == 201, joined.text
    answer = joined.json()
    assert answer["created"] and answer["pool"] == "comfyui-gpu-7"
    assert answer["node_key"].startswith("cfn_")
    node = (await admin_nodes(api_client, api_users))["gpu-7"]
    assert node["url"] == comfy_stand_in.url and node["capacity"] == 2
    assert node["capabilities"] == ["delay"] and node["metadata"]["gpu"] == "NVIDIA L4"
    assert node["joined"]["token_id"] == first.id and node["joined"]["token_note"] == "rack 3"
    assert node["joined"]["via"] == "join-token" and node["joined"]["address"]
    assert "key_sha256" not in node["joined"]
    listed = await api_client.get("/api/v2/admin/nodes", headers=api_users.admin.headers)
    assert answer["node_key"] not in listed.text  # only its digest is kept

    rejoined = await api_client.post(
        "/api/v2/nodes/join",
        json={"name": "gpu-7", "url": comfy_stand_in.url, "capacity": 3,
              "metadata": {"rack": "r4", "gpu": "L4 24GB"}, "node_key": answer["node_key"]},
        headers=bearer(second.token),
    )  # fmt: skip
    assert rejoined.status_code == 200, rejoined.text
    assert not rejoined.json()["created"]
    nodes = await admin_nodes(api_client, api_users)
    assert list(nodes) == ["gpu-7"]
    node = nodes["gpu-7"]
    assert node["capacity"] == 3 and node["capabilities"] == ["delay"]  # what is not given stays
    assert node["metadata"]["rack"] == "r4" and node["metadata"]["gpu"] == "L4 24GB"
    assert node["joined"]["token_id"] == second.id
    assert node["joined"]["joined_at"] == answer["node"]["joined"]["joined_at"]
    assert node["joined"]["updated_at"] > node["joined"]["joined_at"]

    # revoking the token keeps the node, but it can join nothing more
    revoked = await api_client.delete(
        f"/api/v2/admin/tokens/join/{second.id}", headers=api_users.admin.headers
    )
    assert revoked.status_code == 204, revoked.text
    again = await api_client.delete(
        f"/api/v2/admin/tokens/join/{second.id}", headers=api_users.admin.headers
    )
    assert again.status_code == 409 and "revoked already" in again.json()["message"]
    tokens = await api_client.get("/api/v2/admin/tokens/join", headers=api_users.admin.headers)
    by_id = {t["id"]: t for t in tokens.json()}
    assert by_id[second.id]["state"] == "revoked" and by_id[second.id]["nodes"] == ["gpu-7"]
    assert by_id[first.id]["state"] == "active" and by_id[first.id]["nodes"] == []
    assert "token" not in by_id[first.id]
    assert "gpu-7" in await admin_nodes(api_client, api_users)
    refused = await api_client.post(
        "/api/v2/nodes/join",
        json={"name": "gpu-8", "url": comfy_stand_in.url},
        headers=bearer(second.token),
    )
    assert refused.status_code == 401 and "revoked" in refused.json()["message"]

    # leave: the key of the first join was replaced; the node drains while its job runs
    leave = "/api/v2/nodes/gpu-7/leave"
    stale = await api_client.post(leave, headers=bearer(answer["node_key"]))
    assert stale.status_code == 401 and "not the node key of gpu-7" in stale.json()["message"]
    user = await api_client.post(leave, headers=api_users.alice.headers)
    assert user.status_code == 403
    key = rejoined.json()["node_key"]
    job = await api_client.post(
        "/api/v2/tasks",
        json={"workflow": "delay", "params": {"seconds": 1}},
        headers=api_users.alice.headers,
    )
    job_id = job.json()["id"]
    with api_db.session() as s:
        assert claim_job(s, job_id=job_id)
        attempt_id = create_attempt(s, job_id=job_id, node="gpu-7", lease_s=60).id
    with api_db.session() as s:
        assert mark_attempt_running(s, attempt_id=attempt_id, lease_s=60)
    draining = await api_client.post(leave, headers=bearer(key))
    assert draining.status_code == 202, draining.text
    assert draining.json()["status"] == "draining" and draining.json()["in_flight"] == 1
    assert "gpu-7" in await admin_nodes(api_client, api_users)
    with api_db.session() as s:
        complete_job(s, job_id=job_id, attempt_id=attempt_id, gpu_seconds=1.0)
    left = await api_client.post(leave, headers=bearer(key))
    assert left.status_code == 200 and left.json()["status"] == "removed", left.text
    assert await admin_nodes(api_client, api_users) == {}
    gone = await api_client.post(leave, headers=bearer(key))
    assert gone.status_code == 404 and "left already" in gone.json()["message"]


async def test_join_cannot_take_over_a_node_an_admin_added(
    api_client: httpx.AsyncClient, api_users: Accounts, api_db: Database, comfy_stand_in: Any
) -> None:
    added = await api_client.post(
        "/api/v2/admin/nodes",
        json={"id": "gpu-1", "url": "http://127.0.0.1:9"},
        headers=api_users.admin.headers,
    )
    assert added.status_code == 201
    response = await api_client.post(
        "/api/v2/nodes/join",
        json={"name": "gpu-1", "url": comfy_stand_in.url},
        headers=bearer(join_token(api_db).token),
    )
    assert response.status_code == 409 and "did not join by itself" in response.json()["message"]
    node = (await admin_nodes(api_client, api_users))["gpu-1"]
    assert node["url"] == "http://127.0.0.1:9" and node["joined"] is None
    leave = await api_client.post("/api/v2/nodes/gpu-1/leave", headers=bearer("cfn_" + "x" * 43))
    assert leave.status_code == 401


async def test_join_tokens_are_created_shown_once_and_listed_by_admins(
    api_client: httpx.AsyncClient, api_users: Accounts
) -> None:
    created = await api_client.post(
        "/api/v2/admin/tokens/join",
        json={"ttl_minutes": 5, "note": "new rack"},
        headers=api_users.admin.headers,
    )
    assert created.status_code == 201, created.text
    token = created.json()
    assert token["token"].startswith("cfj_") and token["note"] == "new rack"
    listed = await api_client.get("/api/v2/admin/tokens/join", headers=api_users.admin.headers)
    (row,) = listed.json()
    assert row["id"] == token["id"] and row["created_by"] == "root" and row["state"] == "active"
    assert token["token"] not in listed.text
    missing = await api_client.delete(
        "/api/v2/admin/tokens/join/999", headers=api_users.admin.headers
    )
    assert missing.status_code == 404 and "no join token 999" in missing.json()["message"]
