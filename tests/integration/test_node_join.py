"""Node self-join on the real fleet: a fresh ComfyUI joins through the gateway (on the node
registry: Prefect blocks, pools, deployments) with `comfyfleet node join` and a join token, is
probed into rotation by the session's fleet service, runs a job, re-joins to change, and leaves
with `comfyfleet node leave` while a job is in flight there. Bad tokens and unreachable URLs are
refused and register nothing."""

from __future__ import annotations

import asyncio
import io
import json
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from comfyfleet import jobs
from comfyfleet.cli import main
from comfyfleet.fleet.provision import pool_name
from comfyfleet.fleet.registry import RegistryFleet
from comfyfleet.jobs import JobRequest
from comfyfleet.store import Database, get_job, utcnow
from comfyfleet.store.models import Token
from tests.fixtures.gateway import Account, ServerThread, free_port
from tests.fixtures.prefect import SESSION_DIR, WorkerProcess

pytestmark = pytest.mark.integration

JOINER = "joiner-1"


@pytest.fixture(scope="module")
def registry_gateway(fleet_service: Any, fleet_db: Database) -> Iterator[ServerThread]:
    """The gateway on the session's fleet, administering the node registry (as `python -m
    gradio_app` does), so a join creates the block, pool and deployments for real."""
    from comfyfleet.api import create_app
    from comfyfleet.settings import get_settings

    settings = get_settings()
    fleet = RegistryFleet(settings, fleet_db, actor="gateway")
    server = ServerThread(create_app(settings, db=fleet_db, fleet=fleet))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def host_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The GPU host's config folder (where `node join` keeps the node key)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "host"))
    for name in ("COMFYFLEET_TOKEN", "COMFYFLEET_JOIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "host"


async def cli(gateway: str, *argv: str) -> tuple[int, str]:
    """`comfyfleet --gateway URL …` in this process (in a thread); exit status and output."""

    def run() -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        try:
            code = main(["--gateway", gateway, *argv])
        finally:
            sys.stdout, sys.stderr = saved
        return code, out.getvalue() + err.getvalue()

    return await asyncio.to_thread(run)


async def registered(node_id: str) -> dict[str, Any]:
    """What Prefect has for a node: block data, pool, deployments (None when absent)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        try:
            block = await client.read_block_document_by_name(
                node_id, block_type_slug="comfyui-node"
            )
            data: dict[str, Any] | None = dict(block.data)
        except ObjectNotFound:
            data = None
        try:
            pool = await client.read_work_pool(pool_name(node_id))
        except ObjectNotFound:
            pool = None
        deployments = await client.read_deployments(
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool_name(node_id)]))
        )
    return {
        "block": data,
        "pool": pool is not None,
        "deployments": sorted(d.name for d in deployments),
    }


async def until(predicate: Any, *, timeout: float, what: str, every: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout:.0f} s")
        await asyncio.sleep(every)


async def admin_node(api: httpx.AsyncClient, node_id: str) -> dict[str, Any] | None:
    nodes = await api.get("/api/v2/admin/nodes")
    assert nodes.status_code == 200, nodes.text
    return next((n for n in nodes.json() if n["id"] == node_id), None)


async def create_join_token(api: httpx.AsyncClient, note: str) -> dict[str, Any]:
    created = await api.post("/api/v2/admin/tokens/join", json={"ttl_minutes": 30, "note": note})
    assert created.status_code == 201, created.text
    return created.json()


def ended(db: Database, job_id: str) -> Any:
    """The job once it has ended, else None."""
    job = db.run(lambda s: get_job(s, job_id=job_id), readonly=True)
    return job if job.status in ("completed", "failed", "cancelled") else None


def admin_api(gateway: str, admin: Account) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gateway, headers=admin.headers, timeout=30)


async def test_a_real_comfyui_joins_runs_a_job_rejoins_and_leaves_after_its_job(
    registry_gateway: ServerThread,
    fleet_accounts: dict[str, Account],
    fleet_db: Database,
    principals: dict[str, Any],
    disposable_node: Any,
    host_config: Path,
) -> None:
    gateway, admin = registry_gateway.url, fleet_accounts["root"]
    worker = WorkerProcess([pool_name(JOINER)], SESSION_DIR / f"worker-{JOINER}.log")
    async with admin_api(gateway, admin) as api:
        first = await create_join_token(api, "first host batch")
        try:
            code, out = await cli(
                gateway, "node", "join", "--name", JOINER, "--url", disposable_node.url,
                "--capacity", "1", "--capability", "delay", "--token", first["token"],
            )  # fmt: skip
            assert code == 0, out
            assert f"node {JOINER} joined: pool {pool_name(JOINER)}" in out
            prefect = await registered(JOINER)
            assert (
                prefect["block"]["url"] == disposable_node.url and prefect["block"]["capacity"] == 1
            )
            # comfy-workflow/joiner-1 (delay only) and the node's shift, node-shift/joiner-1
            assert prefect["deployments"] == [JOINER, JOINER]
            async with httpx.AsyncClient(timeout=10) as http:
                stats = (await http.get(f"{disposable_node.url}/system_stats")).json()
            node = await admin_node(api, JOINER)
            assert node["metadata"]["gpu"] == stats["devices"][0]["name"]  # "cpu" on this machine
            assert node["joined"]["token_id"] == first["id"]
            assert node["joined"]["token_note"] == "first host batch"
            code, out = await cli(gateway, "nodes", "list")
            [row] = [line for line in out.splitlines() if line.startswith(JOINER)]
            assert f"token {first['id']} " in row, out  # how it joined, by which token, when
            keys = json.loads((host_config / "comfyfleet" / "nodes.json").read_text())
            assert keys[gateway][JOINER].startswith("cfn_")

            # revoking the token stops new joins only: the node stays and takes jobs
            revoked = await api.delete(f"/api/v2/admin/tokens/join/{first['id']}")
            assert revoked.status_code == 204, revoked.text
            worker.start()  # the host's worker for the node's pool
            job = jobs.submit(
                fleet_db,
                JobRequest(
                    workflow="delay", params={"seconds": 0.5, "steps": 2}, pinned_node=JOINER
                ),
                principal=principals["alice"],
            )
            done = await until(lambda: ended(fleet_db, job.id), timeout=120,
                               what="the job on the joined node")  # fmt: skip
            assert (done.status, done.node) == ("completed", JOINER), (done.status, done.error)
            assert (await admin_node(api, JOINER))["state"] == "up"

            # re-join (with a new token) updates the node in place
            second = await create_join_token(api, "second host batch")
            code, out = await cli(
                gateway, "node", "join", "--name", JOINER, "--url", disposable_node.url,
                "--capacity", "2", "--meta", "rack=r9", "--token", second["token"],
            )  # fmt: skip
            assert code == 0 and f"node {JOINER} updated" in out, out
            prefect = await registered(JOINER)
            assert prefect["block"]["capacity"] == 2
            assert prefect["block"]["capabilities"] == ["delay"]
            node = await admin_node(api, JOINER)
            assert node["metadata"]["rack"] == "r9" and node["joined"]["token_id"] == second["id"]

            # leave while a job runs there: it drains, the job finishes there, then it is removed
            long_job = jobs.submit(
                fleet_db,
                JobRequest(workflow="delay", params={"seconds": 6, "steps": 6}, pinned_node=JOINER),
                principal=principals["alice"],
            )
            await until(
                lambda: fleet_db.run(lambda s: get_job(s, job_id=long_job.id), readonly=True).status
                == "running",
                timeout=60, what="the long job running",
            )  # fmt: skip
            code, out = await cli(gateway, "node", "leave", "--name", JOINER, "--timeout", "120")
            left_at = utcnow()
            assert code == 0, out
            assert f"node {JOINER} draining: 1 job(s) still in flight" in out
            assert f"node {JOINER} left the fleet" in out
            finished = fleet_db.run(
                lambda s: get_job(s, job_id=long_job.id, with_details=True), readonly=True
            )
            assert (finished.status, finished.node) == ("completed", JOINER), finished.error
            assert [a.node for a in finished.attempts] == [JOINER]  # never moved
            assert finished.finished_at <= left_at
            assert await registered(JOINER) == {
                "block": None, "pool": False, "deployments": []
            }  # fmt: skip
            assert await admin_node(api, JOINER) is None
            assert (
                JOINER
                not in json.loads((host_config / "comfyfleet" / "nodes.json").read_text())[gateway]
            )
        finally:
            await asyncio.to_thread(worker.stop)
            from prefect.client.orchestration import get_client

            from comfyfleet.fleet.registry import delete_node

            async with get_client() as client:
                await delete_node(client, JOINER)


async def test_bad_tokens_and_unreachable_urls_are_refused_and_register_nothing(
    registry_gateway: ServerThread,
    fleet_accounts: dict[str, Account],
    fleet_db: Database,
    comfy_node: Any,
    host_config: Path,
) -> None:
    gateway, admin = registry_gateway.url, fleet_accounts["root"]
    async with admin_api(gateway, admin) as api:
        expired = await create_join_token(api, "expired")
        with fleet_db.session() as s:
            s.get(Token, expired["id"]).expires_at = utcnow() - timedelta(seconds=1)
        revoked = await create_join_token(api, "revoked")
        gone = await api.delete(f"/api/v2/admin/tokens/join/{revoked['id']}")
        assert gone.status_code == 204, gone.text
        valid = await create_join_token(api, "valid")
        closed = f"http://127.0.0.1:{free_port()}"
        name = "refused-1"
        for token, url, reason in (
            ("cfj_" + "w" * 43, comfy_node.url, "HTTP 401: join refused: unknown join token"),
            (expired["token"], comfy_node.url, f"join token {expired['id']} expired at"),
            (revoked["token"], comfy_node.url, f"join token {revoked['id']} was revoked at"),
            (admin.token, comfy_node.url, "that is a bearer token, not a join token"),
            (valid["token"], closed, f"HTTP 422: join refused: cannot reach {closed}"),
        ):
            code, out = await cli(
                gateway, "node", "join", "--name", name, "--url", url, "--token", token
            )
            assert code == 1 and reason in out, (reason, out)
            assert await registered(name) == {
                "block": None, "pool": False, "deployments": []
            }  # fmt: skip
            assert await admin_node(api, name) is None
