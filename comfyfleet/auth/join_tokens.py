"""Join tokens (`cfj_…`): they let a GPU host add its ComfyUI as a node (`comfyfleet node join`),
and nothing else. Issued by an admin, shown once, stored as SHA-256 like a bearer token, expiring,
revocable; revoking one stops new joins only (nodes that joined stay).

`join_token_state` is the one place that says whether a join token is active, expired or
revoked; `check_join_token` refuses a token with the reason, for the join endpoint."""

from __future__ import annotations

import hmac
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy.orm import Session

from comfyfleet.auth.tokens import (
    BEARER_PREFIX,
    JOIN_PREFIX,
    IssuedToken,
    new_token,
    revoke_token,
    token_digest,
)
from comfyfleet.store import users as rows
from comfyfleet.store.errors import Conflict, InvalidInput, NotFound
from comfyfleet.store.models import Token, User
from comfyfleet.store.types import utcnow

DEFAULT_JOIN_TTL_MINUTES = 60

JoinTokenState = Literal["active", "expired", "revoked"]


class JoinRefused(Exception):
    """The join token does not allow joining; the message says why (401)."""


def issue_join_token(
    session: Session,
    *,
    created_by: User | None = None,
    ttl_minutes: int = DEFAULT_JOIN_TTL_MINUTES,
    note: str = "",
    single_use: bool = False,
    actor: User | str | None = None,
) -> IssuedToken:
    """A join token (lets a GPU host add itself as a node) until it expires or is revoked;
    `single_use`: only until the first join (`use_join_token`)."""
    if ttl_minutes <= 0:
        raise InvalidInput(f"ttl_minutes {ttl_minutes!r}: must be positive")
    raw = new_token("join")
    expires_at = utcnow() + timedelta(minutes=ttl_minutes)
    row = rows.add_token(
        session,
        kind="join",
        token_hash=token_digest(raw),
        user_id=created_by.id if created_by is not None else None,
        expires_at=expires_at,
        note=note,
        single_use=single_use,
    )
    rows.audit(
        session,
        actor=actor if actor is not None else created_by,
        action="token.create_join",
        target=f"token:{row.id}",
        detail={"note": note, "expires_at": expires_at.isoformat(), "single_use": single_use},
    )
    return IssuedToken(token=raw, id=row.id, kind="join", expires_at=expires_at)


def join_token_state(token: Token, *, now: datetime | None = None) -> JoinTokenState:
    """Whether a join token still lets hosts join: revoked, expired, or active."""
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= (now or utcnow()):
        return "expired"
    return "active"


def _find(session: Session, token: str) -> Token | None:
    """The join token's row (found by its digest, compared in constant time), or None."""
    digest = token_digest(token)
    row = rows.find_token(session, token_hash=digest)
    if row is None or row.kind != "join" or not hmac.compare_digest(row.token_hash, digest):
        return None
    return row


def check_join_token(session: Session, *, token: str | None, now: datetime | None = None) -> Token:
    """The row of an active join token, or JoinRefused saying what is wrong with it."""
    if not token:
        raise JoinRefused(
            "a join token is required (Authorization: Bearer cfj_…); "
            "an admin creates one with `comfyfleet tokens create-join`"
        )
    if token.startswith(BEARER_PREFIX):
        raise JoinRefused("that is a bearer token, not a join token (join tokens start with cfj_)")
    if not token.startswith(JOIN_PREFIX) or len(token) > 200:
        raise JoinRefused("not a join token (join tokens start with cfj_)")
    row = _find(session, token)
    if row is None:
        raise JoinRefused("unknown join token: ask an admin for a new one")
    state = join_token_state(row, now=now)
    if state == "revoked" and row.single_use:
        raise JoinRefused(
            f"join token {row.id} is single-use and was used (or revoked) at {_at(row.revoked_at)}"
        )
    if state == "revoked":
        raise JoinRefused(f"join token {row.id} was revoked at {_at(row.revoked_at)}")
    if state == "expired":
        raise JoinRefused(f"join token {row.id} expired at {_at(row.expires_at)}")
    return row


def use_join_token(session: Session, *, token: Token, node: str) -> None:
    """A join is going through with `token`: a single-use token is used up now (JoinRefused when
    another join used it first)."""
    if not token.single_use:
        return
    if not rows.use_up_token(session, token_id=token.id):
        raise JoinRefused(f"join token {token.id} is single-use and another join used it")
    rows.audit(session, actor=f"node:{node}", action="token.use_join", target=f"token:{token.id}")


def authenticate_join_token(
    session: Session, *, token: str, now: datetime | None = None
) -> Token | None:
    """The join token's row if it is active (not expired, not revoked), else None."""
    try:
        return check_join_token(session, token=token, now=now)
    except JoinRefused:
        return None


def revoke_join_token(session: Session, *, token_id: int, actor: Any = None) -> None:
    """Revoke a join token (NotFound / Conflict when unknown / revoked already). Nodes that
    joined with it stay; no new one can join with it."""
    row = rows.get_token(session, token_id=token_id)
    if row is None or row.kind != "join":
        raise NotFound(f"no join token {token_id}")
    if row.revoked_at is not None:
        raise Conflict(f"join token {token_id} is revoked already")
    revoke_token(session, token_id=token_id, actor=actor)


def _at(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "?"
