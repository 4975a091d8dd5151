"""Join hardening through the real gateway (uvicorn) with stand-in ComfyUIs on loopback ports: a
join token alone cannot take over a name that joined before (its node key or an admin token is
needed), and a single-use join token lets exactly one join through, even when two race."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fixtures.gateway import Accounts, ServerThread, fake_comfyui

pytestmark = pytest.mark.integration


@pytest.fixture
def intruder() -> Iterator[ServerThread]:
    """Another host's ComfyUI (the one that would receive the victim's prompts)."""
    server = ServerThread(fake_comfyui())
    server.start()
    yield server
    server.stop()


async def join_token(client: httpx.AsyncClient, accounts: Accounts, **body: Any) -> dict:
    created = await client.post(
        "/api/v2/admin/tokens/join", json={"ttl_minutes": 5, **body}, headers=accounts.admin.headers
    )
    assert created.status_code == 201, created.text
    return created.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def node_url(client: httpx.AsyncClient, accounts: Accounts, name: str) -> str:
    nodes = await client.get("/api/v2/admin/nodes", headers=accounts.admin.headers)
    return {n["id"]: n for n in nodes.json()}[name]["url"]


async def test_a_join_token_alone_cannot_take_over_a_joined_name(
    gateway_server: ServerThread, api_users: Accounts, comfy_stand_in: Any, intruder: Any
) -> None:
    async with httpx.AsyncClient(base_url=gateway_server.url, timeout=30) as client:
        owner = await join_token(client, api_users, note="rack 1")
        other = await join_token(client, api_users, note="someone else's")
        first = await client.post(
            "/api/v2/nodes/join",
            json={"name": "gpu-7", "url": comfy_stand_in.url},
            headers=bearer(owner["token"]),
        )
        assert first.status_code == 201, first.text
        key = first.json()["node_key"]
        takeover = {"name": "gpu-7", "url": intruder.url}
        for extra, status in (
            ({}, 401),
            ({"node_key": "cfn_" + "x" * 43}, 401),
            ({"node_key": api_users.alice.token}, 403),
        ):
            refused = await client.post(
                "/api/v2/nodes/join", json={**takeover, **extra}, headers=bearer(other["token"])
            )
            assert refused.status_code == status, refused.text
            assert refused.json()["field"] == "node_key"
            assert await node_url(client, api_users, "gpu-7") == comfy_stand_in.url
        assert (
            "node key" in refused.json()["message"] or "not an admin" in refused.json()["message"]
        )
        # the node itself (its key) may re-join, with a new URL even; so may an admin
        moved = await client.post(
            "/api/v2/nodes/join",
            json={"name": "gpu-7", "url": intruder.url, "node_key": key},
            headers=bearer(other["token"]),
        )
        assert moved.status_code == 200, moved.text
        assert await node_url(client, api_users, "gpu-7") == intruder.url
        stale = await client.post(
            "/api/v2/nodes/join",
            json={"name": "gpu-7", "url": comfy_stand_in.url, "node_key": key},
            headers=bearer(owner["token"]),
        )
        assert stale.status_code == 401  # the re-join issued a new key; the old one is spent
        by_admin = await client.post(
            "/api/v2/nodes/join",
            json={"name": "gpu-7", "url": comfy_stand_in.url, "node_key": api_users.admin.token},
            headers=bearer(owner["token"]),
        )
        assert by_admin.status_code == 200, by_admin.text
        assert await node_url(client, api_users, "gpu-7") == comfy_stand_in.url


async def test_a_single_use_join_token_lets_one_join_through(
    gateway_server: ServerThread, api_users: Accounts, comfy_stand_in: Any
) -> None:
    async with httpx.AsyncClient(base_url=gateway_server.url, timeout=30) as client:
        once = await join_token(client, api_users, single_use=True, note="one host")
        assert once["single_use"] is True

        async def join(name: str) -> httpx.Response:
            return await client.post(
                "/api/v2/nodes/join",
                json={"name": name, "url": comfy_stand_in.url},
                headers=bearer(once["token"]),
            )

        raced = await asyncio.gather(join("gpu-a"), join("gpu-b"))
        assert sorted(r.status_code for r in raced) == [201, 401], [r.text for r in raced]
        loser = next(r for r in raced if r.status_code == 401)
        assert "single-use" in loser.json()["message"]
        later = await join("gpu-c")
        assert later.status_code == 401 and "single-use" in later.json()["message"]
        nodes = await client.get("/api/v2/admin/nodes", headers=api_users.admin.headers)
        joined = {n["id"] for n in nodes.json()} & {"gpu-a", "gpu-b", "gpu-c"}
        assert len(joined) == 1
        listed = await client.get("/api/v2/admin/tokens/join", headers=api_users.admin.headers)
        row = next(t for t in listed.json() if t["id"] == once["id"])
        assert row["state"] == "revoked" and row["nodes"] == sorted(joined)
        # an ordinary token keeps working for more hosts
        many = await join_token(client, api_users)
        for name in ("gpu-d", "gpu-e"):
            ok = await client.post(
                "/api/v2/nodes/join",
                json={"name": name, "url": comfy_stand_in.url},
                headers=bearer(many["token"]),
            )
            assert ok.status_code == 201, ok.text
