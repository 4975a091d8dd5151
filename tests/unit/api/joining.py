"""For the self-join tests: join tokens and the admin's node list (the stand-in ComfyUI is
`comfy_stand_in` of tests/fixtures/gateway.py)."""

from __future__ import annotations

from typing import Any

import httpx

from comfyfleet import auth
from comfyfleet.store import (
    Database,
)
from tests.fixtures.gateway import Accounts


def join_token(db: Database, *, note: str = "rack 3", ttl_minutes: int = 30) -> auth.IssuedToken:
    with db.session() as s:
        return auth.issue_join_token(s, ttl_minutes=ttl_minutes, note=note, actor="test")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def admin_nodes(client: httpx.AsyncClient, users: Accounts) -> dict[str, Any]:
    listed = await client.get("/api/v2/admin/nodes", headers=users.admin.headers)
    assert listed.status_code == 200, listed.text
    return {n["id"]: n for n in listed.json()}
