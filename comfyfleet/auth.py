"""Identity: passwords, client credentials, bearer tokens and join tokens.

- Passwords and client secrets are hashed with scrypt (stdlib `hashlib.scrypt`, N=2^14, r=8,
  p=1, 16-byte random salt), stored as `scrypt$N$r$p$salt$hash` so the cost can be raised later
  without breaking old hashes. Verification recomputes and compares with `hmac.compare_digest`.
- Bearer and join tokens are 256-bit random values (`secrets.token_urlsafe(32)`) with a prefix
  that says what they are (`cfb_…` bearer, `cfj_…` join). Only their SHA-256 is stored: a token
  is found by one indexed lookup of its digest on every request (a slow hash there would cap
  the API), and the stored digest is then compared in constant time.
- `authenticate_token` reads, never writes: one SELECT joining the token, its user and its
  client. Expired, revoked, or belonging to a disabled user or a revoked client → None, so
  revoking a token or a client (or disabling a user) takes effect on the next request.
- A client acts as its owner: the principal of a client token is the owning user plus the
  client, so "own jobs" are the owner's.
- No default credentials: an empty database has no users; the first admin comes from
  `comfyfleet users create --admin --password-stdin` (or is generated and printed once by the
  embedded default, with `generate_password()`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

from sqlalchemy import and_, select
from sqlalchemy.orm import Session, aliased

from comfyfleet.store import users as rows
from comfyfleet.store.errors import InvalidInput, NotFound
from comfyfleet.store.models import ApiClient, Token, User
from comfyfleet.store.types import utcnow

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
TOKEN_BYTES = 32
BEARER_PREFIX = "cfb_"
JOIN_PREFIX = "cfj_"
DEFAULT_JOIN_TTL_MINUTES = 60

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P, _SCRYPT_LEN = 2**14, 8, 1, 32


# -- hashing ----------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str) -> str:
    """A salted scrypt hash of a password or client secret."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=_SCRYPT_LEN
    )
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether `password` matches `encoded` (constant-time; False for unusable hashes)."""
    try:
        scheme, n, r, p, salt, expected = encoded.split("$")
        if scheme != "scrypt":
            return False
        digest = hashlib.scrypt(
            password.encode(),
            salt=_unb64(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(_unb64(expected)),
            maxmem=256 * 1024 * 1024,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, _unb64(expected))


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


def validate_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"password: at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidInput(f"password: at most {MAX_PASSWORD_LENGTH} characters")
    return password


def generate_password() -> str:
    """A random password for a generated account (printed once, never stored in clear)."""
    return secrets.token_urlsafe(18)


def new_token(kind: str = "bearer") -> str:
    """A fresh 256-bit token with its kind's prefix."""
    prefix = {"bearer": BEARER_PREFIX, "join": JOIN_PREFIX}[kind]
    return prefix + secrets.token_urlsafe(TOKEN_BYTES)


def token_digest(token: str) -> str:
    """The SHA-256 (hex) under which a token is stored."""
    return hashlib.sha256(token.encode()).hexdigest()


# -- principals -------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class IssuedToken:
    """A token just issued: `token` is shown once and never stored."""

    token: str
    id: int
    kind: str
    expires_at: datetime | None


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
    if user is None:
        verify_password(password, _dummy_hash())  # same cost whether or not the user exists
        return None
    if not verify_password(password, user.password_hash) or user.disabled or user.is_service:
        return None
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
    secret = secrets.token_urlsafe(TOKEN_BYTES)
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
        verify_password(secret, _dummy_hash())
        return None
    if not verify_password(secret, client.secret_hash):
        return None
    if client.revoked_at is not None or client.owner.disabled:
        return None
    return client


def revoke_client(session: Session, *, client_id: str, actor: User | str | None = None) -> bool:
    """Revoke a client and all its tokens, effective immediately; False if unknown/revoked."""
    done = rows.mark_client_revoked(session, client_id=client_id)
    if done:
        rows.audit(session, actor=actor, action="client.revoke", target=client_id)
    return done


# -- tokens -----------------------------------------------------------------------------------


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
    client_alias = aliased(ApiClient)
    found = session.execute(
        select(Token, User, client_alias)
        .join(User, User.id == Token.user_id)
        .outerjoin(client_alias, and_(client_alias.id == Token.client_id))
        .where(Token.token_hash == digest, Token.kind == "bearer")
    ).one_or_none()
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


def issue_join_token(
    session: Session,
    *,
    created_by: User | None = None,
    ttl_minutes: int = DEFAULT_JOIN_TTL_MINUTES,
    note: str = "",
    actor: User | str | None = None,
) -> IssuedToken:
    """A join token (lets a GPU host add itself as a node) until it expires or is revoked."""
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
    )
    rows.audit(
        session,
        actor=actor if actor is not None else created_by,
        action="token.create_join",
        target=f"token:{row.id}",
        detail={"note": note, "expires_at": expires_at.isoformat()},
    )
    return IssuedToken(token=raw, id=row.id, kind="join", expires_at=expires_at)


def authenticate_join_token(
    session: Session, *, token: str, now: datetime | None = None
) -> Token | None:
    """The join token's row if it is valid (not expired, not revoked), else None."""
    if not isinstance(token, str) or not token.startswith(JOIN_PREFIX) or len(token) > 200:
        return None
    digest = token_digest(token)
    row = rows.find_token(session, token_hash=digest)
    if row is None or row.kind != "join" or not hmac.compare_digest(row.token_hash, digest):
        return None
    now = now or utcnow()
    if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        return None
    return row


def require_user(session: Session, *, username: str) -> User:
    """The user `username` or NotFound (for CLI and admin routes)."""
    user = rows.get_user(session, username=username)
    if user is None:
        raise NotFound(f"no user {username!r}")
    return user
