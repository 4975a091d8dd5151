"""Errors of the store: small, user-facing messages (the gateway maps them to HTTP statuses)."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of the store's errors."""


class InvalidInput(StoreError, ValueError):
    """A value the store refuses (bad username, short password, unknown priority…): 422."""


class NotFound(StoreError, LookupError):
    """No such user, client, job or attempt: 404."""


class Conflict(StoreError):
    """The name is taken, or the object is not in a state that allows this change: 409."""


class QuotaExceeded(StoreError):
    """A user's or client's quota refuses new work: 429, with a message saying which and why."""

    def __init__(self, message: str, *, kind: str, limit: float, current: float, scope: str):
        super().__init__(message)
        self.kind = kind
        """`max_queued` or `daily_gpu_seconds`."""
        self.limit = limit
        self.current = current
        self.scope = scope
        """`user <name>` or `client <id>`."""
