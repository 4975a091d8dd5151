"""Node self-join over REST and the CLI, on the in-process gateway (its in-memory fleet) with a
stand-in ComfyUI served on a loopback port: token refusals, probe refusals, input errors,
re-join, leave with drain, join tokens listed and revoked, `tokens create-join`, `node join|leave`.
The real ComfyUI + Prefect path is tests/integration/test_node_join.py."""

from __future__ import annotations

import io
import json
import re
import stat
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from comfyfleet import auth
from comfyfleet.cli import main
from comfyfleet.settings import Settings
from comfyfleet.store import (
    Database,
    claim_job,
    complete_job,
    create_attempt,
    mark_attempt_running,
    utcnow,
)
from comfyfleet.store.models import Token
from tests.fixtures.gateway import Accounts, ServerThread, free_port

DEVICE = "cuda:0 NVIDIA L4 : cudaMallocAsync"


def fake_comfyui() -> FastAPI:
    """Answers the two things the control plane asks a ComfyUI before and after a join."""
    app = FastAPI()

    @app.get("/system_stats")
    def system_stats() -> dict[str, Any]:
        return {"system": {"os": "posix"}, "devices": [{"name": DEVICE, "type": "cuda"}]}

    @app.get("/queue")
    def queue() -> dict[str, Any]:
        return {"queue_running": [], "queue_pending": []}

    return app


@pytest.fixture
def comfy_stand_in() -> Iterator[ServerThread]:
    server = ServerThread(fake_comfyui())
    server.start()
    yield server
    server.stop()


def join_token(db: Database, *, note: str = "rack 3", ttl_minutes: int = 30) -> auth.IssuedToken:
    with db.session() as s:
        return auth.issue_join_token(s, ttl_minutes=ttl_minutes, note=note, actor="test")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def admin_nodes(client: httpx.AsyncClient, users: Accounts) -> dict[str, Any]:
    listed = await client.get("/api/v2/admin/nodes", headers=users.admin.headers)
    assert listed.status_code == 200, listed.text
    return {n["id"]: n for n in listed.json()}


async def test_join_is_refused_without_a_valid_join_token_and_registers_nothing(
    api_client: httpx.AsyncClient, api_users: Accounts, api_db: Database, comfy_stand_in: Any
) -> None:
    body = {"name": "gpu-7", "url": comfy_stand_in.url}
    expired, revoked = join_token(api_db), join_token(api_db)
    with api_db.session() as s:
        s.get(Token, expired.id).expires_at = utcnow() - timedelta(minutes=1)
        auth.revoke_token(s, token_id=revoked.id, actor="test")
    cases = {
        None: "a join token is required",
        "cfj_" + "x" * 43: "unknown join token",
        expired.token: f"join token {expired.id} expired at",
        revoked.token: f"join token {revoked.id} was revoked at",
        api_users.admin.token: "that is a bearer token, not a join token",
        "hello": "not a join token",
    }
    for token, reason in cases.items():
        response = await api_client.post(
            "/api/v2/nodes/join", json=body, headers=bearer(token) if token else {}
        )
        assert response.status_code == 401, response.text
        error = response.json()
        assert error["error"] == "join_refused" and error["field"] == "Authorization"
        assert error["message"].startswith("join refused: ") and reason in error["message"]
    assert await admin_nodes(api_client, api_users) == {}


async def test_join_is_refused_when_the_url_does_not_answer_as_a_comfyui(
    api_client: httpx.AsyncClient, api_users: Accounts, api_db: Database, comfy_stand_in: Any
) -> None:
    token = join_token(api_db).token
    closed = f"http://127.0.0.1:{free_port()}"
    for url, reason in (
        (closed, f"cannot reach {closed}"),
        (f"{comfy_stand_in.url}/elsewhere", "answered HTTP 404: not a ComfyUI server?"),
    ):
        response = await api_client.post(
            "/api/v2/nodes/join", json={"name": "gpu-7", "url": url}, headers=bearer(token)
        )
        assert response.status_code == 422, response.text
        error = response.json()
        assert error["error"] == "node_unreachable" and error["field"] == "url"
        assert reason in error["message"], error
    assert await admin_nodes(api_client, api_users) == {}


async def test_join_names_the_bad_field(
    api_client: httpx.AsyncClient, api_users: Accounts, api_db: Database, comfy_stand_in: Any
) -> None:
    token = join_token(api_db).token
    good = {"name": "gpu-7", "url": comfy_stand_in.url}
    for change, field, words in (
        ({"name": "GPU 7!"}, "name", "pattern"),
        ({"url": "ftp://10.0.0.7:8188"}, "url", "http:// or https://"),
        ({"url": "http://10.0.0.7:8188/?x=1"}, "url", "without ?query"),
        ({"capacity": 0}, "capacity", "greater than or equal to 1"),
        ({"capabilities": ["text2img"]}, "capabilities", "unknown capability 'text2img'"),
        ({"metadata": {"joined": "yes"}}, "metadata", "reserved"),
        ({"metadata": {"rack": ["a"]}}, "metadata", "text, a number or a boolean"),
        ({"colour": "red"}, "colour", "Extra inputs"),
    ):
        response = await api_client.post(
            "/api/v2/nodes/join", json={**good, **change}, headers=bearer(token)
        )
        assert response.status_code == 422, (change, response.text)
        assert response.json()["field"] == field, response.json()
        assert words in response.json()["message"], response.json()
    assert await admin_nodes(api_client, api_users) == {}


async def test_a_node_joins_rejoins_to_update_and_leaves_after_its_job_finishes(
    api_client: httpx.AsyncClient, api_users: Accounts, api_db: Database, comfy_stand_in: Any
) -> None:
    first, second = join_token(api_db, note="rack 3"), join_token(api_db, note="rack 4")
    joined = await api_client.post(
        "/api/v2/nodes/join",
        json={"name": "gpu-7", "url": comfy_stand_in.url + "/", "capabilities": ["delay"]},
        headers=bearer(first.token),
    )
    assert joined.status_code == 201, joined.text
    answer = joined.json()
    assert answer["created"] and answer["pool"] == "comfyui-gpu-7"
    assert answer["node_key"].startswith("cfn_")
    node = (await admin_nodes(api_client, api_users))["gpu-7"]
    assert node["url"] == comfy_stand_in.url and node["capacity"] == 2
    assert node["capabilities"] == ["delay"] and node["metadata"]["gpu"] == "NVIDIA L4"
    assert node["joined"]["token_id"] == first.id and node["joined"]["token_note"] == "rack 3"
    assert node["joined"]["via"] == "join-token" and node["joined"]["address"]
    assert "key_sha256" not in node["joined"]
    listed = await api_client.get("/api/v2/admin/nodes", headers=api_users.admin.headers)
    assert answer["node_key"] not in listed.text  # only its digest is kept

    rejoined = await api_client.post(
        "/api/v2/nodes/join",
        json={"name": "gpu-7", "url": comfy_stand_in.url, "capacity": 3,
              "metadata": {"rack": "r4", "gpu": "L4 24GB"}},
        headers=bearer(second.token),
    )  # fmt: skip
    assert rejoined.status_code == 200, rejoined.text
    assert not rejoined.json()["created"]
    nodes = await admin_nodes(api_client, api_users)
    assert list(nodes) == ["gpu-7"]
    node = nodes["gpu-7"]
    assert node["capacity"] == 3 and node["capabilities"] == ["delay"]  # what is not given stays
    assert node["metadata"]["rack"] == "r4" and node["metadata"]["gpu"] == "L4 24GB"
    assert node["joined"]["token_id"] == second.id
    assert node["joined"]["joined_at"] == answer["node"]["joined"]["joined_at"]
    assert node["joined"]["updated_at"] > node["joined"]["joined_at"]

    # revoking the token keeps the node, but it can join nothing more
    revoked = await api_client.delete(
        f"/api/v2/admin/tokens/join/{second.id}", headers=api_users.admin.headers
    )
    assert revoked.status_code == 204, revoked.text
    again = await api_client.delete(
        f"/api/v2/admin/tokens/join/{second.id}", headers=api_users.admin.headers
    )
    assert again.status_code == 409 and "revoked already" in again.json()["message"]
    tokens = await api_client.get("/api/v2/admin/tokens/join", headers=api_users.admin.headers)
    by_id = {t["id"]: t for t in tokens.json()}
    assert by_id[second.id]["state"] == "revoked" and by_id[second.id]["nodes"] == ["gpu-7"]
    assert by_id[first.id]["state"] == "active" and by_id[first.id]["nodes"] == []
    assert "token" not in by_id[first.id]
    assert "gpu-7" in await admin_nodes(api_client, api_users)
    refused = await api_client.post(
        "/api/v2/nodes/join",
        json={"name": "gpu-8", "url": comfy_stand_in.url},
        headers=bearer(second.token),
    )
    assert refused.status_code == 401 and "revoked" in refused.json()["message"]

    # leave: the key of the first join was replaced; the node drains while its job runs
    leave = "/api/v2/nodes/gpu-7/leave"
    stale = await api_client.post(leave, headers=bearer(answer["node_key"]))
    assert stale.status_code == 401 and "not the node key of gpu-7" in stale.json()["message"]
    user = await api_client.post(leave, headers=api_users.alice.headers)
    assert user.status_code == 403
    key = rejoined.json()["node_key"]
    job = await api_client.post(
        "/api/v2/tasks",
        json={"workflow": "delay", "params": {"seconds": 1}},
        headers=api_users.alice.headers,
    )
    job_id = job.json()["id"]
    with api_db.session() as s:
        assert claim_job(s, job_id=job_id)
        attempt_id = create_attempt(s, job_id=job_id, node="gpu-7", lease_s=60).id
    with api_db.session() as s:
        assert mark_attempt_running(s, attempt_id=attempt_id, lease_s=60)
    draining = await api_client.post(leave, headers=bearer(key))
    assert draining.status_code == 202, draining.text
    assert draining.json()["status"] == "draining" and draining.json()["in_flight"] == 1
    assert "gpu-7" in await admin_nodes(api_client, api_users)
    with api_db.session() as s:
        complete_job(s, job_id=job_id, attempt_id=attempt_id, gpu_seconds=1.0)
    left = await api_client.post(leave, headers=bearer(key))
    assert left.status_code == 200 and left.json()["status"] == "removed", left.text
    assert await admin_nodes(api_client, api_users) == {}
    gone = await api_client.post(leave, headers=bearer(key))
    assert gone.status_code == 404 and "left already" in gone.json()["message"]


async def test_join_cannot_take_over_a_node_an_admin_added(
    api_client: httpx.AsyncClient, api_users: Accounts, api_db: Database, comfy_stand_in: Any
) -> None:
    added = await api_client.post(
        "/api/v2/admin/nodes",
        json={"id": "gpu-1", "url": "http://127.0.0.1:9"},
        headers=api_users.admin.headers,
    )
    assert added.status_code == 201
    response = await api_client.post(
        "/api/v2/nodes/join",
        json={"name": "gpu-1", "url": comfy_stand_in.url},
        headers=bearer(join_token(api_db).token),
    )
    assert response.status_code == 409 and "did not join by itself" in response.json()["message"]
    node = (await admin_nodes(api_client, api_users))["gpu-1"]
    assert node["url"] == "http://127.0.0.1:9" and node["joined"] is None
    leave = await api_client.post("/api/v2/nodes/gpu-1/leave", headers=bearer("cfn_" + "x" * 43))
    assert leave.status_code == 401


async def test_join_tokens_are_created_shown_once_and_listed_by_admins(
    api_client: httpx.AsyncClient, api_users: Accounts
) -> None:
    created = await api_client.post(
        "/api/v2/admin/tokens/join",
        json={"ttl_minutes": 5, "note": "new rack"},
        headers=api_users.admin.headers,
    )
    assert created.status_code == 201, created.text
    token = created.json()
    assert token["token"].startswith("cfj_") and token["note"] == "new rack"
    listed = await api_client.get("/api/v2/admin/tokens/join", headers=api_users.admin.headers)
    (row,) = listed.json()
    assert row["id"] == token["id"] and row["created_by"] == "root" and row["state"] == "active"
    assert token["token"] not in listed.text
    missing = await api_client.delete(
        "/api/v2/admin/tokens/join/999", headers=api_users.admin.headers
    )
    assert missing.status_code == 404 and "no join token 999" in missing.json()["message"]


# -- the CLI -----------------------------------------------------------------------------------


@pytest.fixture
def cli_env(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    gateway_server: ServerThread,
    api_settings: Settings,
) -> str:
    from comfyfleet.settings import get_settings

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("COMFYFLEET_DATABASE__URL", api_settings.database.url)
    # --gateway, not COMFYFLEET_GATEWAY: Settings reads that variable as its `gateway` section
    for name in ("COMFYFLEET_GATEWAY", "COMFYFLEET_TOKEN", "COMFYFLEET_JOIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    return gateway_server.url


def run(
    argv: list[str], capsys: pytest.CaptureFixture[str], *, gateway: str | None = None
) -> tuple[int, str]:
    old = sys.stdin
    sys.stdin = io.StringIO("")
    try:
        code = main(["--gateway", gateway, *argv] if gateway else argv)
    finally:
        sys.stdin = old
    out = capsys.readouterr()
    return code, out.out + out.err


def test_cli_creates_a_join_token_then_the_host_joins_and_leaves(
    cli_env: str,
    comfy_stand_in: Any,
    api_users: Accounts,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, out = run(["tokens", "create-join", "--ttl", "10", "--note", "cli", "--json"], capsys)
    assert code == 0, out
    issued = json.loads(out)
    assert issued["token"].startswith("cfj_")
    monkeypatch.setenv("COMFYFLEET_JOIN_TOKEN", issued["token"])
    url = comfy_stand_in.url
    code, out = run(
        ["node", "join", "--name", "gpu-7", "--url", url, "--capacity", "1",
         "--capability", "delay", "--meta", "rack=r3"],
        capsys, gateway=cli_env,
    )  # fmt: skip
    assert code == 0, out
    assert "node gpu-7 joined: pool comfyui-gpu-7" in out and "gpu NVIDIA L4" in out
    assert "python -m comfyfleet.worker --pool comfyui-gpu-7" in out
    keys = tmp_path / "config" / "comfyfleet" / "nodes.json"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert json.loads(keys.read_text())[cli_env]["gpu-7"].startswith("cfn_")
    nodes = httpx.get(f"{cli_env}/api/v2/admin/nodes", headers=api_users.admin.headers).json()
    assert nodes[0]["joined"]["token_id"] == issued["id"] and nodes[0]["capacity"] == 1
    assert nodes[0]["metadata"]["rack"] == "r3"
    code, out = run(
        ["node", "join", "--name", "gpu-7", "--url", url, "--capacity", "2"],
        capsys,
        gateway=cli_env,
    )
    assert code == 0 and "node gpu-7 updated" in out, out
    code, out = run(["node", "leave", "--name", "gpu-7"], capsys, gateway=cli_env)
    assert code == 0 and "node gpu-7 left the fleet" in out, out
    assert json.loads(keys.read_text())[cli_env] == {}
    assert httpx.get(f"{cli_env}/api/v2/admin/nodes", headers=api_users.admin.headers).json() == []


def test_cli_join_and_leave_errors_say_what_is_wrong(
    cli_env: str,
    comfy_stand_in: Any,
    api_db: Database,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = comfy_stand_in.url
    code, out = run(["node", "join", "--name", "gpu-7", "--url", url], capsys, gateway=cli_env)
    assert code == 1 and "no join token: give --token or set COMFYFLEET_JOIN_TOKEN" in out
    code, out = run(
        ["node", "join", "--name", "gpu-7", "--url", url, "--token", "cfj_x"],
        capsys,
        gateway=cli_env,
    )
    assert code == 1 and "HTTP 401: join refused: unknown join token" in out, out
    token = join_token(api_db).token
    monkeypatch.setenv("COMFYFLEET_JOIN_TOKEN", token)
    closed = f"http://127.0.0.1:{free_port()}"
    code, out = run(["node", "join", "--name", "gpu-7", "--url", closed], capsys, gateway=cli_env)
    assert code == 1 and f"HTTP 422: join refused: cannot reach {closed}" in out, out
    code, out = run(
        ["node", "join", "--name", "gpu-7", "--url", url, "--meta", "rack"], capsys, gateway=cli_env
    )
    assert code == 1 and "--meta 'rack': use K=V" in out
    code, out = run(["node", "leave", "--name", "gpu-7"], capsys, gateway=cli_env)
    assert code == 1 and "no node key for gpu-7" in out and "no admin token" in out
    code, out = run(["tokens", "create-join", "--ttl", "0"], capsys)
    assert code == 1 and "--ttl 0: must be a positive number of minutes" in out
    nowhere = f"http://127.0.0.1:{free_port()}"
    code, out = run(["node", "join", "--name", "gpu-7", "--url", url], capsys, gateway=nowhere)
    assert code == 1 and "cannot reach the gateway" in out


def test_the_default_node_name_is_the_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from comfyfleet import join_commands
    from comfyfleet.cli import CliError

    monkeypatch.setattr(join_commands.socket, "gethostname", lambda: "GPU_Box7.lab.example")
    assert join_commands.host_node_id() == "gpu-box7"
    monkeypatch.setattr(join_commands.socket, "gethostname", lambda: "---")
    with pytest.raises(CliError, match="give --name"):
        join_commands.host_node_id()


async def test_the_admin_ui_creates_shows_once_and_revokes_join_tokens(
    api_settings: Settings, api_db: Database, api_users: Accounts
) -> None:
    import gradio as gr

    from comfyfleet.api import StaticFleet
    from gradio_app.web import build_web_app

    app = build_web_app(api_settings, db=api_db, fleet=StaticFleet(api_settings, api_db))
    handlers = {
        f.fn.__name__: f.fn
        for f in app.state.ui.fns.values()
        if "build_join_tokens" in getattr(f.fn, "__qualname__", "")
    }

    class AdminRequest:
        username = "root"

    class UserRequest:
        username = "alice"

    shown, table = await handlers["create"](15, "ui batch", AdminRequest())
    [row] = table
    token = re.search(r"`(cfj_[\w-]+)`", shown).group(1)
    assert row[:3] == [row[0], "ui batch", "active"] and token not in str(table)
    with api_db.session() as s:
        assert auth.authenticate_join_token(s, token=token) is not None
    with pytest.raises(gr.Error):
        await handlers["create"](15, "not an admin", UserRequest())
    table = await handlers["revoke"](row[0], AdminRequest())
    assert table[0][2] == "revoked"
    with pytest.raises(gr.Error, match="revoked already"):
        await handlers["revoke"](row[0], AdminRequest())
