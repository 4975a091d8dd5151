"""`comfyfleet db upgrade`, `users …`, `clients …`, `tokens revoke` on SQLite and MariaDB."""

from __future__ import annotations

import io
import json
import sys

import pytest

from comfyfleet import auth
from comfyfleet.cli import main
from comfyfleet.store import Database, current_revision, head_revision, list_audit

pytestmark = pytest.mark.integration


@pytest.fixture
def cli_db(empty_database_url: str, monkeypatch: pytest.MonkeyPatch) -> Database:
    monkeypatch.setenv("COMFYFLEET_DATABASE__URL", empty_database_url)
    return Database(empty_database_url)


def _cli(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *argv: str,
    stdin: str = "",
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_db_upgrade_then_admin_from_stdin(
    cli_db: Database, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = _cli(capsys, monkeypatch, "db", "upgrade")
    assert code == 0 and "(empty) -> " + head_revision() in out
    assert current_revision(cli_db) == head_revision()
    code, out, _ = _cli(
        capsys,
        monkeypatch,
        "users",
        "create",
        "admin",
        "--admin",
        "--password-stdin",
        stdin="s3cret-pass\n",
    )
    assert code == 0 and "created admin" in out
    with cli_db.session() as s:
        user = auth.authenticate_user(s, username="admin", password="s3cret-pass")
        assert user is not None and user.is_admin
        assert [e.action for e in list_audit(s)] == ["user.create"]
        assert list_audit(s)[0].actor.startswith("cli:")
    code, _, err = _cli(
        capsys, monkeypatch, "users", "create", "admin", "--password-stdin", stdin="another-pass"
    )
    assert code == 1 and "exists already" in err
    code, _, err = _cli(
        capsys, monkeypatch, "users", "create", "bob", "--password-stdin", stdin="short"
    )
    assert code == 1 and "at least 8 characters" in err
    code, out, _ = _cli(capsys, monkeypatch, "users", "list", "--json")
    assert [u["username"] for u in json.loads(out)] == ["admin"]
    cli_db.dispose()


def test_clients_tokens_and_user_admin_commands(
    cli_db: Database, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, _ = _cli(
        capsys, monkeypatch, "users", "create", "alice", "--password-stdin", stdin="long-enough"
    )
    assert code == 0
    code, out, _ = _cli(
        capsys, monkeypatch, "clients", "create", "--owner", "alice", "--name", "bot", "--json"
    )
    assert code == 0
    created = json.loads(out)
    with cli_db.session() as s:
        client = auth.authenticate_client(
            s, client_id=created["client_id"], secret=created["client_secret"]
        )
        assert client is not None
        issued = auth.issue_token(s, principal=client, ttl_minutes=5)
        user_token = auth.issue_token(
            s, principal=auth.require_user(s, username="alice"), ttl_minutes=5
        )
    code, out, _ = _cli(capsys, monkeypatch, "clients", "list")
    assert code == 0 and created["client_id"] in out and "bot" in out
    code, _, _ = _cli(capsys, monkeypatch, "clients", "revoke", created["client_id"])
    assert code == 0
    code, _, err = _cli(capsys, monkeypatch, "clients", "revoke", created["client_id"])
    assert code == 1 and "no active client" in err
    with cli_db.session() as s:
        assert auth.authenticate_token(s, token=issued.token) is None
        assert auth.authenticate_token(s, token=user_token.token) is not None
    code, _, _ = _cli(capsys, monkeypatch, "tokens", "revoke", "-", stdin=user_token.token)
    assert code == 0
    with cli_db.session() as s:
        assert auth.authenticate_token(s, token=user_token.token) is None
    code, _, _ = _cli(
        capsys, monkeypatch, "users", "quota", "alice", "--max-queued", "3", "--max-running", "none"
    )
    assert code == 0
    code, _, _ = _cli(capsys, monkeypatch, "users", "disable", "alice")
    assert code == 0
    with cli_db.session() as s:
        alice = auth.require_user(s, username="alice")
        assert alice.disabled and alice.max_queued == 3 and alice.max_running is None
    code, _, err = _cli(capsys, monkeypatch, "users", "disable", "nobody")
    assert code == 1 and "no user 'nobody'" in err
    cli_db.dispose()
