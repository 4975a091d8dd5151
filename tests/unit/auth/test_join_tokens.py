"""Join tokens are not bearer tokens; they expire and are revoked."""

from __future__ import annotations

from datetime import timedelta

from comfyfleet import auth
from comfyfleet.store import (
    Database,
    utcnow,
)
from tests.unit.auth.users import _user


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
