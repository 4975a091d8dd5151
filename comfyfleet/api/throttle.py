"""Login throttling in front of every login and token route (`comfyfleet.auth.throttle`).

An ASGI middleware, so the Gradio UI's `/login` (mounted on the same app) is covered like the
REST routes: it reads the account name from the body (JSON `username` or `client_id`, or the
form's `username`), answers 429 with `Retry-After` while the client address or the account is
over `auth.login_rate`, and counts the attempt as failed when the route answers 400 or 401.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from comfyfleet.api.errors import send_error
from comfyfleet.auth.throttle import LoginThrottle

LOGIN_PATHS = frozenset(
    {
        "/api/v2/auth/login",
        "/api/v2/auth/token",
        "/admin/auth/login",
        "/login",  # the Gradio UI's login form
    }
)
FAILED = (400, 401)
_MAX_READ = 64 * 1024
_MULTIPART_USERNAME = re.compile(rb'name="username"\r\n(?:[^\r\n]+\r\n)*\r\n([^\r\n]*)\r\n')


class ThrottleLogins:
    """See the module doc. `throttle`: the counts (shared by every login path)."""

    def __init__(self, app: ASGIApp, *, throttle: LoginThrottle) -> None:
        self.app, self.throttle = app, throttle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") != "POST"
            or scope.get("path", "").rstrip("/") not in LOGIN_PATHS
            or not self.throttle.enabled
        ):
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more and len(body) <= _MAX_READ:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        head = [{"type": "http.request", "body": body, "more_body": more}]
        address = (scope.get("client") or ("unknown", 0))[0]
        account = _account(scope, body) if not more else None
        wait = self.throttle.retry_after(address=address, account=account)
        if wait is not None:
            await _too_many(send, wait)
            return
        status: list[int] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        await self.app(scope, _replay(head, receive), watch)
        if status and status[0] in FAILED:
            self.throttle.failed(address=address, account=account)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    async def replayed() -> Message:
        if messages:
            return messages.pop(0)
        return await receive()

    return replayed


def _account(scope: Scope, body: bytes) -> str | None:
    headers = dict(scope.get("headers") or [])
    kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    try:
        if kind == b"application/json":
            data: Any = json.loads(body)
            if isinstance(data, dict):
                name = data.get("username") or data.get("client_id")
                return name if isinstance(name, str) else None
        elif kind == b"application/x-www-form-urlencoded":
            names = parse_qs(body.decode(), max_num_fields=20).get("username")
            return names[0] if names else None
        elif kind == b"multipart/form-data":  # what a browser's FormData sends
            found = _MULTIPART_USERNAME.search(body)
            return found.group(1).decode().strip() if found else None
    except (ValueError, UnicodeDecodeError):
        return None
    return None


async def _too_many(send: Send, wait: int) -> None:
    await send_error(
        send, 429, "too_many_requests", f"too many failed logins; try again in {wait} s",
        headers=[(b"retry-after", str(wait).encode())],
    )  # fmt: skip
