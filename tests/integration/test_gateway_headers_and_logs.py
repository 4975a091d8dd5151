"""The web process served for real: security headers on REST, docs and the Gradio UI; no bearer
token in the access log, though SSE streams and downloads take `?access_token=`."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import httpx
import pytest
from sqlalchemy import make_url

from comfyfleet.api import create_app
from comfyfleet.store import Database
from tests.fixtures.gateway import FAST_WEBHOOKS, ServerThread, make_account, make_settings
from tests.integration.test_gateway_logins import serve_web

pytestmark = pytest.mark.integration

SECURITY = {
    "x-frame-options": "DENY",
    "content-security-policy": "frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_no_bearer_token_reaches_the_access_log(tmp_path: Path, _migrated_sqlite: Path) -> None:
    settings = make_settings(tmp_path)
    shutil.copyfile(_migrated_sqlite, str(make_url(settings.database.url).database))
    db = Database(settings.database.url)
    alice = make_account(db, "alice")
    server = ServerThread(
        create_app(settings, db=db, webhook_schedule=FAST_WEBHOOKS), log_level="info"
    )
    server.start()
    access = logging.getLogger("uvicorn.access")
    lines = Lines()
    access.addHandler(lines)
    try:
        with httpx.Client(base_url=server.url) as client:
            job = client.post(
                "/api/v2/tasks", headers=alice.headers, json={"workflow": "delay", "params": {}}
            ).json()
            cancelled = client.delete(f"/api/v2/tasks/{job['id']}", headers=alice.headers)
            assert cancelled.json()["status"] == "cancelled"
            query = f"access_token={alice.token}"
            events = client.get(f"/api/v2/tasks/{job['id']}/events?{query}")
            assert events.status_code == 200 and "event: end" in events.text
            missing = client.get(f"/api/v2/tasks/{job['id']}/outputs/x.png?{query}")
            assert missing.status_code == 404
            wrong = client.get(f"/api/v2/tasks/{job['id']}/events?access_token=cfb_not-a-real-one")
            assert wrong.status_code == 401
    finally:
        access.removeHandler(lines)
        server.stop()
        db.dispose()
    requests = [line for line in lines.lines if "access_token" in line]
    assert len(requests) == 3, lines.lines
    assert all("access_token=***" in line for line in requests), requests
    assert not any(alice.token in line or alice.token[4:] in line for line in lines.lines)


def test_security_headers_on_rest_docs_and_the_ui(tmp_path: Path, _migrated_sqlite: Path) -> None:
    with serve_web(tmp_path, _migrated_sqlite, login_rate="3/minute") as (url, _):
        with httpx.Client(base_url=url) as client:
            for path in ("/api/health", "/docs", "/openapi.json", "/", "/api/v2/tasks"):
                response = client.get(path)
                assert response.status_code < 500, (path, response.status_code)
                for name, value in SECURITY.items():
                    assert response.headers.get(name) == value, (path, name, response.headers)
            refused = client.post("/api/v2/auth/login", json={"username": "x", "password": "y"})
            assert refused.status_code == 401 and refused.headers["x-frame-options"] == "DENY"
