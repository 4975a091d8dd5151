"""Passwords: salted argon2id hashes, verified in constant time; earlier scrypt hashes verify and
ask to be replaced."""

from __future__ import annotations

import base64
import hashlib

import pytest

from comfyfleet import auth


def scrypt_hash(password: str) -> str:
    """A hash as earlier versions stored it: `scrypt$N$r$p$salt$hash` (N=2^14, r=8, p=1)."""
    salt = b"0123456789abcdef"
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    return f"scrypt$16384$8$1${b64(salt)}${b64(digest)}"


def test_password_hash_is_salted_argon2id_and_verifies() -> None:
    first = auth.hash_password("correct horse")
    second = auth.hash_password("correct horse")
    assert first.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert first != second  # salted
    assert "correct horse" not in first
    assert auth.verify_password("correct horse", first)
    assert auth.verify_password("correct horse", second)
    assert not auth.verify_password("correct horsE", first)
    assert not auth.needs_rehash(first)


def test_an_earlier_scrypt_hash_still_verifies_and_needs_a_rehash() -> None:
    old = scrypt_hash("correct horse")
    assert auth.verify_password("correct horse", old)
    assert not auth.verify_password("correct horsE", old)
    assert auth.needs_rehash(old)


@pytest.mark.parametrize(
    "encoded", ["", "!", "plain", "scrypt$1$2$3", "bcrypt$a$b$c$d$e", "$argon2id$v=19$x"]
)
def test_verify_password_rejects_malformed_and_unusable_hashes(encoded: str) -> None:
    assert not auth.verify_password("anything", encoded)
