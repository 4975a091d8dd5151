"""The session's Prefect server runs on PostgreSQL through `prefect.database_url`.

Every integration test that talks to Prefect therefore runs against a PostgreSQL-backed server;
this module pins that the switch took effect: what the API writes lands in that database, with
the `pg_trgm` extension Prefect's migrations need.
"""

from __future__ import annotations

import secrets

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from comfyfleet.settings import get_settings

pytestmark = pytest.mark.integration


async def test_the_session_prefect_server_keeps_its_state_in_postgres(prefect_server) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    database_url = get_settings().prefect.database_url
    assert database_url, "PostgreSQL on 127.0.0.1:5432 is down: the server fell back to SQLite"
    assert prefect_server.database_url == database_url
    name = f"pg-probe-{secrets.token_hex(4)}"
    async with get_client() as client:
        await client.create_work_pool(WorkPoolCreate(name=name, type="process"))
        try:
            url = make_url(database_url)
            conn = await asyncpg.connect(
                host=url.host, port=url.port, user=url.username, database=url.database
            )
            try:
                pools = await conn.fetch("SELECT name FROM work_pool WHERE name = $1", name)
                trgm = await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")
            finally:
                await conn.close()
        finally:
            await client.delete_work_pool(name)
    assert [p["name"] for p in pools] == [name]
    assert trgm == 1
