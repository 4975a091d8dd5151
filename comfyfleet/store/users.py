"""Rows of identity: users, API clients, tokens, and the audit log.

These functions store what `comfyfleet.auth` has already hashed; they never see a raw password,
secret or token. Validation of names lives here (one rule for every caller); hashing, token
generation and authentication live in `comfyfleet.auth`.
"""

from __future__ import annotations

import getpass
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from comfyfleet.store.errors import Conflict, InvalidInput, NotFound
from comfyfleet.store.models import ApiClient, AuditEntry, Token, User
from comfyfleet.store.types import utcnow

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.@-]{1,63}$")
ROLES = ("admin", "user", "service")
UNUSABLE_PASSWORD = "!"
"""The password hash of accounts that cannot log in (service users): no hash verifies it."""
SERVICE_USER = "prefect"
"""The service user that owns jobs started directly from Prefect (`<flow>/<node>` runs)."""

_UNSET: Any = object()


def validate_username(username: str) -> str:
    if not isinstance(username, str) or not USERNAME_RE.fullmatch(username):
        raise InvalidInput(
            f"username {username!r}: use 2-64 characters, lowercase letters, digits and "
            "'_', '.', '@', '-', starting with a letter or digit"
        )
    return username


def _user_id(user: User | int) -> int:
    return user if isinstance(user, int) else user.id


def add_user(session: Session, *, username: str, password_hash: str, role: str = "user") -> User:
    """A new user row; `Conflict` if the name is taken."""
    validate_username(username)
    if role not in ROLES:
        raise InvalidInput(f"role {role!r}: expected one of {', '.join(ROLES)}")
    if get_user(session, username=username) is not None:
        raise Conflict(f"user {username!r} exists already")
    user = User(username=username, password_hash=password_hash, role=role, disabled=False)
    try:
        with session.begin_nested():
            session.add(user)
    except IntegrityError:
        raise Conflict(f"user {username!r} exists already") from None
    return user


def get_user(
    session: Session, *, user_id: int | None = None, username: str | None = None
) -> User | None:
    if user_id is not None:
        return session.get(User, user_id)
    if username is not None:
        return session.scalars(select(User).where(User.username == username)).one_or_none()
    raise TypeError("get_user needs user_id or username")


def require_user(session: Session, *, username: str) -> User:
    user = get_user(session, username=username)
    if user is None:
        raise NotFound(f"no user {username!r}")
    return user


def list_users(session: Session, *, include_service: bool = True) -> list[User]:
    stmt = select(User).order_by(User.username)
    if not include_service:
        stmt = stmt.where(User.role != "service")
    return list(session.scalars(stmt))


def set_user_disabled(session: Session, *, username: str, disabled: bool = True) -> User:
    """Disable (or enable) a user: their tokens and clients stop working at once."""
    user = require_user(session, username=username)
    user.disabled = disabled
    session.flush()
    return user


def set_password_hash(session: Session, *, user: User | int, password_hash: str) -> None:
    session.execute(
        update(User).where(User.id == _user_id(user)).values(password_hash=password_hash)
    )


def use_up_token(session: Session, *, token_id: int) -> bool:
    """Revoke a single-use token as it is used; False when it was used (or revoked) already.
    One UPDATE, so of two joins racing with the token only one gets it."""
    result = session.execute(
        update(Token)
        .where(Token.id == token_id, Token.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return result.rowcount == 1


def set_client_secret_hash(session: Session, *, client: ApiClient, secret_hash: str) -> None:
    session.execute(
        update(ApiClient).where(ApiClient.id == client.id).values(secret_hash=secret_hash)
    )


def set_quotas(
    session: Session,
    *,
    target: User | ApiClient,
    max_running: int | None = _UNSET,
    max_queued: int | None = _UNSET,
    daily_gpu_seconds: float | None = _UNSET,
) -> None:
    """Set (a number) or clear (None) quotas of a user or client; omitted ones are unchanged."""
    for name, value in (
        ("max_running", max_running),
        ("max_queued", max_queued),
        ("daily_gpu_seconds", daily_gpu_seconds),
    ):
        if value is _UNSET:
            continue
        if value is not None and value < 0:
            raise InvalidInput(f"{name} {value!r}: must be 0 or more (or none)")
        setattr(target, name, value)
    session.flush()


def set_raw_graphs(session: Session, *, target: User, allowed: bool) -> None:
    """Grant or withdraw the user's permission to submit raw ComfyUI graphs."""
    target.raw_graphs = allowed
    session.flush()


def ensure_service_user(session: Session, name: str = SERVICE_USER) -> User:
    """The service user `name` (created on first use; it cannot log in). Safe under races."""
    user = get_user(session, username=name)
    if user is not None:
        return user
    user = User(username=validate_username(name), password_hash=UNUSABLE_PASSWORD, role="service")
    try:
        with session.begin_nested():
            session.add(user)
    except IntegrityError:
        user = get_user(session, username=name)
        assert user is not None
    return user


# -- API clients ------------------------------------------------------------------------------


def add_client(
    session: Session,
    *,
    client_id: str,
    owner: User | int,
    client_name: str,
    description: str = "",
    secret_hash: str,
) -> ApiClient:
    client_name = (client_name or "").strip()
    if not client_name or len(client_name) > 128:
        raise InvalidInput("client_name: give 1-128 characters")
    if len(description or "") > 1000:
        raise InvalidInput("description: at most 1000 characters")
    client = ApiClient(
        id=client_id,
        client_name=client_name,
        description=description or "",
        owner_id=_user_id(owner),
        secret_hash=secret_hash,
    )
    session.add(client)
    session.flush()
    return client


def get_client(session: Session, *, client_id: str) -> ApiClient | None:
    return session.get(ApiClient, client_id)


def list_clients(
    session: Session, *, owner: User | int | None = None, include_revoked: bool = False
) -> list[ApiClient]:
    stmt = select(ApiClient).order_by(ApiClient.created_at)
    if owner is not None:
        stmt = stmt.where(ApiClient.owner_id == _user_id(owner))
    if not include_revoked:
        stmt = stmt.where(ApiClient.revoked_at.is_(None))
    return list(session.scalars(stmt))


def mark_client_revoked(session: Session, *, client_id: str, now: datetime | None = None) -> bool:
    """Revoke a client and its tokens; False if it was unknown or already revoked."""
    now = now or utcnow()
    result = session.execute(
        update(ApiClient)
        .where(ApiClient.id == client_id, ApiClient.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    if result.rowcount != 1:
        return False
    session.execute(
        update(Token)
        .where(Token.client_id == client_id, Token.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return True


# -- tokens -----------------------------------------------------------------------------------


def add_token(
    session: Session,
    *,
    kind: str,
    token_hash: str,
    user_id: int | None,
    client_id: str | None = None,
    expires_at: datetime | None,
    note: str = "",
    single_use: bool = False,
) -> Token:
    token = Token(
        kind=kind,
        token_hash=token_hash,
        user_id=user_id,
        client_id=client_id,
        expires_at=expires_at,
        note=note[:255],
        single_use=single_use,
    )
    session.add(token)
    session.flush()
    return token


def get_token(session: Session, *, token_id: int) -> Token | None:
    return session.get(Token, token_id)


def find_token(session: Session, *, token_hash: str) -> Token | None:
    return session.scalars(select(Token).where(Token.token_hash == token_hash)).one_or_none()


def find_bearer_token(
    session: Session, *, token_hash: str
) -> tuple[Token, User, ApiClient | None] | None:
    """The bearer token with this digest, its user and its client (None for a user's own
    token), in one SELECT; None when there is no such token."""
    client = aliased(ApiClient)
    found = session.execute(
        select(Token, User, client)
        .join(User, User.id == Token.user_id)
        .outerjoin(client, client.id == Token.client_id)
        .where(Token.token_hash == token_hash, Token.kind == "bearer")
    ).one_or_none()
    return None if found is None else (found[0], found[1], found[2])


def list_tokens(
    session: Session,
    *,
    kind: str | None = None,
    user: User | int | None = None,
    include_revoked: bool = False,
) -> list[Token]:
    stmt = select(Token).order_by(Token.id)
    if kind is not None:
        stmt = stmt.where(Token.kind == kind)
    if user is not None:
        stmt = stmt.where(Token.user_id == _user_id(user))
    if not include_revoked:
        stmt = stmt.where(Token.revoked_at.is_(None))
    return list(session.scalars(stmt))


def mark_token_revoked(
    session: Session,
    *,
    token_id: int | None = None,
    token_hash: str | None = None,
    now: datetime | None = None,
) -> bool:
    """Revoke one token (by id or by hash); False if unknown or already revoked."""
    if (token_id is None) == (token_hash is None):
        raise TypeError("give exactly one of token_id, token_hash")
    where = Token.id == token_id if token_id is not None else Token.token_hash == token_hash
    result = session.execute(
        update(Token).where(where, Token.revoked_at.is_(None)).values(revoked_at=now or utcnow())
    )
    return result.rowcount == 1


def revoke_user_tokens(session: Session, *, user: User | int, now: datetime | None = None) -> int:
    """Revoke every bearer token of a user (not their clients' tokens); how many."""
    result = session.execute(
        update(Token)
        .where(
            Token.user_id == _user_id(user),
            Token.client_id.is_(None),
            Token.kind == "bearer",
            Token.revoked_at.is_(None),
        )
        .values(revoked_at=now or utcnow())
    )
    return result.rowcount


# -- audit ------------------------------------------------------------------------------------


def audit(
    session: Session,
    *,
    actor: User | str | None,
    action: str,
    target: str = "",
    detail: dict[str, Any] | None = None,
) -> AuditEntry:
    """Record an admin action. `actor`: the user, or a label such as `cli` (None: the OS user)."""
    if isinstance(actor, User):
        actor_id, actor_name = actor.id, actor.username
    else:
        actor_id, actor_name = None, actor or f"cli:{_os_user()}"
    entry = AuditEntry(
        actor_id=actor_id, actor=actor_name[:64], action=action, target=target[:255], detail=detail
    )
    session.add(entry)
    session.flush()
    return entry


def list_audit(
    session: Session, *, limit: int = 100, offset: int = 0, actions: Sequence[str] | None = None
) -> list[AuditEntry]:
    stmt = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit).offset(offset)
    if actions:
        stmt = stmt.where(AuditEntry.action.in_(list(actions)))
    return list(session.scalars(stmt))


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment
        return "unknown"
