"""The client's one websocket to a ComfyUI node, shared by everything it follows.

ComfyUI sends a prompt's messages only to the websocket session whose ``clientId`` was given in
POST /prompt, and a second socket with the same id replaces the first (and, when the old one
closes, unregisters the id altogether). So each client keeps **one** socket: :class:`SocketHub`
opens it on the first subscription, reconnects it after a drop (with backoff, for a budget),
and fans each parsed frame out to every :class:`Subscription`, with markers for "connected"
(after a reconnect: frames may have been missed) and "down for good".
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from websockets.asyncio.client import connect as _websockets_connect
from websockets.exceptions import ConnectionClosed

from comfyfleet.comfyui.errors import ComfyUIError, NodeUnavailable
from comfyfleet.comfyui.messages import Message, parse_binary, parse_text

logger = logging.getLogger(__name__)

_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 2.0
LINGER_S = 2.0
"""An idle socket stays open this long, so back-to-back prompts reuse it (a reopened socket
with the same client id can be unregistered by the old one's late cleanup on the server)."""


class WSConnection(Protocol):
    """The part of a websocket connection the hub uses (``websockets`` ClientConnection fits)."""

    async def send(self, message: str) -> None: ...

    async def recv(self) -> str | bytes: ...

    async def close(self) -> None: ...


WSConnect = Callable[[str], Awaitable[WSConnection]]


PING_INTERVAL_S = 4.0
PING_TIMEOUT_S = 8.0
"""A peer gone silently (link cut, host frozen: no FIN, no RST) is noticed within ~12 s, then the
reconnect budget applies. ComfyUI's server answers pings from its event loop, which sampling
does not block; 8 s leaves room for a loaded machine."""


async def default_ws_connect(url: str) -> WSConnection:
    """Open a real websocket (``websockets``) that pings the node (see PING_INTERVAL_S)."""
    return await _websockets_connect(
        url, open_timeout=None, ping_interval=PING_INTERVAL_S, ping_timeout=PING_TIMEOUT_S,
        close_timeout=2, max_size=2**26,
    )  # fmt: skip


def _is_closed(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionClosed | OSError | EOFError)


@dataclass(frozen=True)
class Connected:
    """The socket is open and registered; after a reconnect, frames may have been missed."""

    reconnected: bool


@dataclass(frozen=True)
class Down:
    """The socket is gone for good (or the client closed): followers raise ``error``."""

    error: ComfyUIError


class Subscription:
    """One consumer of the hub's frames (an unbounded queue)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Message | Connected | Down] = asyncio.Queue()

    def put(self, item: Message | Connected | Down) -> None:
        self._queue.put_nowait(item)

    async def get(self) -> Message | Connected | Down:
        return await self._queue.get()

    async def ready(self) -> None:
        """Wait until the socket is open and registered (the server's first frame arrived)."""
        while True:
            item = await self.get()
            if isinstance(item, Down):
                raise item.error
            if isinstance(item, Connected):
                return


class SocketHub:
    """The client's one websocket: opened on the first subscription, closed ``linger`` seconds
    after the last one ends (or at once by :meth:`close`)."""

    def __init__(
        self,
        url: str,
        connect: WSConnect,
        *,
        preview_metadata: bool,
        unavailable_after: float,
        open_timeout: float,
        linger: float = LINGER_S,
    ) -> None:
        self.url = url
        self._connect = connect
        self._preview_metadata = preview_metadata
        self._unavailable_after = unavailable_after
        self._open_timeout = open_timeout
        self._linger = linger
        self._closer: asyncio.Task[None] | None = None
        self._subs: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._connected = False
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscription]:
        sub = Subscription()
        async with self._lock:
            self._cancel_closer()
            self._subs.add(sub)
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._run(), name=f"comfyui-ws {self.url}")
            elif self._connected:
                sub.put(Connected(reconnected=False))
        try:
            yield sub
        finally:
            self._subs.discard(sub)
            if not self._subs:
                if self._linger > 0 and self._task is not None and not self._task.done():
                    self._cancel_closer()
                    self._closer = asyncio.create_task(self._close_when_idle())
                else:
                    await self._stop()

    async def close(self) -> None:
        """Close the socket; anyone still following gets a ComfyUIError."""
        self._cancel_closer()
        self._broadcast(Down(ComfyUIError("the ComfyUI client was closed")))
        self._subs.clear()
        await self._stop()

    @property
    def is_open(self) -> bool:
        return self._task is not None and not self._task.done()

    def _cancel_closer(self) -> None:
        if self._closer is not None:
            self._closer.cancel()
            self._closer = None

    async def _close_when_idle(self) -> None:
        await asyncio.sleep(self._linger)
        await self._stop()

    async def _stop(self) -> None:
        async with self._lock:
            if self._subs or self._task is None:
                return
            task, self._task = self._task, None
            task.cancel()
            await asyncio.wait([task])

    def _broadcast(self, item: Message | Connected | Down) -> None:
        for sub in list(self._subs):
            sub.put(item)

    async def _run(self) -> None:
        reconnect = False
        try:
            while True:
                conn = await self._open(reconnect)
                try:
                    await self._pump(conn, reconnect)
                finally:
                    self._connected = False
                    await _close_quietly(conn)
                reconnect = True
                logger.warning("websocket %s dropped; reconnecting", self.url)
        except ComfyUIError as exc:
            self._broadcast(Down(exc))
        except Exception as exc:  # a bug must not leave subscribers waiting forever
            logger.exception("websocket %s reader failed", self.url)
            self._broadcast(Down(NodeUnavailable(f"websocket reader failed: {exc!r}")))

    async def _open(self, reconnect: bool) -> WSConnection:
        """Connect; the first time fail at once, after a drop keep trying for the budget."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self._unavailable_after if reconnect else 0.0)
        delay = _BACKOFF_FIRST
        started = loop.time()
        while True:
            timeout = self._open_timeout
            if reconnect:
                timeout = max(0.1, min(timeout, deadline - loop.time()))
            try:
                async with asyncio.timeout(timeout):
                    conn = await self._connect(self.url)
            except Exception as exc:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    waited = loop.time() - started
                    what = f"reconnect for {waited:.1f}s" if reconnect else "connect"
                    raise NodeUnavailable(
                        f"websocket {self.url}: could not {what}: {type(exc).__name__}: {exc}",
                        url=self.url,
                    ) from exc
                # the last try lands on the deadline
                await asyncio.sleep(min(delay * random.uniform(0.8, 1.2), remaining))
                delay = min(delay * 2, _BACKOFF_MAX)
            else:
                if reconnect:
                    logger.info("websocket %s back after %.2fs", self.url, loop.time() - started)
                return conn

    async def _pump(self, conn: WSConnection, reconnect: bool) -> None:
        """Read frames until the socket closes (then return, to reconnect)."""
        try:
            if self._preview_metadata:
                flags = {"type": "feature_flags", "data": {"supports_preview_metadata": True}}
                await conn.send(json.dumps(flags))
            first: str | bytes | None = None
            try:
                async with asyncio.timeout(self._open_timeout):
                    first = await conn.recv()
            except TimeoutError:
                logger.debug("websocket %s: no greeting within %ss", self.url, self._open_timeout)
            self._connected = True
            self._broadcast(Connected(reconnected=reconnect))
            while True:
                raw = first if first is not None else await conn.recv()
                first = None
                self._dispatch(raw)
        except Exception as exc:
            if _is_closed(exc):
                return
            raise

    def _dispatch(self, raw: str | bytes) -> None:
        try:
            message = parse_binary(raw) if isinstance(raw, bytes) else parse_text(raw)
        except ValueError as exc:
            logger.warning("websocket %s: unreadable frame skipped (%s)", self.url, exc)
            return
        self._broadcast(message)


async def _close_quietly(conn: WSConnection) -> None:
    try:
        await conn.close()
    except Exception as exc:
        logger.debug("closing websocket failed: %r", exc)
