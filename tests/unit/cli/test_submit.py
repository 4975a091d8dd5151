"""`comfyfleet submit --wait` follows a job's progress and downloads its outputs."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.store import Database
from tests.fixtures.gateway import Accounts, complete_job
from tests.unit.api.test_tasks import png_bytes
from tests.unit.cli.gateway_cli import run


def test_submit_wait_follows_progress_and_downloads(
    cli_env: str,
    api_users: Accounts,
    api_db: Database,
    api_settings: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: Any,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("COMFYFLEET_TOKEN", api_users.alice.token)

    def finisher() -> None:
        import time

        from comfyfleet.store import list_jobs

        for _ in range(200):
            queued = api_db.run(lambda s: list_jobs(s, status="queued"), readonly=True)
            if queued:
                outputs = api_settings.store.outputs_dir
                complete_job(api_db, queued[0].id, {"out.png": png_bytes()}, outputs, delay=0.6)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=finisher)
    thread.start()
    code, out = run(["submit", "delay", "--wait", "--download", str(tmp_path / "dl")], capsys)
    thread.join()
    assert code == 0, out
    assert "completed on gpu-1" in out
    assert re.search(r"job \w+ [1-4]/4 steps on gpu-1", out), out  # the progress of real steps
    assert (tmp_path / "dl" / "out.png").read_bytes()[:4] == b"\x89PNG"
