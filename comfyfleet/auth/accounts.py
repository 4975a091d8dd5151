"""Accounts: users (passwords), API clients (client credentials) and the `Principal` a request
acts as. A client acts as its owner: the principal of a client token is the owning user plus the
client, so "own jobs" are the owner's. No default credentials: an empty database has no users;
the first admin comes from `comfyfleet users create --admin --password-stdin` (or is generated
and printed once by the embedded default, with `generate_password()`)."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy.orm import Session

from comfyfleet.auth.passwords import (
    dummy_hash,
    hash_password,
    needs_rehash,
    validate_password,
    verify_password,
)
from comfyfleet.store import Database
from comfyfleet.store import users as rows
from comfyfleet.store.errors import NotFound
from comfyfleet.store.models import ApiClient, User

CLIENT_SECRET_BYTES = 32


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user, or a client acting as its owner."""

    user: User
    client: ApiClient | None = None
    token_id: int | None = None

    @property
    def user_id(self) -> int:
        return self.user.id

    @property
    def username(self) -> str:
        return self.user.username

    @property
    def is_admin(self) -> bool:
        return self.user.is_admin

    @property
    def client_id(self) -> str | None:
        return self.client.id if self.client is not None else None


# -- users ------------------------------------------------------------------------------------


def create_user(
    session: Session,
    *,
    username: str,
    password: str,
    admin: bool = False,
    actor: User | str | None = None,
) -> User:
    """A new user (`admin`: the admin role). Raises InvalidInput / Conflict with a clear message."""
    rows.validate_username(username)
    validate_password(password)
    user = rows.add_user(
        session,
        username=username,
        password_hash=hash_password(password),
        role="admin" if admin else "user",
    )
    rows.audit(
        session,
        actor=actor,
        action="user.create",
        target=username,
        detail={"role": user.role},
    )
    return user


def set_password(session: Session, *, user: User, password: str) -> None:
    validate_password(password)
    rows.set_password_hash(session, user=user, password_hash=hash_password(password))
    rows.revoke_user_tokens(session, user=user)


def authenticate_user(session: Session, *, username: str, password: str) -> User | None:
    """The user if the password is right and the account can log in, else None."""
    user = rows.get_user(session, username=username) if isinstance(username, str) else None
    if not _accepts(user, password):
        return None
    if needs_rehash(user.password_hash):  # an older hash (scrypt): store an argon2id one now
        rows.set_password_hash(session, user=user, password_hash=hash_password(password))
    return user


def _accepts(user: User | None, password: str) -> bool:
    """The password is the user's and the account can log in (the same cost whether or not
    the user exists)."""
    if user is None:
        verify_password(password, dummy_hash())
        return False
    return verify_password(password, user.password_hash) and not (user.disabled or user.is_service)


def check_login(db: Database, *, username: str, password: str) -> User | None:
    """`authenticate_user` without a transaction open while the password is hashed (a write
    transaction holds SQLite's lock): the user is read, the password checked outside the
    database, an older hash replaced in a short write. The user (detached), or None."""
    name = username if isinstance(username, str) else None
    user = db.run(lambda s: rows.get_user(s, username=name) if name else None, readonly=True)
    if not _accepts(user, password):
        return None
    if needs_rehash(user.password_hash):  # an older hash (scrypt): store an argon2id one now
        fresh = hash_password(password)
        db.run(lambda s: rows.set_password_hash(s, user=user.id, password_hash=fresh))
    return user


def disable_user(
    session: Session, *, username: str, disabled: bool = True, actor: User | str | None = None
) -> User:
    user = rows.set_user_disabled(session, username=username, disabled=disabled)
    rows.audit(
        session, actor=actor, action="user.disable" if disabled else "user.enable", target=username
    )
    return user


# -- clients ----------------------------------------------------------------------------------


def create_client(
    session: Session,
    *,
    owner: User,
    client_name: str,
    description: str = "",
    actor: User | str | None = None,
) -> tuple[ApiClient, str]:
    """A new API client of `owner` and its secret (returned once, stored hashed)."""
    secret = secrets.token_urlsafe(CLIENT_SECRET_BYTES)
    client = rows.add_client(
        session,
        client_id=uuid.uuid4().hex,
        owner=owner,
        client_name=client_name,
        description=description,
        secret_hash=hash_password(secret),
    )
    rows.audit(
        session,
        actor=actor if actor is not None else owner,
        action="client.create",
        target=client.id,
        detail={"client_name": client.client_name, "owner": owner.username},
    )
    return client, secret


def authenticate_client(session: Session, *, client_id: str, secret: str) -> ApiClient | None:
    """The client if the secret is right, it is not revoked and its owner is enabled."""
    client = rows.get_client(session, client_id=client_id) if isinstance(client_id, str) else None
    if client is None:
        verify_password(secret, dummy_hash())
        return None
    if not verify_password(secret, client.secret_hash):
        return None
    if client.revoked_at is not None or client.owner.disabled:
        return None
    if needs_rehash(client.secret_hash):
        rows.set_client_secret_hash(session, client=client, secret_hash=hash_password(secret))
    return client


def revoke_client(session: Session, *, client_id: str, actor: User | str | None = None) -> bool:
    """Revoke a client and all its tokens, effective immediately; False if unknown/revoked."""
    done = rows.mark_client_revoked(session, client_id=client_id)
    if done:
        rows.audit(session, actor=actor, action="client.revoke", target=client_id)
    return done


def require_user(session: Session, *, username: str) -> User:
    """The user `username` or NotFound (for CLI and admin routes)."""
    user = rows.get_user(session, username=username)
    if user is None:
        raise NotFound(f"no user {username!r}")
    return user
