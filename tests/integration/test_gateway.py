"""The gateway served for real (uvicorn on a loopback port): SSE progress streams (from the job
store and from real Prefect events), signed webhooks to a local receiver with retries."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from comfyfleet.api import create_app
from comfyfleet.store import (
    Database,
    claim_job,
    create_attempt,
    mark_attempt_running,
    update_progress,
    upgrade,
)
from comfyfleet.store import complete_job as store_complete_job
from comfyfleet.store.webhooks import list_deliveries
from tests.fixtures.gateway import (
    FAST_WEBHOOKS,
    Accounts,
    ServerThread,
    complete_job,
    make_account,
    make_settings,
)
from tests.unit.api.test_tasks import png_bytes

pytestmark = pytest.mark.integration


@dataclass
class Sse:
    event: str
    data: Any
    id: str | None = None
    at: float = field(default_factory=time.monotonic)


async def sse_events(response: httpx.Response) -> AsyncIterator[Sse]:
    """Parse a text/event-stream response into events (comments and pings skipped)."""
    event, data, event_id = "message", [], None
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield Sse(event, json.loads("\n".join(data)), event_id)
            event, data, event_id = "message", [], None
        elif line.startswith(":"):
            continue
        else:
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                event = value
            elif key == "data":
                data.append(value)
            elif key == "id":
                event_id = value


async def collect(
    url: str,
    headers: dict[str, str],
    *,
    until: str = "end",
    limit: int = 200,
    timeout: float = 30.0,
) -> list[Sse]:
    got: list[Sse] = []
    async with httpx.AsyncClient(timeout=timeout) as client:
        async with client.stream("GET", url, headers=headers) as response:
            assert response.status_code == 200, await response.aread()
            assert response.headers["content-type"].startswith("text/event-stream")
            async for event in sse_events(response):
                got.append(event)
                if event.event == until or len(got) >= limit:
                    break
    return got


def _run_job_slowly(db: Database, job_id: str, outputs_dir: Path, steps: int = 4) -> None:
    """What a flow does, slowly enough for a stream to see each step (store only)."""
    time.sleep(0.8)
    with db.session() as s:
        claim_job(s, job_id=job_id)
    with db.session() as s:
        attempt_id = create_attempt(s, job_id=job_id, node="gpu-7", lease_s=60).id
    with db.session() as s:
        mark_attempt_running(s, attempt_id=attempt_id, lease_s=60)
    for step in range(1, steps + 1):
        time.sleep(0.7)
        with db.session() as s:
            update_progress(s, job_id=job_id, value=step, max=steps, node="gpu-7")
    from comfyfleet.store import record_output

    (outputs_dir / job_id).mkdir(parents=True, exist_ok=True)
    (outputs_dir / job_id / "x.png").write_bytes(png_bytes())
    with db.session() as s:
        record_output(
            s,
            job_id=job_id,
            attempt_id=attempt_id,
            name="x.png",
            path=f"{job_id}/x.png",
            sha256="0" * 64,
            size=1,
            content_type="image/png",
        )
        store_complete_job(s, job_id=job_id, attempt_id=attempt_id)


async def test_sse_stream_shows_state_first_then_progress_status_outputs_and_end(
    gateway_server: ServerThread, api_users: Accounts, api_db: Database, api_settings: Any
) -> None:
    url = gateway_server.url
    headers = api_users.alice.headers
    async with httpx.AsyncClient(base_url=url) as client:
        job = (
            await client.post(
                "/api/v2/tasks", headers=headers, json={"workflow": "delay", "params": {}}
            )
        ).json()
    runner = threading.Thread(
        target=_run_job_slowly, args=(api_db, job["id"], Path(api_settings.store.outputs_dir))
    )
    runner.start()
    events = await collect(f"{url}/api/v2/tasks/{job['id']}/events", headers)
    runner.join()
    kinds = [e.event for e in events]
    assert kinds[0] == "status" and events[0].data["status"] == "queued"
    statuses = [e.data["status"] for e in events if e.event == "status"]
    assert statuses[0] == "queued" and "running" in statuses and statuses[-1] == "completed"
    steps = [(e.data["value"], e.data["max"]) for e in events if e.event == "progress"]
    assert len({s for s in steps if s[0] < 4}) >= 2, steps  # at least two distinct k/N
    assert steps == sorted(steps) and steps[-1][1] == 4
    assert kinds[-2:] == ["outputs", "end"]
    assert events[-2].data["outputs"][0]["name"] == "x.png"
    assert events[-1].data == {"status": "completed"}
    assert [int(e.id) for e in events] == list(range(1, len(events) + 1))


async def test_sse_stream_relays_each_new_preview_of_a_running_job_as_a_small_jpeg(
    gateway_server: ServerThread, api_users: Accounts, api_db: Database, api_settings: Any
) -> None:
    import base64
    import io

    from PIL import Image

    from comfyfleet.jobs.previews import PreviewWriter

    headers = api_users.alice.headers
    async with httpx.AsyncClient(base_url=gateway_server.url) as client:
        job = (
            await client.post(
                "/api/v2/tasks", headers=headers, json={"workflow": "delay", "params": {}}
            )
        ).json()
    with api_db.session() as s:
        claim_job(s, job_id=job["id"])
    with api_db.session() as s:
        attempt_id = create_attempt(s, job_id=job["id"], node="gpu-3", lease_s=60).id
    with api_db.session() as s:
        mark_attempt_running(s, attempt_id=attempt_id, lease_s=60)
    writer = PreviewWriter(job["id"], outputs_dir=api_settings.store.outputs_dir)
    frames = []
    for color in ("red", "blue"):
        out = io.BytesIO()
        Image.new("RGB", (768, 512), color).save(out, format="PNG")
        frames.append(out.getvalue())

    def sample() -> None:  # a node sampling: a frame, a pause, another, then the end
        for frame in frames:
            writer.offer(frame)
            time.sleep(1.2)
        writer.close()
        with api_db.session() as s:
            store_complete_job(s, job_id=job["id"], attempt_id=attempt_id)

    thread = threading.Thread(target=sample)
    thread.start()
    events = await collect(f"{gateway_server.url}/api/v2/tasks/{job['id']}/events", headers)
    thread.join()
    previews = [e.data for e in events if e.event == "preview"]
    assert len(previews) == 2, [e.event for e in events]
    colors = []
    for preview in previews:
        assert preview["job_id"] == job["id"]
        head, _, data = preview["image"].partition(",")
        assert head == "data:image/jpeg;base64"
        with Image.open(io.BytesIO(base64.b64decode(data))) as img:
            assert img.format == "JPEG" and img.size == (256, 171)
            colors.append(img.convert("RGB").getpixel((5, 5)))
    assert colors[0][0] > 200 and colors[1][2] > 200  # red, then blue
    assert [e.event for e in events][-1] == "end"


async def test_sse_reconnect_gets_the_current_state_first(
    gateway_server: ServerThread, api_users: Accounts, api_db: Database, api_settings: Any
) -> None:
    headers = api_users.alice.headers
    async with httpx.AsyncClient(base_url=gateway_server.url) as client:
        job = (
            await client.post(
                "/api/v2/tasks", headers=headers, json={"workflow": "delay", "params": {}}
            )
        ).json()
    with api_db.session() as s:
        claim_job(s, job_id=job["id"])
    with api_db.session() as s:
        attempt_id = create_attempt(s, job_id=job["id"], node="gpu-3", lease_s=60).id
    with api_db.session() as s:
        mark_attempt_running(s, attempt_id=attempt_id, lease_s=60)
        update_progress(s, job_id=job["id"], value=3, max=10, node="gpu-3")
    url = f"{gateway_server.url}/api/v2/tasks/{job['id']}/events"
    first = (await collect(url, {**headers, "Last-Event-ID": "17"}, limit=1))[0]
    assert first.event == "status" and first.data["status"] == "running"
    assert first.data["progress"] == {"value": 3, "max": 10, "node_id": "gpu-3"}
    complete_job_done = await collect(url + f"?access_token={api_users.alice.token}", {}, limit=1)
    assert complete_job_done[0].data["id"] == job["id"]
    # a finished job: state, outputs, end, and the stream closes by itself
    with api_db.session() as s:
        store_complete_job(s, job_id=job["id"], attempt_id=attempt_id)
    done = await collect(url, headers)
    assert [e.event for e in done] == ["status", "outputs", "end"]
    other = await httpx.AsyncClient().get(url, headers=api_users.bob.headers)
    assert other.status_code == 404


@dataclass
class Receiver:
    """A local webhook receiver: answers each POST with the next status of `plan`."""

    plan: list[int]
    received: list[tuple[dict[str, str], bytes, float]] = field(default_factory=list)

    def app(self) -> Any:
        async def asgi(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            self.received.append((headers, body, time.monotonic()))
            status = self.plan[min(len(self.received) - 1, len(self.plan) - 1)]
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        return asgi


@pytest.fixture
def receiver() -> Any:
    hook = Receiver(plan=[500, 503, 200])
    server = ServerThread(hook.app())
    server.start()
    yield hook, server.url
    server.stop()


async def test_webhook_to_a_local_receiver_is_signed_and_retried_until_accepted(
    api_users: Accounts,
    api_db: Database,
    api_settings: Any,
    receiver: Any,
    gateway_server: ServerThread,
) -> None:
    from comfyfleet.jobs.webhook_targets import WebhookPolicy
    from comfyfleet.jobs.webhooks import deliver_job_event

    hook, hook_url = receiver
    async with httpx.AsyncClient(base_url=gateway_server.url) as client:
        job = (
            await client.post(
                "/api/v2/tasks",
                headers=api_users.alice.headers,
                json={"workflow": "delay", "params": {}, "webhook_url": f"{hook_url}/hook"},
            )
        ).json()
    secret = job["webhook_secret"]
    complete_job(api_db, job["id"], {"out.png": png_bytes()}, api_settings.store.outputs_dir)
    started = time.monotonic()
    result = await deliver_job_event(
        job["id"],
        db=api_db,
        schedule=(0, 0.3, 0.6),
        base_url=gateway_server.url,
        policy=WebhookPolicy.from_settings(api_settings),  # it allows the loopback receiver
    )
    assert result.delivered and result.status_codes == [500, 503, 200]
    assert len(hook.received) == 3
    gaps = [b[2] - a[2] for a, b in zip(hook.received, hook.received[1:], strict=False)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.45  # backoff between attempts (±20 % jitter)
    for headers, body, _ in hook.received:
        payload = Webhook(secret).verify(body, headers)  # independent verification
        assert payload["type"] == "job.completed" and payload["data"]["id"] == job["id"]
    assert {h["webhook-id"] for h, _, _ in hook.received} == {f"job-{job['id']}-completed"}
    # the payload's output URL downloads the file for the owner
    url = payload["data"]["outputs"][0]["url"]
    async with httpx.AsyncClient() as client:
        assert (await client.get(url, headers=api_users.alice.headers)).status_code == 200
    rows = api_db.run(lambda s: list_deliveries(s, job_id=job["id"]), readonly=True)
    assert sorted(r.status_code for r in rows) == [200, 500, 503]
    assert time.monotonic() - started < 10


async def test_cancelling_a_queued_job_fires_its_webhook(
    api_users: Accounts, api_db: Database, receiver: Any, gateway_server: ServerThread
) -> None:
    hook, hook_url = receiver
    hook.plan[:] = [200]
    async with httpx.AsyncClient(base_url=gateway_server.url) as client:
        job = (
            await client.post(
                "/api/v2/tasks",
                headers=api_users.bob.headers,
                json={"workflow": "delay", "params": {}, "webhook_url": f"{hook_url}/h"},
            )
        ).json()
        cancelled = await client.delete(f"/api/v2/tasks/{job['id']}", headers=api_users.bob.headers)
        assert cancelled.json()["status"] == "cancelled"
    for _ in range(100):
        if hook.received:
            break
        await asyncio.sleep(0.05)
    headers, body, _ = hook.received[0]
    assert Webhook(job["webhook_secret"]).verify(body, headers)["type"] == "job.cancelled"


async def test_sse_relays_live_progress_from_prefect_events(
    prefect_server: Any, tmp_path: Path
) -> None:
    """Real Prefect server: events emitted on `comfy.job.<id>` reach the SSE stream."""
    from prefect.events import emit_event

    settings = make_settings(tmp_path, prefect={"api_url": os.environ["PREFECT_API_URL"]})
    db = Database(settings.database.url)
    upgrade(db)
    app = create_app(settings, db=db, webhook_schedule=FAST_WEBHOOKS)
    alice = make_account(db, "alice")
    server = ServerThread(app)
    server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            job = (
                await client.post(
                    "/api/v2/tasks", headers=alice.headers, json={"workflow": "delay", "params": {}}
                )
            ).json()
        with db.session() as s:
            claim_job(s, job_id=job["id"])
        with db.session() as s:
            create_attempt(s, job_id=job["id"], node="gpu-1", lease_s=60)
        hub = app.state.gateway.hub
        got: list[Sse] = []
        sent_at: dict[int, float] = {}

        async def read() -> None:
            url = f"{server.url}/api/v2/tasks/{job['id']}/events"
            got.extend(await collect(url, alice.headers, limit=7, timeout=30))

        reader = asyncio.create_task(read())
        assert await hub.wait_connected(20), hub.last_error
        await asyncio.sleep(0.5)
        for step in range(1, 7):
            sent_at[step] = time.monotonic()
            emit_event(
                "comfy.progress",
                resource={"prefect.resource.id": f"comfy.job.{job['id']}"},
                payload={"value": step, "max": 6, "node": "gpu-1"},
            )
            await asyncio.sleep(0.3)
        await asyncio.wait_for(reader, 30)
        progress = [e.data for e in got if e.event == "progress"]
        assert [p["value"] for p in progress] == [1, 2, 3, 4, 5, 6], got
        assert all(p["max"] == 6 and p["node"] == "gpu-1" for p in progress)
        delays = sorted(e.at - sent_at[e.data["value"]] for e in got if e.event == "progress")
        print(
            "[gateway] Prefect event -> SSE delay: "
            f"median {delays[len(delays) // 2] * 1000:.0f} ms, max {delays[-1] * 1000:.0f} ms"
        )
        assert delays[len(delays) // 2] < 1.0
    finally:
        server.stop()
        db.dispose()
