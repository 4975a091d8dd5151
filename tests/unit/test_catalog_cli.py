"""`comfyfleet workflows …` and `comfyfleet config check` without a node."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from comfyfleet.cli import build_parser, group, main
from tests.unit.test_catalog import BUNDLED, REPO, TEST_WORKFLOWS, TINY_MODELS


def use_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> Path:
    config = {
        "workflow_dirs": [str(BUNDLED), str(TEST_WORKFLOWS)],
        "models": TINY_MODELS,
        "defaults": {"sd15-basic": {"width": 64, "height": 64, "steps": 2}},
        "nodes": [],
        **overrides,
    }
    path = tmp_path / "comfyfleet.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("COMFYFLEET_CONFIG", str(path))
    return path


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


def test_config_check_passes_and_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes = [{"id": "gpu-1", "url": "http://127.0.0.1:1", "capabilities": ["text_to_image", "x"]}]
    use_config(tmp_path, monkeypatch, nodes=nodes)
    assert main(["config", "check"]) == 0
    out = capsys.readouterr().out
    assert "nodes: 1; workflows: 7" in out
    assert "node gpu-1: no workflow has capability 'x'" in out
    assert "no enabled node lists capability 'image_to_video'" in out
    assert out.rstrip().endswith("OK")


def test_config_check_reports_a_bad_fleet_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_config(tmp_path, monkeypatch, defaults={"sd15-basic": {"width": 4}})
    assert main(["config", "check"]) == 1
    err = capsys.readouterr().err
    assert "defaults.sd15-basic.width: fleet default: 4 is below the minimum 64" in err


def test_config_check_reports_invalid_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_config(tmp_path, monkeypatch, routing={"strategy": "fastest"})
    assert main(["config", "check"]) == 1
    err = capsys.readouterr().err
    assert "invalid configuration" in err and "routing.strategy" in err


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


def test_areas_can_share_a_command_group() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    config = group(subparsers, "config", help="again")  # an area adding to `config`
    leaf = config.add_parser("show")
    leaf.set_defaults(func=lambda args: 7)
    args = parser.parse_args(["config", "show"])
    assert args.func(args) == 7
    assert parser.parse_args(["config", "check"]).func.__name__ == "cmd_config_check"


def test_python_dash_m_comfyfleet_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "comfyfleet", "workflows", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "list" in result.stdout and "check" in result.stdout and "reload" in result.stdout
