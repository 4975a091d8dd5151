"""Bearer tokens: random, stored as SHA-256, compared in constant time, valid until they expire or
are revoked, read without a write."""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta

import pytest
from sqlalchemy import event, select, text

from comfyfleet import auth
from comfyfleet.store import (
    Database,
    Token,
    utcnow,
)
from tests.unit.auth.test_passwords import scrypt_hash
from tests.unit.auth.users import _user


def test_secrets_are_compared_in_constant_time(
    sqlite_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[object, object]] = []
    real = hmac.compare_digest

    def spy(a: object, b: object) -> bool:
        calls.append((a, b))
        return real(a, b)  # type: ignore[arg-type]

    user = _user(sqlite_db)
    with sqlite_db.session() as s:
        issued = auth.issue_token(s, principal=user, ttl_minutes=5)
    monkeypatch.setattr(hmac, "compare_digest", spy)
    # argon2id hashes are compared inside libargon2 (constant-time); earlier scrypt ones here
    assert auth.verify_password("correct horse", scrypt_hash("correct horse"))
    assert len(calls) == 1
    with sqlite_db.session() as s:
        assert auth.authenticate_token(s, token=issued.token) is not None
    assert len(calls) == 2
    assert calls[-1] == (auth.token_digest(issued.token), auth.token_digest(issued.token))


def test_tokens_are_256_bit_random_and_stored_only_as_sha256(sqlite_db: Database) -> None:
    user = _user(sqlite_db)
    with sqlite_db.session() as s:
        issued = [auth.issue_token(s, principal=user, ttl_minutes=5) for _ in range(20)]
    raws = {t.token for t in issued}
    assert len(raws) == 20
    for raw in raws:
        assert raw.startswith(auth.BEARER_PREFIX)
        assert len(raw) - len(auth.BEARER_PREFIX) == 43  # 32 bytes, urlsafe base64
    with sqlite_db.session() as s:
        stored = set(s.scalars(select(Token.token_hash)))
        dump = " ".join(str(row) for row in s.execute(text("SELECT * FROM tokens")))
    assert stored == {hashlib.sha256(raw.encode()).hexdigest() for raw in raws}
    assert not any(raw in dump for raw in raws)


def test_token_authenticates_until_it_expires(sqlite_db: Database) -> None:
    user = _user(sqlite_db)
    with sqlite_db.session() as s:
        issued = auth.issue_token(s, principal=user, ttl_minutes=10)
    with sqlite_db.session() as s:
        principal = auth.authenticate_token(s, token=issued.token)
        assert principal is not None
        assert principal.username == "alice"
        assert principal.client is None
        assert not principal.is_admin
        later = utcnow() + timedelta(minutes=11)
        assert auth.authenticate_token(s, token=issued.token, now=later) is None
        assert auth.authenticate_token(s, token=issued.token + "x") is None
        assert auth.authenticate_token(s, token="") is None


def test_default_ttl_is_the_setting(sqlite_db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    from comfyfleet.settings import get_settings

    monkeypatch.setenv("COMFYFLEET_AUTH__TOKEN_TTL_MINUTES", "7")
    get_settings.cache_clear()
    try:
        user = _user(sqlite_db)
        with sqlite_db.session() as s:
            issued = auth.issue_token(s, principal=user)
    finally:
        get_settings.cache_clear()
    assert issued.expires_at is not None
    remaining = issued.expires_at - utcnow()
    assert timedelta(minutes=6) < remaining <= timedelta(minutes=7)


def test_revoked_token_stops_working_at_once(sqlite_db: Database) -> None:
    user = _user(sqlite_db)
    with sqlite_db.session() as s:
        keep = auth.issue_token(s, principal=user, ttl_minutes=10)
        drop = auth.issue_token(s, principal=user, ttl_minutes=10)
    with sqlite_db.session() as s:
        assert auth.revoke_token(s, token=drop.token, actor="test")
        assert not auth.revoke_token(s, token=drop.token)  # already revoked
    with sqlite_db.session() as s:
        assert auth.authenticate_token(s, token=drop.token) is None
        assert auth.authenticate_token(s, token=keep.token) is not None
        assert auth.revoke_token(s, token_id=keep.id)
    with sqlite_db.session() as s:
        assert auth.authenticate_token(s, token=keep.token) is None


def test_authenticate_token_only_reads(sqlite_db: Database) -> None:
    user = _user(sqlite_db)
    with sqlite_db.session() as s:
        issued = auth.issue_token(s, principal=user, ttl_minutes=10)
    statements: list[str] = []

    def record(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement.strip().upper())

    event.listen(sqlite_db.engine, "before_cursor_execute", record)
    try:
        with sqlite_db.session(readonly=True) as s:
            assert auth.authenticate_token(s, token=issued.token) is not None
    finally:
        event.remove(sqlite_db.engine, "before_cursor_execute", record)
    assert statements[0] == "BEGIN"  # a read-only session takes no write lock on SQLite
    assert [st.split()[0] for st in statements[1:]] == ["SELECT"]
