"""Identity: hashing, tokens, client credentials, revocation, no default credentials."""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta

import pytest
from sqlalchemy import event, func, select, text

from comfyfleet import auth
from comfyfleet.store import (
    AuditEntry,
    Conflict,
    Database,
    InvalidInput,
    Token,
    User,
    ensure_service_user,
    list_audit,
    utcnow,
)


def _user(db: Database, name: str = "alice", *, admin: bool = False) -> User:
    with db.session() as s:
        return auth.create_user(s, username=name, password="correct horse", admin=admin)


def test_password_hash_is_salted_scrypt_and_verifies() -> None:
    first = auth.hash_password("correct horse")
    second = auth.hash_password("correct horse")
    assert first.startswith("scrypt$16384$8$1$")
    assert first != second  # salted
    assert "correct horse" not in first
    assert auth.verify_password("correct horse", first)
    assert auth.verify_password("correct horse", second)
    assert not auth.verify_password("correct horsE", first)


@pytest.mark.parametrize("encoded", ["", "!", "plain", "scrypt$1$2$3", "bcrypt$a$b$c$d$e"])
def test_verify_password_rejects_malformed_and_unusable_hashes(encoded: str) -> None:
    assert not auth.verify_password("anything", encoded)


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
    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert auth.verify_password("correct horse", auth.hash_password("correct horse"))
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


def test_join_tokens_are_not_bearer_tokens(sqlite_db: Database) -> None:
    admin = _user(sqlite_db, "root-admin", admin=True)
    with sqlite_db.session() as s:
        join = auth.issue_join_token(s, created_by=admin, ttl_minutes=30, note="gpu host")
        bearer = auth.issue_token(s, principal=admin, ttl_minutes=30)
    assert join.token.startswith(auth.JOIN_PREFIX)
    with sqlite_db.session() as s:
        assert auth.authenticate_join_token(s, token=join.token) is not None
        assert auth.authenticate_token(s, token=join.token) is None
        assert auth.authenticate_join_token(s, token=bearer.token) is None
        later = utcnow() + timedelta(minutes=31)
        assert auth.authenticate_join_token(s, token=join.token, now=later) is None
        assert auth.revoke_token(s, token=join.token)
    with sqlite_db.session() as s:
        assert auth.authenticate_join_token(s, token=join.token) is None


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
