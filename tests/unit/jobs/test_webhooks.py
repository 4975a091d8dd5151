"""Webhooks: Standard Webhooks signatures (checked with the independent `standardwebhooks`
package), delivery retries with backoff, every attempt recorded, no second delivery."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from comfyfleet.jobs import webhooks
from comfyfleet.store import Database
from comfyfleet.store.webhooks import list_deliveries
from tests.fixtures.gateway import Accounts, complete_job
from tests.unit.api.test_tasks import png_bytes


def test_signature_verifies_with_the_standardwebhooks_package() -> None:
    secret = webhooks.new_secret()
    body = json.dumps({"type": "job.completed", "data": {"id": "x"}}).encode()
    headers = webhooks.signed_headers(secret, msg_id="job-x-completed", body=body)
    assert Webhook(secret).verify(body, headers) == {"type": "job.completed", "data": {"id": "x"}}
    assert webhooks.verify(secret, headers=headers, body=body)
    with pytest.raises(WebhookVerificationError):
        Webhook(webhooks.new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers)
    stale = webhooks.signed_headers(secret, msg_id="m", body=body, now=1_000_000)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, stale)


@pytest.mark.parametrize("url", ["ftp://x/y", "not a url", "/relative", "http://"])
def test_webhook_urls_must_be_absolute_http(url: str) -> None:
    with pytest.raises(webhooks.WebhookError):
        webhooks.validate_url(url)


# Webhook URLs: a public address literal (it resolves without DNS; a MockTransport answers).


async def _completed_job_with_webhook(
    client: httpx.AsyncClient,
    accounts: Accounts,
    db: Database,
    outputs_dir: object,
    url: str = "http://93.184.215.14/hook",
) -> dict:
    response = await client.post(
        "/api/v2/tasks",
        headers=accounts.alice.headers,
        json={"workflow": "delay", "params": {"seconds": 0}, "webhook_url": url},
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["webhook_secret"].startswith("whsec_")  # created now: shown once
    complete_job(db, job["id"], {"out.png": png_bytes()}, outputs_dir)  # type: ignore[arg-type]
    return job


async def test_delivery_retries_until_2xx_and_records_every_attempt(
    api_client: httpx.AsyncClient, api_users: Accounts, api_db: Database, api_settings: object
) -> None:
    job = await _completed_job_with_webhook(
        api_client, api_users, api_db, api_settings.store.outputs_dir
    )  # type: ignore[attr-defined]
    received: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return httpx.Response(200 if len(received) == 3 else 503)

    result = await webhooks.deliver_job_event(
        job["id"],
        db=api_db,
        schedule=(0, 0.01, 0.01, 0.01),
        transport=httpx.MockTransport(handler),
        base_url="http://gw.test",
    )
    assert result.delivered and result.attempts == 3 and result.status_codes == [503, 503, 200]
    ids = {r.headers["webhook-id"] for r in received}
    assert ids == {f"job-{job['id']}-completed"}  # one message id across retries
    payload = Webhook(job["webhook_secret"]).verify(
        received[-1].content, dict(received[-1].headers)
    )
    assert payload["type"] == "job.completed" and payload["data"]["status"] == "completed"
    assert payload["data"]["outputs"][0]["url"] == (
        f"http://gw.test/api/v2/tasks/{job['id']}/outputs/out.png"
    )
    rows = api_db.run(lambda s: list_deliveries(s, job_id=job["id"]), readonly=True)
    assert sorted((r.attempt, r.status_code, r.delivered) for r in rows) == [
        (1, 503, False),
        (2, 503, False),
        (3, 200, True),
    ]
    again = await webhooks.deliver_job_event(
        job["id"], db=api_db, transport=httpx.MockTransport(handler)
    )
    assert again.skipped == "already delivered" and len(received) == 3


async def test_delivery_gives_up_after_the_schedule_and_on_410(
    api_client: httpx.AsyncClient, api_users: Accounts, api_db: Database, api_settings: object
) -> None:
    job = await _completed_job_with_webhook(
        api_client, api_users, api_db, api_settings.store.outputs_dir
    )  # type: ignore[attr-defined]

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    result = await webhooks.deliver_job_event(
        job["id"], db=api_db, schedule=(0, 0.01), transport=httpx.MockTransport(down)
    )
    assert not result.delivered and result.status_codes == [None, None]
    gone = await webhooks.deliver_job_event(
        job["id"],
        db=api_db,
        schedule=(0, 0.01, 0.01),
        transport=httpx.MockTransport(lambda r: httpx.Response(410)),
    )
    assert not gone.delivered and gone.attempts == 1
    rows = api_db.run(lambda s: list_deliveries(s, job_id=job["id"]), readonly=True)
    assert len(rows) == 3 and all(r.error for r in rows)


async def test_no_delivery_for_jobs_without_a_url_or_not_finished(
    api_client: httpx.AsyncClient, api_users: Accounts, api_db: Database
) -> None:
    queued = await api_client.post(
        "/api/v2/tasks",
        headers=api_users.alice.headers,
        json={"workflow": "delay", "params": {}, "webhook_url": "http://93.184.215.14/"},
    )
    assert queued.json()["webhook_secret"].startswith("whsec_")
    result = await webhooks.deliver_job_event(queued.json()["id"], db=api_db)
    assert result.skipped == "job is queued"
    plain = await api_client.post(
        "/api/v2/tasks", headers=api_users.alice.headers, json={"workflow": "delay", "params": {}}
    )
    assert (await webhooks.deliver_job_event(plain.json()["id"], db=api_db)).skipped == (
        "no webhook_url"
    )


async def test_a_client_signs_with_its_own_secret_from_registration(
    api_client: httpx.AsyncClient, api_users: Accounts, api_db: Database, api_settings: object
) -> None:
    reg = (
        await api_client.post(
            "/api/v2/auth/register", json={"client_name": "svc"}, headers=api_users.alice.headers
        )
    ).json()
    token = (
        await api_client.post(
            "/api/v2/auth/token",
            json={"client_id": reg["client_id"], "client_secret": reg["client_secret"]},
        )
    ).json()
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    job = (
        await api_client.post(
            "/api/v2/tasks",
            headers=headers,
            json={"workflow": "delay", "params": {}, "webhook_url": "http://93.184.215.14/"},
        )
    ).json()
    assert job["webhook_secret"] is None  # the client's secret was shown at registration
    complete_job(api_db, job["id"], {"o.png": png_bytes()}, api_settings.store.outputs_dir)  # type: ignore[attr-defined]
    seen: list[httpx.Request] = []
    result = await webhooks.deliver_job_event(
        job["id"],
        db=api_db,
        transport=httpx.MockTransport(lambda r: seen.append(r) or httpx.Response(204)),
    )
    assert result.delivered
    Webhook(reg["webhook_secret"]).verify(seen[0].content, dict(seen[0].headers))


async def test_deliver_due_retries_durably_on_the_schedule(
    api_client: httpx.AsyncClient, api_users: Accounts, api_db: Database, api_settings: object
) -> None:
    job = await _completed_job_with_webhook(
        api_client,
        api_users,
        api_db,
        api_settings.store.outputs_dir,  # type: ignore[attr-defined]
    )
    answers = iter([503, 200])
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(next(answers))

    transport = httpx.MockTransport(handler)
    schedule = (0.0, 0.3)
    assert await webhooks.deliver_due(api_db, schedule=schedule, transport=transport) == 0
    assert len(seen) == 1  # first attempt at once, failed
    assert await webhooks.deliver_due(api_db, schedule=schedule, transport=transport) == 0
    assert len(seen) == 1  # the next one is not due yet
    await asyncio.sleep(0.35)
    assert await webhooks.deliver_due(api_db, schedule=schedule, transport=transport) == 1
    assert await webhooks.deliver_due(api_db, schedule=schedule, transport=transport) == 0
    assert len(seen) == 2
    rows = api_db.run(lambda s: list_deliveries(s, job_id=job["id"]), readonly=True)
    assert sorted((r.attempt, r.status_code) for r in rows) == [(1, 503), (2, 200)]
