"""`comfyfleet config check`: the file, its workflows and their fleet defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfyfleet.cli import main
from tests.unit.cli.configs import use_config


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
