"""Passwords and client secrets, hashed with argon2id (argon2-cffi; OWASP's profile: 19 MiB,
2 passes, 1 lane), stored in the PHC string form `$argon2id$v=19$m=…,t=…,p=…$salt$hash` so the
cost can be raised later (`needs_rehash` then says so).

Hashes of earlier versions, `scrypt$N$r$p$salt$hash`, still verify; `needs_rehash` is true for
them, and a successful login stores a fresh argon2id hash (`comfyfleet.auth.accounts`). Hashing
costs tens of milliseconds of CPU: callers on an event loop run it with `run_hashing`."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from comfyfleet.store.errors import InvalidInput

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024

_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
_HASH_POOL = ThreadPoolExecutor(
    max_workers=min(4, max(1, (os.cpu_count() or 2) - 1)),  # a core stays for the event loop
    thread_name_prefix="comfyfleet-password",
)
T = TypeVar("T")


async def run_hashing(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run `fn` (work that hashes a password: a login, a new user) in the threads kept for
    hashing, so a burst of logins neither blocks the event loop nor fills the default executor
    that every other request's database calls wait on."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_HASH_POOL, functools.partial(fn, *args, **kwargs))


_SCRYPT_PREFIX = "scrypt$"


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str) -> str:
    """A salted argon2id hash of a password or client secret."""
    return _HASHER.hash(password)


def verify_password(password: str, encoded: str) -> bool:
    """Whether `password` matches `encoded` (argon2id, or an earlier scrypt hash; constant-time;
    False for unusable hashes)."""
    if encoded.startswith(_SCRYPT_PREFIX):
        return _verify_scrypt(password, encoded)
    try:
        return _HASHER.verify(encoded, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(encoded: str) -> bool:
    """Whether a hash that just verified should be replaced (scrypt, or weaker argon2 settings)."""
    if encoded.startswith(_SCRYPT_PREFIX):
        return True
    try:
        return _HASHER.check_needs_rehash(encoded)
    except (InvalidHashError, ValueError):
        return True


def _verify_scrypt(password: str, encoded: str) -> bool:
    try:
        _, n, r, p, salt, expected = encoded.split("$")
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
def dummy_hash() -> str:
    """A hash to verify against when there is no account: failures cost the same either way."""
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
