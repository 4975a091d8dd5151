"""`comfyfleet doctor`: every failure printed with its fix, exit status 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.local.test_doctor import closed_port


def test_the_command_prints_every_failure_with_its_fix_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from comfyfleet.cli import main

    config = tmp_path / "comfyfleet.yaml"
    config.write_text(
        f"prefect: {{api_url: 'http://127.0.0.1:{closed_port()}/api'}}\n"
        f"database: {{url: 'sqlite:///{tmp_path / 'cf.db'}'}}\n"
        f"store: {{outputs_dir: {tmp_path / 'o'}, inputs_dir: {tmp_path / 'i'}}}\n"
        f"nodes: [{{id: gpu-1, url: 'http://127.0.0.1:{closed_port()}'}}]\n"
    )
    monkeypatch.setenv("COMFYFLEET_CONFIG", str(config))
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  prefect" in out and "FAIL  node gpu-1" in out and "FAIL  database" in out
    assert "fix: run `comfyfleet db upgrade`" in out
    assert "OK    store outputs" in out
    assert "check(s) failed." in out


def test_a_broken_config_is_a_failure_with_its_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from comfyfleet.cli import main

    config = tmp_path / "comfyfleet.yaml"
    config.write_text("nodes:\n  - id: gpu-1\n    url: http://a:8188\n    capacity: -1\n")
    monkeypatch.setenv("COMFYFLEET_CONFIG", str(config))
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  config" in out and "nodes.0.capacity (line 4)" in out
