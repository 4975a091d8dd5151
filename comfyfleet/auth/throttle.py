"""Login throttling: failed attempts counted per client address and per account name.

`LoginThrottle(rate)` takes `auth.login_rate`, in the `limits` library's notation
(`10/minute`, or several: `10/minute;100/hour`); each limit applies to each address and to each
account name on its own, in a moving window. A login is refused (HTTP 429 with Retry-After)
while either key is over a limit, before its password is hashed; only failed attempts count, so
a user who logs in correctly is never held back by it. An empty rate (or `off`) disables it.

The counts live in this process's memory (one web process serves the gateway and the UI).
"""

from __future__ import annotations

import math
import time

from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from comfyfleet.settings import parse_rate


class LoginThrottle:
    """Failed logins per address and per account (see the module doc)."""

    def __init__(self, rate: str | None) -> None:
        self.limits = parse_rate(rate or "")
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    @property
    def enabled(self) -> bool:
        return bool(self.limits)

    @staticmethod
    def _keys(address: str | None, account: str | None) -> list[tuple[str, str]]:
        keys = [("address", address or "unknown")]
        if account:
            keys.append(("account", account.strip().lower()[:256]))
        return keys

    def retry_after(self, *, address: str | None, account: str | None) -> int | None:
        """Seconds until an attempt may be made, or None when it may be made now."""
        blocked = [
            (item, key)
            for key in self._keys(address, account)
            for item in self.limits
            if not self._limiter.test(item, *key)
        ]
        if not blocked:
            return None
        now = time.time()
        wait = max(self._limiter.get_window_stats(i, *k).reset_time - now for i, k in blocked)
        return max(1, math.ceil(wait))

    def failed(self, *, address: str | None, account: str | None) -> None:
        """Count a failed attempt against the address and the account."""
        for key in self._keys(address, account):
            for item in self.limits:
                self._limiter.hit(item, *key)
