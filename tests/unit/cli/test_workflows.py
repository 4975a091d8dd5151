"""`comfyfleet workflows list|check|reload`."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from comfyfleet.cli import main
from tests.unit.cli.configs import use_config


def test_workflows_list_prints_a_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_config(tmp_path, monkeypatch)
    assert main(["workflows", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["WORKFLOW", "CAPABILITY", "TITLE"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == {
        "delay",
        "fail",
        "sd15-basic",
        "sd15-img2img",
        "sd15-upscale",
        "sdxl-basic",
        "svd-basic",
    }
    assert "checkpoints: tiny-svd.ckpt" in rows["svd-basic"]


def test_workflows_list_json_has_the_schemas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_config(tmp_path, monkeypatch)
    assert main(["workflows", "list", "--json"]) == 0
    doc = {w["id"]: w for w in json.loads(capsys.readouterr().out)}
    width = doc["sd15-basic"]["parameters"]["properties"]["width"]
    assert width["default"] == 64  # the fleet default
    assert doc["svd-basic"]["parameters"]["required"] == ["image"]


def test_workflows_check_reports_an_unreachable_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_config(tmp_path, monkeypatch)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    assert main(["workflows", "check", "--node", url, "--timeout", "2"]) == 1
    out = capsys.readouterr().out
    assert "7 workflows pass the static checks." in out
    rows = [line.split() for line in out.splitlines() if line.startswith("sd15-basic ")]
    assert rows == [["sd15-basic", "text_to_image", url, "UNREACHABLE"]]


def test_workflows_check_static_and_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_config(tmp_path, monkeypatch)
    assert main(["workflows", "check", "--static"]) == 0
    assert main(["workflows", "reload"]) == 0
    assert "Reloaded 7 workflows" in capsys.readouterr().out
