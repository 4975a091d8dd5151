"""Logins through the real web process (gateway + Gradio UI on uvicorn): failed attempts are
throttled per client address and per account on every login and token route and the UI's
`/login` (429 + Retry-After); passwords are argon2id, earlier scrypt hashes are replaced at the
next login; hashing never stalls the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import make_url

from comfyfleet import auth
from comfyfleet.api import StaticFleet
from comfyfleet.store import Database, get_user
from comfyfleet.store import users as rows
from tests.fixtures.gateway import PASSWORD, ServerThread, make_account, make_settings
from tests.unit.auth.test_passwords import scrypt_hash

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def serve_web(root: Path, template: Path, *, login_rate: str) -> Iterator[tuple[str, Database]]:
    """The web process's app (REST + Gradio at /) on uvicorn, with users alice and bob."""
    from gradio_app.web import build_web_app

    settings = make_settings(root, auth={"login_rate": login_rate})
    shutil.copyfile(template, str(make_url(settings.database.url).database))
    db = Database(settings.database.url)
    make_account(db, "alice")
    make_account(db, "bob")
    server = ServerThread(build_web_app(settings, db=db, fleet=StaticFleet(settings, db)))
    server.start()
    try:
        yield server.url, db
    finally:
        server.stop()
        db.dispose()


def login(client: httpx.Client, path: str, name: str, password: str, ip: str) -> httpx.Response:
    headers = {"X-Forwarded-For": ip}  # uvicorn trusts its loopback peer's forwarded address
    if path == "/login":  # the UI's form, as a browser posts it
        form = {"username": name, "password": password}
        return client.post(path, files={k: (None, v) for k, v in form.items()}, headers=headers)
    if path == "/api/v2/auth/token":
        body = {"client_id": name, "client_secret": password}
        return client.post(path, json=body, headers=headers)
    return client.post(path, json={"username": name, "password": password}, headers=headers)


def assert_throttled(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert "too many failed logins" in response.json()["message"]


def test_failed_logins_are_throttled_per_account_and_per_address(
    tmp_path: Path, _migrated_sqlite: Path
) -> None:
    with serve_web(tmp_path, _migrated_sqlite, login_rate="3/minute") as (url, _):
        with httpx.Client(base_url=url, timeout=30) as client:
            for _ in range(3):
                assert (
                    login(client, "/api/v2/auth/login", "alice", "wrong", "10.1.0.1").status_code
                    == 401
                )
            # alice's account is over: refused before the password is checked, from anywhere
            assert_throttled(login(client, "/api/v2/auth/login", "alice", PASSWORD, "10.1.0.1"))
            assert_throttled(login(client, "/admin/auth/login", "alice", PASSWORD, "10.1.0.2"))
            assert_throttled(login(client, "/login", "alice", PASSWORD, "10.1.0.3"))
            # the address is over too: bob cannot log in from it, but can from another
            assert_throttled(login(client, "/api/v2/auth/login", "bob", PASSWORD, "10.1.0.1"))
            assert (
                login(client, "/api/v2/auth/login", "bob", PASSWORD, "10.1.0.4").status_code == 200
            )
            # correct logins are not counted
            for _ in range(5):
                assert login(client, "/login", "bob", PASSWORD, "10.1.0.5").status_code == 200
            # the UI's login form counts its failures the same way
            for _ in range(3):
                assert login(client, "/login", "bob", "wrong", "10.1.0.6").status_code == 400
            assert_throttled(login(client, "/login", "bob", PASSWORD, "10.1.0.7"))
            # client credentials: per client id and address
            for _ in range(3):
                response = login(client, "/api/v2/auth/token", "cl_x", "nope", "10.1.0.8")
                assert response.status_code == 401
            assert_throttled(login(client, "/api/v2/auth/token", "cl_x", "nope", "10.1.0.9"))


def test_an_earlier_scrypt_hash_is_replaced_by_argon2id_at_the_next_login(
    tmp_path: Path, _migrated_sqlite: Path
) -> None:
    with serve_web(tmp_path, _migrated_sqlite, login_rate="3/minute") as (url, db):
        with db.session() as s:
            rows.add_user(s, username="carol", password_hash=scrypt_hash(PASSWORD), role="user")
        with httpx.Client(base_url=url, timeout=30) as client:
            wrong = login(client, "/api/v2/auth/login", "carol", "wrong", "10.2.0.1")
            assert wrong.status_code == 401
            stored = db.run(lambda s: get_user(s, username="carol").password_hash, readonly=True)
            assert stored.startswith("scrypt$")  # a failed login changes nothing
            ok = login(client, "/login", "carol", PASSWORD, "10.2.0.2")
            assert ok.status_code == 200, ok.text
            stored = db.run(lambda s: get_user(s, username="carol").password_hash, readonly=True)
            assert stored.startswith("$argon2id$") and auth.verify_password(PASSWORD, stored)
            again = login(client, "/api/v2/auth/login", "carol", PASSWORD, "10.2.0.3")
            assert again.status_code == 200


async def test_forty_concurrent_ui_logins_keep_health_answering(
    tmp_path: Path, _migrated_sqlite: Path
) -> None:
    """Throttling off, so every attempt is hashed: /api/health still answers within 0.5 s."""
    with serve_web(tmp_path, _migrated_sqlite, login_rate="off") as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            assert (await client.get("/api/health")).status_code in (200, 503)
            # what /api/health costs on this machine now, with nothing else asked of the server
            baseline = 0.0
            for _ in range(20):
                started = time.perf_counter()
                await client.get("/api/health")
                baseline = max(baseline, time.perf_counter() - started)

            async def one(i: int) -> int:
                form = {"username": "alice", "password": PASSWORD if i % 2 else f"wrong-{i}"}
                response = await client.post("/login", data=form)
                return response.status_code

            async def burst() -> tuple[float, list[int]]:
                """The slowest /api/health answer while 40 logins are posted at once."""
                worst = 0.0
                done = asyncio.Event()

                async def probe() -> None:
                    nonlocal worst
                    while not done.is_set():
                        started = time.perf_counter()
                        await client.get("/api/health")
                        worst = max(worst, time.perf_counter() - started)
                        await asyncio.sleep(0.02)

                prober = asyncio.create_task(probe())
                codes = await asyncio.gather(*(one(i) for i in range(40)))
                done.set()
                await prober
                return worst, codes

            # The better of two bursts: one scheduling hiccup of a loaded 2-core machine must not
            # fail the test; hashing on the event loop stalls every burst (1.5 s measured).
            worst, codes = await burst()
            if worst >= 0.5 + baseline:
                print(f"first burst: /api/health took {worst:.2f} s; once more")
                worst, codes = await burst()
        assert sorted(set(codes)) == [200, 400]  # nothing throttled, every attempt hashed
        # 0.5 s over what a probe costs on this (shared, loaded) machine anyway; hashing the 40
        # on the event loop stalls it for about 40 x the hash time, well past that
        assert worst < 0.5 + baseline, (
            f"/api/health took {worst:.2f} s while 40 logins were hashed (alone: {baseline:.2f} s)"
        )
