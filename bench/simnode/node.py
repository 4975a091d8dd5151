"""One simulated ComfyUI node: its queue, history, cache, files and websocket sessions.

It behaves as ComfyUI 0.3.75's `PromptServer` + `PromptQueue` + prompt worker do: a priority
queue (`number`, `front`), one prompt executing at a time, `status` broadcast on every queue
change, job messages only to the session named by the prompt's `client_id`, history written when
a prompt ends (bounded), `/interrupt` noticed at the next check inside the running node, pending
prompts deleted or cleared. Messages leave through one outbox per node, in order, as ComfyUI's
`send_sync` + publish loop do. Nothing runs while a node is idle: the worker and the publisher
are tasks started on demand that end when their queue is empty.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bench.simnode.catalog import Catalog
from bench.simnode.executor import Outcome, execute, now_ms
from bench.simnode.files import FileStore
from bench.simnode.validate import error, validate_prompt
from comfyfleet.local.node import TINY_CHECKPOINTS

logger = logging.getLogger(__name__)

SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
FEATURES = {"supports_preview_metadata": True, "max_upload_size": 104857600}
"""The server's `feature_flags` (also `GET /features`)."""

QueueItem = tuple[Any, ...]
"""``(number, prompt_id, prompt, extra_data, outputs_to_execute, sensitive)``."""


def _default_models() -> dict[str, list[str]]:
    return {"checkpoints": list(TINY_CHECKPOINTS)}


@dataclass(frozen=True)
class SimNodeConfig:
    """How one simulated node behaves.

    ``seconds``: the work of one job whose graph has no test delay node, spread over its sampler
    steps (or its output nodes when it has no sampler); a test delay node sleeps its own
    ``seconds`` input instead. ``speed`` divides both (2.0 = twice as fast, like
    `LocalComfyUI(speed=)`). ``models``: folder → files (`/models/{folder}` and the checkpoint
    choices of the loaders). ``previews``: binary preview frames per sampler step (the local
    nodes run with `--preview-method latent2rgb`). ``max_history``: entries kept (ComfyUI: 10 000).
    """

    seconds: float = 1.0
    speed: float = 1.0
    models: Mapping[str, Sequence[str]] = field(default_factory=_default_models)
    previews: bool = True
    max_history: int = 10000

    def __post_init__(self) -> None:
        if self.speed <= 0 or self.seconds < 0:
            raise ValueError(f"need speed > 0 and seconds >= 0, got {self.speed}, {self.seconds}")


class Socket(Protocol):
    """The part of a websocket a node sends on (Starlette's `WebSocket` fits)."""

    async def send_text(self, data: str) -> None: ...

    async def send_bytes(self, data: bytes) -> None: ...


@dataclass(eq=False)
class Session:
    """One websocket session (`clientId`) and the feature flags its client announced."""

    socket: Socket
    feature_flags: dict[str, Any] = field(default_factory=dict)

    async def send(self, frame: str | bytes) -> None:
        try:
            if isinstance(frame, bytes):
                await self.socket.send_bytes(frame)
            else:
                await self.socket.send_text(frame)
        except Exception as exc:  # a client gone mid-send; ComfyUI swallows these too
            logger.debug("websocket send failed: %s", exc)


class SimNode:
    """The state and behaviour of one node; the HTTP and websocket layer is `app.py`."""

    def __init__(self, config: SimNodeConfig, url: str) -> None:
        self.config = config
        self.url = url
        self.files = FileStore()
        self.catalog = Catalog(config.models, self.files.input_images)
        self.queue: list[QueueItem] = []
        self.running: dict[int, QueueItem] = {}
        self.history: dict[str, dict[str, Any]] = {}
        self.cache: dict[str, dict[str, Any] | None] = {}
        self.sessions: dict[str, Session] = {}
        self.number = 0
        self.task_counter = 0
        self.interrupted = False
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self._checks = {"LoadImage": {"image": self._image_exists}}
        self._outbox: deque[tuple[str | None, Any, str | None]] = deque()
        self._publisher: asyncio.Task[None] | None = None
        self._worker: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"SimNode({self.url!r}, queue={len(self.queue)}, running={len(self.running)})"

    def _image_exists(self, value: Any) -> bool | str:
        return True if self.files.exists(str(value)) else f"Invalid image file: {value}"

    # -- queue ---------------------------------------------------------------------------------

    def exec_info(self) -> dict[str, Any]:
        """`{"exec_info": {"queue_remaining": N}}` (running + pending)."""
        return {"exec_info": {"queue_remaining": len(self.queue) + len(self.running)}}

    def queue_updated(self) -> None:
        self.send("status", {"status": self.exec_info()})

    def queue_view(self) -> dict[str, list[list[Any]]]:
        """`GET /queue`: items as `[number, id, prompt, extra_data, outputs]`, pending in heap
        order (not sorted), as ComfyUI shows them."""
        return {
            "queue_running": [list(item[:5]) for item in self.running.values()],
            "queue_pending": [list(item[:5]) for item in self.queue],
        }

    def submit(self, body: Any) -> tuple[int, dict[str, Any]]:
        """`POST /prompt`: (status code, JSON answer)."""
        if "number" in body:
            number = float(body["number"])
        else:
            number = -self.number if body.get("front") else self.number
            self.number += 1
        if "prompt" not in body:
            failure = error("no_prompt", "No prompt provided", "No prompt provided")
            return 400, {"error": failure, "node_errors": {}}
        prompt = body["prompt"]
        prompt_id = str(body.get("prompt_id", uuid.uuid4()))
        valid = validate_prompt(
            prompt,
            self.catalog.get,
            checks=self._checks,
            partial_targets=body.get("partial_execution_targets"),
        )
        extra_data = body.get("extra_data", {})
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        if not valid.ok:
            return 400, {"error": valid.error, "node_errors": valid.node_errors}
        sensitive = {k: extra_data.pop(k) for k in SENSITIVE_EXTRA_DATA_KEYS if k in extra_data}
        extra_data["create_time"] = now_ms()
        heapq.heappush(
            self.queue, (number, prompt_id, prompt, extra_data, valid.outputs, sensitive)
        )
        self.queue_updated()
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work())
        return 200, {"prompt_id": prompt_id, "number": number, "node_errors": valid.node_errors}

    def delete_pending(self, prompt_ids: Sequence[Any]) -> None:
        """`POST /queue {"delete": [...]}`: the first pending item of each id; running prompts
        and unknown ids are left alone."""
        for prompt_id in prompt_ids:
            for index, item in enumerate(self.queue):
                if item[1] == prompt_id:
                    if len(self.queue) == 1:
                        self.clear_pending()
                    else:
                        self.queue.pop(index)
                        heapq.heapify(self.queue)
                    self.queue_updated()
                    break

    def clear_pending(self) -> None:
        """`POST /queue {"clear": true}`: drop every pending item."""
        self.queue = []
        self.queue_updated()

    def interrupt(self, prompt_id: str | None = None) -> None:
        """`POST /interrupt`: all running work, or only ``prompt_id`` if it is the running one."""
        if not prompt_id or any(item[1] == prompt_id for item in self.running.values()):
            self.interrupted = True

    async def _work(self) -> None:
        """ComfyUI's prompt worker, for as long as there is something to run."""
        try:
            while self.queue:
                item = heapq.heappop(self.queue)
                item_id = self.task_counter
                self.running[item_id] = item
                self.task_counter += 1
                self.queue_updated()
                try:
                    outcome = await execute(self, item)
                except Exception:
                    logger.exception("simulated node %s failed on prompt %s", self.url, item[1])
                    outcome = Outcome(success=False, messages=[], outputs={}, meta={})
                self._task_done(item_id, outcome)
                if self.client_id is not None:
                    self.send("executing", {"node": None, "prompt_id": item[1]}, self.client_id)
        finally:
            self._worker = None

    def _task_done(self, item_id: int, outcome: Outcome) -> None:
        item = self.running.pop(item_id)
        if len(self.history) > self.config.max_history:
            self.history.pop(next(iter(self.history)))
        self.history[item[1]] = {
            "prompt": list(item[:5]),
            "outputs": outcome.outputs,
            "status": {
                "status_str": "success" if outcome.success else "error",
                "completed": outcome.success,
                "messages": [[event, data] for event, data in outcome.messages],
            },
            "meta": outcome.meta,
        }
        self.queue_updated()

    # -- history -------------------------------------------------------------------------------

    def history_view(
        self, prompt_id: str | None = None, *, max_items: int | None = None, offset: int = -1
    ) -> dict[str, Any]:
        """`GET /history[/{id}]`: one entry (`{}` if unknown) or a window of the newest."""
        if prompt_id is not None:
            entry = self.history.get(prompt_id)
            return {} if entry is None else {prompt_id: entry}
        if offset < 0 and max_items is not None:
            offset = len(self.history) - max_items
        window = itertools.islice(self.history.items(), max(offset, 0), None)
        if max_items is not None:
            window = itertools.islice(window, max(max_items, 0))
        return dict(window)

    def edit_history(self, body: Mapping[str, Any]) -> None:
        """`POST /history {"clear": true}` / `{"delete": [...]}`."""
        if body.get("clear"):
            self.history = {}
        for prompt_id in body.get("delete", ()):
            self.history.pop(prompt_id, None)

    # -- websocket -----------------------------------------------------------------------------

    async def open_session(self, socket: Socket, client_id: str) -> tuple[str, Session]:
        """Register a websocket (replacing an older one with the same id) and greet it."""
        sid = client_id or uuid.uuid4().hex
        self.sessions.pop(sid, None)
        session = self.sessions[sid] = Session(socket)
        await session.send(_text("status", {"status": self.exec_info(), "sid": sid}))
        if self.client_id == sid and self.last_node_id is not None:
            await session.send(_text("executing", {"node": self.last_node_id}))
        return sid, session

    def close_session(self, sid: str) -> None:
        """Forget ``sid`` (even if a newer socket took it over, as ComfyUI does)."""
        self.sessions.pop(sid, None)

    def wants_preview_metadata(self, sid: str | None) -> bool:
        """Did session ``sid`` announce `supports_preview_metadata` (binary event 4)?"""
        session = self.sessions.get(sid) if sid is not None else None
        flags = session.feature_flags if session is not None else {}
        return flags.get("supports_preview_metadata") is True

    def send(self, event: str, data: Any, sid: str | None = None) -> None:
        """Queue a text message: for ``sid`` only, or for every session when it is None."""
        self._post(event, data, sid)

    def send_binary(self, frame: bytes, sid: str | None = None) -> None:
        """Queue an encoded binary frame (see media.py)."""
        self._post(None, frame, sid)

    def _post(self, event: str | None, data: Any, sid: str | None) -> None:
        self._outbox.append((event, data, sid))
        if self._publisher is None:
            self._publisher = asyncio.get_running_loop().create_task(self._publish())

    async def _publish(self) -> None:
        try:
            while self._outbox:
                event, data, sid = self._outbox.popleft()
                frame = data if event is None else _text(event, data)
                if sid is None:
                    targets = list(self.sessions.values())
                else:
                    targets = [self.sessions[sid]] if sid in self.sessions else []
                for session in targets:
                    await session.send(frame)
        finally:
            self._publisher = None

    async def close(self) -> None:
        """Stop the worker and the publisher (pending work is dropped, like a killed node)."""
        tasks = [task for task in (self._worker, self._publisher) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _text(event: str, data: Any) -> str:
    return json.dumps({"type": event, "data": data})


__all__ = ["FEATURES", "Session", "SimNode", "SimNodeConfig", "Socket"]
