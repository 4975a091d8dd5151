"""`comfyfleet login | submit | jobs …` against a gateway served on a loopback port."""

from __future__ import annotations

import io
import json
import re
import stat
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.cli import main
from comfyfleet.store import Database
from tests.fixtures.gateway import Accounts, ServerThread, complete_job
from tests.unit.test_api_tasks import png_bytes


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gateway_server: ServerThread) -> str:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("COMFYFLEET_TOKEN", raising=False)
    monkeypatch.setenv("COMFYFLEET_GATEWAY", gateway_server.url)
    return gateway_server.url


def run(argv: list[str], capsys: pytest.CaptureFixture[str], stdin: str = "") -> tuple[int, str]:
    old = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        code = main(argv)
    finally:
        sys.stdin = old
    out = capsys.readouterr()
    return code, out.out + out.err


def test_login_stores_a_private_token_and_jobs_commands_use_it(
    cli_env: str, api_users: Accounts, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out = run(
        ["login", "--username", "alice", "--password-stdin"],
        capsys,
        stdin=api_users.alice.password + "\n",
    )
    assert code == 0, out
    token_file = tmp_path / "config" / "comfyfleet" / "tokens.json"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert json.loads(token_file.read_text())[cli_env]["username"] == "alice"
    code, out = run(["submit", "text_to_image", "--prompt", "a fox", "-p", "steps=3"], capsys)
    assert code == 0, out
    job_id = out.strip().splitlines()[-1]
    code, out = run(["jobs", "show", job_id, "--json"], capsys)
    shown = json.loads(out)
    assert shown["workflow"] == "sd15-basic" and shown["params"]["steps"] == 3
    code, out = run(["jobs", "list"], capsys)
    assert job_id in out and "1 of 1 job(s)" in out
    code, out = run(["jobs", "cancel", job_id], capsys)
    assert code == 0 and "cancelled" in out


def test_cli_errors_are_the_gateways_messages(
    cli_env: str, api_users: Accounts, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    code, out = run(["jobs", "list"], capsys)
    assert code == 1 and "comfyfleet login" in out
    monkeypatch.setenv("COMFYFLEET_TOKEN", api_users.bob.token)
    code, out = run(["submit", "text_to_image", "--prompt", "x", "-p", "width=65"], capsys)
    assert code == 1 and "width" in out and "multiple of 8" in out
    code, out = run(["submit", "nope"], capsys)
    assert code == 1 and "HTTP 404" in out
    code, out = run(["login", "--username", "bob", "--password-stdin"], capsys, stdin="wrong\n")
    assert code == 1 and "wrong username or password" in out


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
    assert re.search(r"\[#+ *\] [1-4]/4 on gpu-1", out), out  # the progress bar of real steps
    assert (tmp_path / "dl" / "out.png").read_bytes()[:4] == b"\x89PNG"
