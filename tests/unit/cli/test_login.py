"""`comfyfleet login` keeps a private token that `comfyfleet jobs …` use; errors are the
gateway's."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.gateway import Accounts
from tests.unit.cli.gateway_cli import run


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
