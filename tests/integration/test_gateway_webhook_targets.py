"""Webhook targets through the real gateway: internal addresses and the fleet's own endpoints are
refused at submit (422 naming `webhook_url`, nothing queued) and again at send time; a receiver
that hangs holds only its own message."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import httpx
import pytest

from comfyfleet.jobs.webhook_targets import WebhookPolicy
from comfyfleet.jobs.webhooks import deliver_due, deliver_job_event
from comfyfleet.store.webhooks import list_deliveries
from tests.fixtures.gateway import (
    Account,
    ServerThread,
    complete_job,
    free_port,
    make_settings,
    serve_gateway,
)
from tests.integration.test_gateway import Receiver
from tests.unit.api.test_tasks import png_bytes

pytestmark = pytest.mark.integration


async def submit(url: str, alice: Account, path: str, hook: str) -> httpx.Response:
    bodies = {
        "/api/v2/tasks": {"workflow": "delay", "params": {}},
        "/api/v2/tasks/text-to-image": {"prompt": "a cat"},
        "/api/v2/tasks/batch": {"workflow": "sd15-basic", "prompts": ["a", "b"]},
    }
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await client.post(
            path, headers=alice.headers, json={**bodies[path], "webhook_url": hook}
        )


async def stored_jobs(url: str, alice: Account) -> int:
    async with httpx.AsyncClient(base_url=url) as client:
        page = await client.get("/api/v2/tasks", headers=alice.headers)
    return page.json()["total"]


INTERNAL = {
    "http://127.0.0.1:8188/interrupt": "loopback",
    "http://[::1]:4200/api/admin/settings": "loopback",
    "http://169.254.169.254/latest/meta-data/": "link-local",
    "http://10.0.0.5:8188/prompt": "private",
    "http://0x7f000001:8000/": "127.0.0.1 port 8000, the gateway",
    "http://100.64.1.1/": "carrier-grade NAT",
    "http://[fc00::5]/": "unique-local",
    "http://224.0.0.1/": "multicast",
    "http://0.0.0.0:9/": "unspecified",
    "http://[::ffff:127.0.0.1]:8188/": "loopback",
    "http://no-such-host.invalid/hook": "does not resolve",
}


async def test_internal_webhook_urls_are_refused_at_submit_on_every_route(
    tmp_path: Path, _migrated_sqlite: Path
) -> None:
    with serve_gateway(tmp_path, _migrated_sqlite, webhooks={"allowed_networks": []}) as (
        url,
        _,
        alice,
    ):
        for path in ("/api/v2/tasks", "/api/v2/tasks/text-to-image", "/api/v2/tasks/batch"):
            for hook, why in INTERNAL.items():
                response = await submit(url, alice, path, hook)
                assert response.status_code == 422, (path, hook, response.text)
                body = response.json()
                assert body["field"] == "webhook_url", body
                assert why in body["message"], (hook, body["message"])
        assert await stored_jobs(url, alice) == 0


async def test_the_fleets_own_endpoints_are_refused_even_on_an_allowed_network(
    tmp_path: Path, _migrated_sqlite: Path
) -> None:
    hook = Receiver(plan=[200])
    receiver = ServerThread(hook.app())
    receiver.start()
    gateway_port, prefect_port, node_port = free_port(), free_port(), free_port()
    overrides = {
        "webhooks": {"allowed_networks": ["127.0.0.0/8", "::1/128"]},
        "gateway": {"host": "0.0.0.0", "port": gateway_port},
        "prefect": {"api_url": f"http://localhost:{prefect_port}/api"},
        "nodes": [{"id": "gpu-9", "url": f"http://127.0.0.1:{node_port}"}],
        "database": {"url": f"sqlite:///{tmp_path / 'gateway.db'}"},
    }
    try:
        with serve_gateway(tmp_path, _migrated_sqlite, **overrides) as (url, _, alice):
            own = {
                f"http://127.0.0.1:{gateway_port}/api/v2/auth/login": "the gateway",
                f"http://127.0.0.2:{gateway_port}/": "the gateway",
                f"http://[::1]:{prefect_port}/api/deployments/filter": "the Prefect API",
                f"http://127.0.0.1:{prefect_port}/api/": "the Prefect API",
                f"http://localhost:{node_port}/interrupt": "node gpu-9",
            }
            for target, name in own.items():
                response = await submit(url, alice, "/api/v2/tasks", target)
                assert response.status_code == 422, (target, response.text)
                assert response.json()["field"] == "webhook_url"
                assert name in response.json()["message"], response.json()["message"]
            assert await stored_jobs(url, alice) == 0
            # the database, by host and port (a MariaDB URL: 3306 when it names no port)
            db_settings = make_settings(
                tmp_path, database={"url": "mysql+pymysql://cf:pw@127.0.0.1/cf"}
            )
            policy = WebhookPolicy.from_settings(db_settings)
            assert "the database" in (policy.refusal("127.0.0.1", 3306) or "")
            assert policy.refusal("127.0.0.1", 3307) is None  # loopback allowed, not the DB
            # another loopback service, on the allowed network, is fine
            accepted = await submit(url, alice, "/api/v2/tasks", f"{receiver.url}/hook")
            assert accepted.status_code == 202, accepted.text
    finally:
        receiver.stop()


async def test_send_time_refuses_an_address_no_longer_allowed(
    tmp_path: Path, _migrated_sqlite: Path
) -> None:
    """Allowed at submit, refused when sent: the connection itself is checked (what a DNS
    rebinding would change is the address; here the policy changes under the same name)."""
    hook = Receiver(plan=[200])
    receiver = ServerThread(hook.app())
    receiver.start()
    try:
        with serve_gateway(tmp_path, _migrated_sqlite) as (url, db, alice):
            target = f"http://localhost:{receiver.port}/hook"
            job = (await submit(url, alice, "/api/v2/tasks", target)).json()
            complete_job(db, job["id"], {"o.png": png_bytes()}, tmp_path / "outputs")
            strict = WebhookPolicy.from_settings(
                make_settings(tmp_path, webhooks={"allowed_networks": []})
            )
            refused = await deliver_job_event(job["id"], db=db, schedule=(0,), policy=strict)
            assert not refused.delivered and refused.status_codes == [None]
            assert hook.received == []
            rows = db.run(lambda s: list_deliveries(s, job_id=job["id"]), readonly=True)
            assert "loopback" in (rows[0].error or ""), rows[0].error
            allowed = WebhookPolicy.from_settings(make_settings(tmp_path))
            sent = await deliver_job_event(job["id"], db=db, schedule=(0,), policy=allowed)
            assert sent.delivered and len(hook.received) == 1
    finally:
        receiver.stop()


async def test_a_hung_receiver_does_not_delay_other_deliveries(
    tmp_path: Path, _migrated_sqlite: Path
) -> None:
    accepted = asyncio.Event()

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        with contextlib.suppress(Exception):
            await reader.read()  # reads the request, never answers
        writer.close()

    hung = await asyncio.start_server(hang, "127.0.0.1", 0)
    hung_port = hung.sockets[0].getsockname()[1]
    hook = Receiver(plan=[200])
    receiver = ServerThread(hook.app())
    receiver.start()
    try:
        with serve_gateway(tmp_path, _migrated_sqlite) as (url, db, alice):
            first = (
                await submit(url, alice, "/api/v2/tasks", f"http://127.0.0.1:{hung_port}/h")
            ).json()
            second = (await submit(url, alice, "/api/v2/tasks", f"{receiver.url}/h")).json()
            for job in (first, second):  # the hung one ends first: it is due first
                complete_job(db, job["id"], {"o.png": png_bytes()}, tmp_path / "outputs")
            policy = WebhookPolicy.from_settings(make_settings(tmp_path))
            started = time.monotonic()
            round_ = asyncio.create_task(
                deliver_due(db, schedule=(0.0, 60.0), policy=policy, timeout_s=4.0)
            )
            while not hook.received:
                assert time.monotonic() - started < 3.0, "the hung receiver held the others"
                await asyncio.sleep(0.02)
            await asyncio.wait_for(accepted.wait(), 3.0)  # both were contacted at once
            assert not round_.done()
            assert await round_ == 1
            assert 3.5 < time.monotonic() - started < 8.0  # the hung attempt timed out whole
            rows = db.run(lambda s: list_deliveries(s, job_id=first["id"]), readonly=True)
            assert rows[0].error == "no answer within 4 s" and not rows[0].delivered
    finally:
        receiver.stop()
        hung.close()
