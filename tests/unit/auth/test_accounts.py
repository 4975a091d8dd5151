"""Accounts: users and clients, revocation and disabling at once, no default credentials, the
service user, the audit log."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from comfyfleet import auth
from comfyfleet.store import (
    AuditEntry,
    Conflict,
    Database,
    InvalidInput,
    User,
    ensure_service_user,
    list_audit,
)
from tests.unit.auth.users import _user


def test_client_credentials_and_client_tokens(sqlite_db: Database) -> None:
    owner = _user(sqlite_db)
    with sqlite_db.session() as s:
        client, secret = auth.create_client(s, owner=owner, client_name="test_client")
    assert len(secret) >= 43
    with sqlite_db.session() as s:
        assert auth.authenticate_client(s, client_id=client.id, secret="wrong") is None
        assert auth.authenticate_client(s, client_id="nope", secret=secret) is None
        found = auth.authenticate_client(s, client_id=client.id, secret=secret)
        assert found is not None and found.id == client.id
        assert secret not in found.secret_hash
        issued = auth.issue_token(s, principal=found, ttl_minutes=10)
    with sqlite_db.session() as s:
        principal = auth.authenticate_token(s, token=issued.token)
    assert principal is not None
    assert principal.user_id == owner.id  # a client acts as its owner
    assert principal.client_id == client.id


def test_revoking_a_client_stops_its_tokens_and_credentials_at_once(sqlite_db: Database) -> None:
    owner = _user(sqlite_db)
    with sqlite_db.session() as s:
        client, secret = auth.create_client(s, owner=owner, client_name="c1")
        issued = auth.issue_token(s, principal=client, ttl_minutes=10)
        user_token = auth.issue_token(s, principal=owner, ttl_minutes=10)
    with sqlite_db.session() as s:
        assert auth.revoke_client(s, client_id=client.id, actor="test")
    with sqlite_db.session() as s:
        assert auth.authenticate_token(s, token=issued.token) is None
        assert auth.authenticate_client(s, client_id=client.id, secret=secret) is None
        assert auth.authenticate_token(s, token=user_token.token) is not None  # owner unaffected


def test_disabling_a_user_stops_their_tokens_and_logins(sqlite_db: Database) -> None:
    user = _user(sqlite_db)
    with sqlite_db.session() as s:
        issued = auth.issue_token(s, principal=user, ttl_minutes=10)
        assert auth.authenticate_user(s, username="alice", password="correct horse") is not None
        auth.disable_user(s, username="alice", actor="test")
    with sqlite_db.session() as s:
        assert auth.authenticate_token(s, token=issued.token) is None
        assert auth.authenticate_user(s, username="alice", password="correct horse") is None


def test_create_user_validates_names_and_passwords(sqlite_db: Database) -> None:
    with sqlite_db.session() as s:
        with pytest.raises(InvalidInput, match="at least 8 characters"):
            auth.create_user(s, username="bob", password="short")
        for bad in ("", "a", "Bob", "has space", "-dash", "x" * 65):
            with pytest.raises(InvalidInput, match="username"):
                auth.create_user(s, username=bad, password="long enough")
        auth.create_user(s, username="bob", password="long enough")
        with pytest.raises(Conflict, match="exists"):
            auth.create_user(s, username="bob", password="long enough")
    with sqlite_db.session() as s:
        assert s.scalar(select(func.count()).select_from(User)) == 1


def test_no_default_credentials(sqlite_db: Database) -> None:
    with sqlite_db.session() as s:
        assert s.scalar(select(func.count()).select_from(User)) == 0
        for name, password in (("admin", "admin123"), ("admin", "admin"), ("root", "")):
            assert auth.authenticate_user(s, username=name, password=password) is None


def test_service_user_cannot_log_in_and_is_created_once(sqlite_db: Database) -> None:
    with sqlite_db.session() as s:
        first = ensure_service_user(s)
        again = ensure_service_user(s, "prefect")
        assert first.id == again.id
        assert first.is_service and not first.is_admin
        assert auth.authenticate_user(s, username="prefect", password="") is None
        assert auth.authenticate_user(s, username="prefect", password="!") is None


def test_admin_actions_are_audited(sqlite_db: Database) -> None:
    admin = _user(sqlite_db, "boss", admin=True)
    with sqlite_db.session() as s:
        auth.create_user(s, username="carol", password="long enough", actor=admin)
        client, _ = auth.create_client(s, owner=admin, client_name="c", actor=admin)
        auth.revoke_client(s, client_id=client.id, actor=admin)
        auth.disable_user(s, username="carol", actor=admin)
    with sqlite_db.session() as s:
        entries = list_audit(s)
        actions = [(e.actor, e.action, e.target) for e in reversed(entries)]
    assert ("boss", "user.create", "carol") in actions
    assert ("boss", "client.create", client.id) in actions
    assert ("boss", "client.revoke", client.id) in actions
    assert ("boss", "user.disable", "carol") in actions
    assert all(isinstance(e, AuditEntry) for e in entries)
