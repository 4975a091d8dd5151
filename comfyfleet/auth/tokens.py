"""Bearer tokens: 256-bit random values (`secrets.token_urlsafe(32)`) with a prefix that says what
they are (`cfb_…` bearer, `cfj_…` join, see `comfyfleet.auth.join_tokens`). Only their SHA-256
is stored: a token is found by one indexed lookup of its digest on every request (a slow hash
there would cap the API), and the stored digest is then compared in constant time.

`authenticate_token` reads, never writes: one SELECT joining the token, its user and its client.
Expired, revoked, or belonging to a disabled user or a revoked client → None, so revoking a token
or a client (or disabling a user) takes effect on the next request."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from comfyfleet.auth.accounts import Principal
from comfyfleet.store import users as rows
from comfyfleet.store.errors import InvalidInput
from comfyfleet.store.models import ApiClient, User
from comfyfleet.store.types import utcnow

TOKEN_BYTES = 32
BEARER_PREFIX = "cfb_"
JOIN_PREFIX = "cfj_"


def new_token(kind: str = "bearer") -> str:
    """A fresh 256-bit token with its kind's prefix."""
    prefix = {"bearer": BEARER_PREFIX, "join": JOIN_PREFIX}[kind]
    return prefix + secrets.token_urlsafe(TOKEN_BYTES)


def token_digest(token: str) -> str:
    """The SHA-256 (hex) under which a token is stored."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedToken:
    """A token just issued: `token` is shown once and never stored."""

    token: str
    id: int
    kind: str
    expires_at: datetime | None


def issue_token(
    session: Session,
    *,
    principal: User | ApiClient | Principal,
    ttl_minutes: int | None = None,
    note: str = "",
) -> IssuedToken:
    """A bearer token for a user or a client (default expiry: `auth.token_ttl_minutes`)."""
    if ttl_minutes is None:
        from comfyfleet.settings import get_settings

        ttl_minutes = get_settings().auth.token_ttl_minutes
    if ttl_minutes <= 0:
        raise InvalidInput(f"ttl_minutes {ttl_minutes!r}: must be positive")
    if isinstance(principal, Principal):
        user_id, client_id = principal.user.id, principal.client_id
    elif isinstance(principal, ApiClient):
        user_id, client_id = principal.owner_id, principal.id
    else:
        user_id, client_id = principal.id, None
    raw = new_token("bearer")
    expires_at = utcnow() + timedelta(minutes=ttl_minutes)
    row = rows.add_token(
        session,
        kind="bearer",
        token_hash=token_digest(raw),
        user_id=user_id,
        client_id=client_id,
        expires_at=expires_at,
        note=note,
    )
    return IssuedToken(token=raw, id=row.id, kind="bearer", expires_at=expires_at)


def authenticate_token(
    session: Session, *, token: str, now: datetime | None = None
) -> Principal | None:
    """The principal of a valid bearer token; None when unknown, expired or revoked."""
    if not isinstance(token, str) or not token.startswith(BEARER_PREFIX) or len(token) > 200:
        return None
    digest = token_digest(token)
    found = rows.find_bearer_token(session, token_hash=digest)
    if found is None:
        return None
    row, user, client = found
    if not hmac.compare_digest(row.token_hash, digest):
        return None
    now = now or utcnow()
    if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        return None
    if user.disabled:
        return None
    if row.client_id is not None and (client is None or client.revoked_at is not None):
        return None
    return Principal(user=user, client=client, token_id=row.id)


def revoke_token(
    session: Session,
    *,
    token_id: int | None = None,
    token: str | None = None,
    actor: User | str | None = None,
) -> bool:
    """Revoke a bearer or join token by id or by its value; effective on the next request."""
    if token is not None:
        done = rows.mark_token_revoked(session, token_hash=token_digest(token))
        target = "token:" + token[:8] + "…"
    elif token_id is not None:
        done = rows.mark_token_revoked(session, token_id=token_id)
        target = f"token:{token_id}"
    else:
        raise TypeError("revoke_token needs token_id or token")
    if done:
        rows.audit(session, actor=actor, action="token.revoke", target=target)
    return done
