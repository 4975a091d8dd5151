"""The UI serves many people at once: no listener limited to one run at a time, the login
check awaited (it hashes a password: off the event loop), a queued job's status line shows
its position and the fleet's free slots."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

from comfyfleet import jobs
from comfyfleet.api import StaticFleet
from comfyfleet.api.queue import QueueView
from comfyfleet.auth import Principal
from comfyfleet.settings import Settings
from comfyfleet.store import Database, get_user
from tests.fixtures.gateway import PASSWORD, Accounts


def test_no_listener_waits_for_another_persons_run(
    api_settings: Settings, api_db: Database, api_users: Accounts
) -> None:
    from gradio_app.web import build_web_app

    app = build_web_app(api_settings, db=api_db, fleet=StaticFleet(api_settings, api_db))
    demo = app.state.ui
    assert demo._queue.default_concurrency_limit is None
    assert demo._queue.max_thread_count >= 1000
    limits = {f.name: f.concurrency_limit for f in demo.fns.values()}
    assert limits and all(limit in (None, "default") for limit in limits.values()), limits
    assert inspect.iscoroutinefunction(demo.runner.login)


async def test_login_checks_the_password_off_the_loop(
    api_settings: Settings, api_db: Database, api_users: Accounts
) -> None:
    from gradio_app.web import build_web_app

    app = build_web_app(api_settings, db=api_db, fleet=StaticFleet(api_settings, api_db))
    runner = app.state.ui.runner
    assert await runner.login("alice", PASSWORD)
    assert not await runner.login("alice", "wrong")


async def test_a_queued_jobs_status_line_shows_its_position_and_free_slots(
    api_settings: Settings, api_db: Database, api_users: Accounts
) -> None:
    from gradio_app.web import build_web_app

    app = build_web_app(api_settings, db=api_db, fleet=StaticFleet(api_settings, api_db))
    runner = app.state.ui.runner
    node = SimpleNamespace(id="gpu-1", capabilities=["delay"], capacity=2, enabled=True, state="up")
    runner.gateway.queue = QueueView(api_db, lambda: [node], ttl_s=0)
    user = api_db.run(lambda s: get_user(s, username="alice"), readonly=True)
    principal = Principal(user=user)
    first = await runner.submit(principal, "delay", {"seconds": 1})
    second = await runner.submit(principal, "delay", {"seconds": 1})
    line = runner._waiting(await runner.get(second.id, principal))
    assert f"Job `{second.id}`" in line
    assert "position 1 (1 job ahead)" in line and "2 of 2 slots free" in line
    await runner.cancel(first.id, principal)
    line = runner._waiting(await runner.get(second.id, principal))
    assert "position 0 (0 jobs ahead)" in line
    assert (await runner.get(first.id, principal)).status == "cancelled"
    assert jobs.get(api_db, first.id).status == "cancelled"
