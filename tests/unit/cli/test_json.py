"""Every command that prints data takes `--json`; the JSON is the data the text shows."""

from __future__ import annotations

import argparse
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.cli import build_parser, main
from tests.unit.cli.configs import use_config
from tests.unit.cli.gateway_cli import run
from tests.unit.local.test_doctor import closed_port

ACTIONS = {
    "up", "down", "login", "logs", "db upgrade", "db downgrade", "config import-legacy",
    "config reload", "users create", "users disable", "users enable", "users quota",
    "users grant", "users revoke",
    "clients revoke", "tokens revoke", "nodes add", "nodes disable", "nodes enable",
    "nodes remove", "node leave", "jobs cancel", "workflows reload", "completion",
}  # fmt: skip
"""Commands that do something and say it was done in a line, or stream (`logs`): no data."""


def _leaves(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, Any]:
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(_leaves(sub, f"{prefix} {name}".strip()))
    return found or {prefix: parser}


def test_every_command_that_prints_data_takes_json() -> None:
    leaves = _leaves(build_parser())
    assert ACTIONS <= set(leaves), sorted(ACTIONS - set(leaves))
    without = sorted(
        name for name, parser in leaves.items()
        if name not in ACTIONS and "--json" not in parser._option_string_actions
    )  # fmt: skip
    assert without == []


def test_config_check_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes = [{"id": "gpu-1", "url": "http://127.0.0.1:1", "capabilities": ["text_to_image", "x"]}]
    use_config(tmp_path, monkeypatch, nodes=nodes)
    assert main(["config", "check", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] and doc["nodes"] == 1 and doc["workflows"] == 7
    assert "node gpu-1: no workflow has capability 'x'" in doc["warnings"]


def test_doctor_json_lists_each_check_with_its_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "comfyfleet.yaml"
    config.write_text(
        f"prefect: {{api_url: 'http://127.0.0.1:{closed_port()}/api'}}\n"
        f"database: {{url: 'sqlite:///{tmp_path / 'cf.db'}'}}\n"
        f"store: {{outputs_dir: {tmp_path / 'o'}, inputs_dir: {tmp_path / 'i'}}}\n"
    )
    monkeypatch.setenv("COMFYFLEET_CONFIG", str(config))
    assert main(["doctor", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    by_name = {c["name"]: c for c in doc["checks"]}
    assert not doc["ok"] and by_name["database"]["status"] == "FAIL"
    assert "comfyfleet db upgrade" in by_name["database"]["fix"]
    assert by_name["config"]["status"] == "OK"


def use_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_config(tmp_path, monkeypatch, database={"url": f"sqlite:///{tmp_path / 'cf.db'}"})


def test_db_current_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_database(tmp_path, monkeypatch)
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    assert main(["db", "current", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["up_to_date"] and doc["current"] == doc["head"] and doc["head"]


def test_workflows_check_json_names_the_unreachable_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_config(tmp_path, monkeypatch)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    assert main(["workflows", "check", "--node", url, "--timeout", "2", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert not doc["ok"] and doc["workflows"] == 7 and doc["unreachable"][0].startswith(url)
    assert {c["status"] for c in doc["checks"]} == {"unreachable"}


def test_clients_list_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_database(tmp_path, monkeypatch)
    assert main(["db", "upgrade"]) == 0
    code, out = run(["users", "create", "alice", "--password-stdin"], capsys,
                    stdin="correct horse battery\n")  # fmt: skip
    assert code == 0, out
    code, out = run(["clients", "create", "--owner", "alice", "--name", "app", "--json"], capsys)
    made = json.loads(out)
    code, out = run(["clients", "list", "--json"], capsys)
    assert code == 0, out
    [client] = json.loads(out)
    assert client["client_id"] == made["client_id"] and client["owner"] == "alice"
    assert client["client_name"] == "app" and client["revoked_at"] is None
