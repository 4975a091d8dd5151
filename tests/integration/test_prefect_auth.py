"""The Prefect API with an auth string, as `comfyfleet up` and the test session run it: a request
without the string is refused (only /health is open), ComfyFleet's clients send it, `doctor`
probes with it and fails on an API open beyond loopback."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from comfyfleet.local import doctor
from comfyfleet.local.prefect_server import AUTH_ENV, api_access, auth_headers, auth_string
from tests.fixtures.gateway import ServerThread, make_settings

pytestmark = pytest.mark.integration


def test_the_prefect_api_refuses_requests_without_the_auth_string(prefect_server: Any) -> None:
    api = prefect_server.api_url
    auth = os.environ[AUTH_ENV]
    assert prefect_server.auth == auth
    assert httpx.get(f"{api}/health").status_code == 200  # probes stay open
    refused = httpx.post(f"{api}/flows/filter", json={})
    assert refused.status_code == 401
    wrong = httpx.post(f"{api}/flows/filter", json={}, headers=auth_headers("not-it"))
    assert wrong.status_code == 401
    ok = httpx.post(f"{api}/flows/filter", json={}, headers=auth_headers(auth))
    assert ok.status_code == 200
    assert api_access(api, auth) == "ok" and api_access(api, "not-it") == "refused"
    # the block holding the job store's secret is behind it too
    assert httpx.post(f"{api}/block_documents/filter", json={}).status_code == 401


async def test_prefect_clients_of_the_fleet_send_the_auth_string(prefect_server: Any) -> None:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        assert (await client.api_healthcheck()) is None
        await client.read_flows(limit=1)  # refused without the string


def test_doctor_probes_with_the_auth_string(
    prefect_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path, prefect={"api_url": prefect_server.api_url})
    check = doctor.check_prefect(settings)
    assert check.status == "OK" and "auth on" in check.detail, check
    monkeypatch.setenv(AUTH_ENV, "not-it")
    wrong = doctor.check_prefect(settings)
    assert wrong.status == "FAIL" and "refuses our auth string" in wrong.detail, wrong


def _own_address() -> str | None:
    for family, address in ((socket.AF_INET, "192.0.2.255"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((address, 9))
                own = s.getsockname()[0]
        except OSError:
            continue
        if not own.startswith("127.") and own != "::1":
            return own
    return None


def test_doctor_fails_on_a_prefect_api_open_beyond_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = _own_address()
    # never skipped: without an address beyond loopback this check cannot be tested, so say so
    assert own is not None, "this host has no address but loopback: the test needs one"
    open_api = FastAPI()
    open_api.get("/api/health")(lambda: True)
    open_api.get("/api/admin/version")(lambda: "3.9.1")
    server = ServerThread(open_api, host="::")  # every address, IPv4 and IPv6
    server.start()
    try:
        host = f"[{own}]" if ":" in own else own
        monkeypatch.delenv(AUTH_ENV)
        settings = make_settings(
            tmp_path,
            prefect={"api_url": f"http://{host}:{server.port}/api", "auth_string_file": None},
        )
        check = doctor.check_prefect(settings)
        assert check.status == "FAIL" and "WITHOUT auth" in check.detail, check
        loopback = make_settings(
            tmp_path,
            prefect={"api_url": f"http://[::1]:{server.port}/api", "auth_string_file": None},
        )
        assert doctor.check_prefect(loopback).status == "OK"
    finally:
        server.stop()


def test_the_auth_string_file_is_made_once_and_readable_only_by_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "var" / "prefect-auth-string"
    assert auth_string(path) is None  # not made unless asked
    made = auth_string(path, create=True)
    assert made and len(made) > 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert auth_string(path, create=True) == made  # kept, not replaced
