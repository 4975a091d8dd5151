"""A user for the identity tests."""

from __future__ import annotations

from comfyfleet import auth
from comfyfleet.store import (
    Database,
    User,
)


def _user(db: Database, name: str = "alice", *, admin: bool = False) -> User:
    with db.session() as s:
        return auth.create_user(s, username=name, password="correct horse", admin=admin)
