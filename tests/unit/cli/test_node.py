"""`comfyfleet tokens create-join` and `comfyfleet node join|leave` against a gateway on a loopback
port."""

from __future__ import annotations

import io
import json
import stat
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from comfyfleet.cli import main
from comfyfleet.settings import Settings
from comfyfleet.store import (
    Database,
)
from tests.fixtures.gateway import Accounts, ServerThread, free_port
from tests.unit.api.joining import join_token


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
    from comfyfleet.cli import CliError
    from comfyfleet.cli import node as node_command

    monkeypatch.setattr(node_command.socket, "gethostname", lambda: "GPU_Box7.lab.example")
    assert node_command.host_node_id() == "gpu-box7"
    monkeypatch.setattr(node_command.socket, "gethostname", lambda: "---")
    with pytest.raises(CliError, match="give --name"):
        node_command.host_node_id()
