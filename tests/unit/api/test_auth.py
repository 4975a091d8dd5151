"""Gateway auth: logins, client credentials, tokens, and every protected route, one by one."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from comfyfleet.api import create_app
from comfyfleet.api.app import ROUTERS
from comfyfleet.api.deps import get_principal, get_principal_or_query, require_admin
from comfyfleet.settings import Settings
from comfyfleet.store import Database
from tests.fixtures.gateway import Accounts, make_settings

PUBLIC = {
    ("POST", "/api/v2/auth/login"),
    ("POST", "/admin/auth/login"),
    ("POST", "/api/v2/auth/token"),
    ("POST", "/api/v2/auth/register"),  # 401 unless logged in or open registration (tested below)
    ("GET", "/api/health"),
    ("GET", "/metrics"),
}
NODE_CREDENTIALS = {  # a join token (join) or the node key / an admin token (leave): test_api_join
    ("POST", "/api/v2/nodes/join"),
    ("POST", "/api/v2/nodes/{node_id}/leave"),
}
_PATH_VALUES = {
    "job_id": "0" * 32,
    "batch_id": "b" * 32,
    "name": "x.png",
    "node_id": "gpu-x",
    "username": "alice",
    "client_id": "c" * 32,
    "workflow_id": "sd15-basic",
    "token_id": "1",
    "prompt_id": "00000000-0000-0000-0000-000000000000",
    "class_type": "KSampler",
    "folder": "checkpoints",
}


def _calls(dependant: Any) -> set[Any]:
    found = {dependant.call}
    for sub in dependant.dependencies:
        found |= _calls(sub)
    return found


def _routes() -> list[tuple[str, str, set[Any]]]:
    out = []
    for route in (r for router in ROUTERS for r in router.routes):
        if isinstance(route, APIRoute):
            for method in sorted(route.methods):
                out.append((method, route.path, _calls(route.dependant)))
    return out


ROUTES = _routes()
ADMIN_ROUTES = [(m, p) for m, p, calls in ROUTES if require_admin in calls]
PROTECTED = [
    (m, p)
    for m, p, calls in ROUTES
    if calls & {get_principal, get_principal_or_query, require_admin}
]


def _url(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: _PATH_VALUES[m.group(1)], path)


def test_every_route_is_either_public_or_needs_a_token() -> None:
    everything = {(m, p) for m, p, _ in ROUTES}
    assert everything - set(PROTECTED) == PUBLIC | NODE_CREDENTIALS


def test_admin_area_routes_all_require_the_admin_role() -> None:
    admin_area = {
        (m, p) for m, p, _ in ROUTES if p.startswith(("/api/v2/admin", "/nodes", "/cluster"))
    }
    assert admin_area == set(ADMIN_ROUTES)
    assert len(ADMIN_ROUTES) >= 20


@pytest.mark.parametrize(("method", "path"), PROTECTED, ids=[f"{m} {p}" for m, p in PROTECTED])
async def test_protected_route_is_401_without_a_valid_token(
    api_client: httpx.AsyncClient, method: str, path: str
) -> None:
    for headers in ({}, {"Authorization": "Bearer cfb_not-a-real-token"}):
        response = await api_client.request(method, _url(path), headers=headers, json={})
        assert response.status_code == 401, response.text
        assert response.json()["error"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("method", "path"), ADMIN_ROUTES, ids=[f"{m} {p}" for m, p in ADMIN_ROUTES]
)
async def test_admin_route_is_403_for_users_and_open_to_admins(
    api_client: httpx.AsyncClient, api_users: Accounts, method: str, path: str
) -> None:
    response = await api_client.request(
        method, _url(path), headers=api_users.alice.headers, json={}
    )
    assert response.status_code == 403, response.text
    assert response.json()["message"] == "alice is not an admin"
    response = await api_client.request(
        method, _url(path), headers=api_users.admin.headers, json={}
    )
    assert response.status_code not in (401, 403), response.text
    assert response.status_code < 500, response.text


async def test_user_login_gives_a_token_that_works_and_logout_revokes_it(
    api_client: httpx.AsyncClient, api_users: Accounts
) -> None:
    response = await api_client.post(
        "/api/v2/auth/login", json={"username": "alice", "password": api_users.alice.password}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer" and body["username"] == "alice"
    assert not body["is_admin"] and 86000 < body["expires_in"] <= 86400
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    me = await api_client.get("/api/v2/auth/me", headers=headers)
    assert me.json() == {"username": "alice", "is_admin": False, "client_id": None}
    assert (await api_client.post("/api/v2/auth/logout", headers=headers)).status_code == 204
    assert (await api_client.get("/api/v2/auth/me", headers=headers)).status_code == 401


@pytest.mark.parametrize("password", ["wrong password", ""])
async def test_login_with_wrong_password_is_refused(
    api_client: httpx.AsyncClient, api_users: Accounts, password: str
) -> None:
    response = await api_client.post(
        "/api/v2/auth/login", json={"username": "alice", "password": password}
    )
    assert response.status_code in (401, 422)
    assert response.json()["field"] == "password"


async def test_admin_login_is_for_admins_only(
    api_client: httpx.AsyncClient, api_users: Accounts
) -> None:
    ok = await api_client.post(
        "/admin/auth/login", json={"username": "root", "password": api_users.admin.password}
    )
    assert ok.status_code == 200 and ok.json()["is_admin"]
    refused = await api_client.post(
        "/admin/auth/login", json={"username": "alice", "password": api_users.alice.password}
    )
    assert refused.status_code == 403
    unknown = await api_client.post(
        "/admin/auth/login", json={"username": "admin", "password": "admin123"}
    )
    assert unknown.status_code == 401  # no default credentials


async def test_client_registration_needs_a_login_and_client_tokens_act_as_the_owner(
    api_client: httpx.AsyncClient, api_users: Accounts
) -> None:
    body = {"client_name": "test_client", "description": "ci"}
    assert (await api_client.post("/api/v2/auth/register", json=body)).status_code == 401
    response = await api_client.post(
        "/api/v2/auth/register", json=body, headers=api_users.alice.headers
    )
    assert response.status_code == 201
    client = response.json()
    assert client["owner"] == "alice" and client["webhook_secret"].startswith("whsec_")
    wrong = await api_client.post(
        "/api/v2/auth/token", json={"client_id": client["client_id"], "client_secret": "nope"}
    )
    assert wrong.status_code == 401
    token = await api_client.post(
        "/api/v2/auth/token",
        json={"client_id": client["client_id"], "client_secret": client["client_secret"]},
    )
    assert token.status_code == 200
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    me = (await api_client.get("/api/v2/auth/me", headers=headers)).json()
    assert me == {"username": "alice", "is_admin": False, "client_id": client["client_id"]}
    # revoking the client (admin) stops its token at once
    revoke = await api_client.delete(
        f"/api/v2/admin/clients/{client['client_id']}", headers=api_users.admin.headers
    )
    assert revoke.status_code == 204
    assert (await api_client.get("/api/v2/auth/me", headers=headers)).status_code == 401


async def test_open_registration_creates_a_client_without_a_login(tmp_path: Path) -> None:
    from comfyfleet.store import upgrade

    settings: Settings = make_settings(tmp_path, auth={"open_registration": True})
    db = Database(settings.database.url)
    upgrade(db)
    app = create_app(settings, db=db)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        response = await client.post("/api/v2/auth/register", json={"client_name": "legacy"})
        assert response.status_code == 201
        creds = response.json()
        token = await client.post(
            "/api/v2/auth/token",
            json={"client_id": creds["client_id"], "client_secret": creds["client_secret"]},
        )
        assert token.status_code == 200
        assert not token.json()["is_admin"]
    db.dispose()


async def test_disabled_user_token_stops_working(
    api_client: httpx.AsyncClient, api_users: Accounts
) -> None:
    assert (
        await api_client.get("/api/v2/auth/me", headers=api_users.bob.headers)
    ).status_code == 200
    response = await api_client.post(
        "/api/v2/admin/users/bob/disable", headers=api_users.admin.headers
    )
    assert response.status_code == 200 and response.json()["disabled"]
    assert (
        await api_client.get("/api/v2/auth/me", headers=api_users.bob.headers)
    ).status_code == 401


async def test_webhook_secret_rotation_returns_a_new_secret_once(
    api_client: httpx.AsyncClient, api_users: Accounts
) -> None:
    first = await api_client.post("/api/v2/auth/webhook-secret", headers=api_users.alice.headers)
    second = await api_client.post("/api/v2/auth/webhook-secret", headers=api_users.alice.headers)
    assert first.status_code == second.status_code == 200
    assert first.json()["scope"] == second.json()["scope"]
    assert first.json()["webhook_secret"] != second.json()["webhook_secret"]
