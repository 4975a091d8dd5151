"""Logs: a combined view of the component files, levels from the settings."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from comfyfleet.logs import CombinedLog, configure_logging
from comfyfleet.settings import Settings


def test_combined_log_copies_complete_new_lines_prefixed(tmp_path: Path) -> None:
    worker = tmp_path / "worker.log"
    worker.write_text("old line\n")
    combined = CombinedLog(tmp_path / "fleet.log")
    combined.follow("worker", worker)
    with worker.open("a") as fh:
        fh.write("polling\nhalf a li")
    combined.poll()
    combined.write("[up] supervisor line")
    with worker.open("a") as fh:
        fh.write("ne\n")
    combined.close()
    assert (tmp_path / "fleet.log").read_text().splitlines() == [
        "[worker] polling",
        "[up] supervisor line",
        "[worker] half a line",
    ]


def test_combined_log_refuses_to_follow_itself(tmp_path: Path) -> None:
    combined = CombinedLog(tmp_path / "fleet.log")
    with pytest.raises(ValueError, match="combined log itself"):
        combined.follow("fleet", tmp_path / "fleet.log")
    combined.close()


def test_levels_come_from_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COMFYFLEET_CONFIG", str(tmp_path / "absent.yaml"))
    monkeypatch.setenv("COMFYFLEET_LOGGING__LEVEL", "warning")
    settings = Settings(logging={"levels": {"comfyfleet.fleet": "debug"}})
    assert settings.logging.level == "WARNING"
    try:
        configure_logging(settings)
        assert logging.getLogger().level == logging.WARNING
        assert logging.getLogger("comfyfleet.fleet").level == logging.DEBUG
    finally:
        logging.getLogger("comfyfleet.fleet").setLevel(logging.NOTSET)
        logging.getLogger().setLevel(logging.WARNING)


def test_an_unknown_level_is_refused_with_the_choices() -> None:
    with pytest.raises(ValidationError, match=r"unknown log level 'loud'.*DEBUG, INFO"):
        Settings(logging={"level": "loud"})
