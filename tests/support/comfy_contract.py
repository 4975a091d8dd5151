"""Tools to hold two ComfyUI servers to the same protocol: a websocket recorder that waits on
states (never on time), and a normaliser that replaces what legitimately differs between two
servers (prompt ids, numbers, timestamps, file counters, timings, tracebacks) by stable names
while keeping every key, type and order."""

from __future__ import annotations

import asyncio
import json
import re
import struct
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import websockets
from websockets.asyncio.client import ClientConnection

Frame = dict[str, Any]
Match = Callable[[Frame], bool]

_COUNTER = re.compile(r"_\d{5}_\.")
_TEMP_PREFIX = re.compile(r"ComfyUI_temp_[a-z]{5}")
_MS_KEYS = frozenset({"timestamp", "create_time"})
_TIMING_KEYS = frozenset({"slept", "pid"})
_SET_KEYS = frozenset({"current_outputs", "executed"})
"""Lists ComfyUI builds from a set: their order varies per process (hash randomisation)."""


class Recorder:
    """One websocket session (`/ws?clientId=`) recording every frame it receives.

    Text frames are kept as parsed JSON; a binary frame becomes `{"type": "<binary>", "event":
    n, "metadata": {...} | None}`. ``preview_metadata`` announces the feature flag first, as the
    project's client does."""

    def __init__(self, base_url: str, client_id: str, *, preview_metadata: bool = False) -> None:
        self.url = base_url.replace("http://", "ws://", 1) + f"/ws?clientId={client_id}"
        self.client_id = client_id
        self.preview_metadata = preview_metadata
        self.frames: list[Frame] = []
        self._changed = asyncio.Condition()
        self._socket: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._socket = await websockets.connect(self.url, max_size=2**26)
        if self.preview_metadata:
            flags = {"type": "feature_flags", "data": {"supports_preview_metadata": True}}
            await self._socket.send(json.dumps(flags))
        self._reader = asyncio.create_task(self._read(self._socket))
        await self.wait_frame(matches("status"))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._socket is not None:
            await self._socket.close()
        if self._reader is not None:
            await self._reader

    async def _read(self, socket: ClientConnection) -> None:
        try:
            async for raw in socket:
                frame = json.loads(raw) if isinstance(raw, str) else binary_summary(raw)
                async with self._changed:
                    self.frames.append(frame)
                    self._changed.notify_all()
        except websockets.ConnectionClosed:
            pass

    async def wait_frame(
        self, match: Match, *, after: int = 0, timeout: float = 60.0
    ) -> list[Frame]:
        """Wait for the first frame at index ``after`` or later that ``match``es; return the
        frames up to and including it (later ones are not part of the answer)."""

        def found() -> int | None:
            for index in range(after, len(self.frames)):
                if match(self.frames[index]):
                    return index
            return None

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: found() is not None), timeout)
            index = found()
            assert index is not None
            return self.frames[: index + 1]

    async def wait_ended(self, prompt_id: str, timeout: float = 60.0) -> list[Frame]:
        """Wait for the prompt's legacy end marker (`executing` with node null), its last frame."""
        end = matches("executing", node=None, prompt_id=prompt_id)
        return await self.wait_frame(end, timeout=timeout)


def binary_summary(raw: bytes) -> Frame:
    """A binary frame's event, and for event 4 its metadata."""
    (event,) = struct.unpack_from(">I", raw, 0)
    metadata = None
    if event == 4:
        (length,) = struct.unpack_from(">I", raw, 4)
        metadata = json.loads(raw[8 : 8 + length])
    return {"type": "<binary>", "event": event, "metadata": metadata}


def matches(type_: str, **data: Any) -> Match:
    """A frame of ``type_`` whose data has these values."""

    def match(frame: Frame) -> bool:
        values = frame.get("data") or {}
        return frame["type"] == type_ and all(values.get(k) == v for k, v in data.items())

    return match


class Normaliser:
    """Names for the values two servers legitimately disagree on, given in the order a
    scenario meets them (so the same scenario gets the same names on both servers)."""

    def __init__(self) -> None:
        self._tokens: dict[str, str] = {}
        self._numbers: dict[float, str] = {}

    def token(self, value: str, kind: str = "id") -> str:
        """Register a server- or run-specific string (a prompt id, an upload's stem)."""
        if value not in self._tokens:
            count = sum(name.startswith(f"<{kind}") for name in self._tokens.values())
            self._tokens[value] = f"<{kind}{count + 1}>"
        return self._tokens[value]

    def number(self, value: float) -> str:
        """Queue numbers: counters shared with everything else the server ran."""
        magnitude = abs(value)
        if magnitude not in self._numbers:
            self._numbers[magnitude] = f"#{len(self._numbers)}"
        return ("-" if value < 0 else "") + self._numbers[magnitude]

    def text(self, value: str) -> str:
        for token, name in self._tokens.items():
            value = value.replace(token, name)
        value = _COUNTER.sub("_NNNNN_.", value)
        return _TEMP_PREFIX.sub("ComfyUI_temp_xxxxx", value)

    def __call__(self, value: Any, key: str | None = None) -> Any:
        if key in _MS_KEYS and isinstance(value, int):
            return "<ms>"
        if key in _TIMING_KEYS and isinstance(value, int | float):
            return f"<{key}>"
        if key == "number" and isinstance(value, int | float):
            return self.number(value)
        if key in _SET_KEYS and isinstance(value, list):
            return sorted(self(v) for v in value)
        if key == "traceback" and isinstance(value, list):
            return ["<frame>"] if value and all(isinstance(v, str) for v in value) else value
        if isinstance(value, dict):
            return {self.text(k): self(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self(v) for v in value]
        if isinstance(value, str):
            return self.text(value)
        return value

    def queue_item(self, item: list[Any]) -> list[Any]:
        """`[number, prompt_id, prompt, extra_data, outputs]` (a queue item, `history.prompt`)."""
        number, prompt_id, prompt, extra_data, outputs = item
        # outputs to execute: a set's order in ComfyUI
        return [self.number(number), *self([prompt_id, prompt, extra_data]), sorted(outputs)]

    def history(self, history: dict[str, Any]) -> dict[str, Any]:
        """`GET /history/{id}`: the entry with its `prompt` item normalised."""
        out: dict[str, Any] = {}
        for prompt_id, entry in history.items():
            fixed = {k: self(v, k) for k, v in entry.items() if k != "prompt"}
            if "prompt" in entry:
                fixed = {"prompt": self.queue_item(entry["prompt"]), **fixed}
            out[self.text(prompt_id)] = fixed
        return out

    def queue(self, queue: dict[str, list[list[Any]]]) -> dict[str, Any]:
        return {key: [self.queue_item(item) for item in items] for key, items in queue.items()}


def linked_values(frames: list[Frame], names: set[str]) -> list[Frame]:
    """Replace `execution_error.current_inputs` values of linked inputs (a tensor's repr on a
    real node) by a marker; the keys and the literal inputs stay."""
    out = []
    for frame in frames:
        if frame["type"] == "execution_error":
            inputs = dict(frame["data"].get("current_inputs", {}))
            for name in names & inputs.keys():
                inputs[name] = ["<linked value>"]
            frame = {**frame, "data": {**frame["data"], "current_inputs": inputs}}
        out.append(frame)
    return out


def differences(real: Any, sim: Any, path: str = "") -> list[str]:
    """Where two normalised answers differ, one line per place (empty when they agree)."""
    if isinstance(real, dict) and isinstance(sim, dict):
        lines = []
        if list(real) != list(sim) and set(real) == set(sim):
            lines.append(f"{path or '.'}: key order {list(real)} != {list(sim)}")
        for key in real.keys() | sim.keys():
            if key not in sim or key not in real:
                side = "sim" if key not in sim else "real"
                lines.append(f"{path}/{key}: missing on {side}")
            else:
                lines.extend(differences(real[key], sim[key], f"{path}/{key}"))
        return lines
    if isinstance(real, list | tuple) and isinstance(sim, list | tuple) and len(real) == len(sim):
        lines = []
        for index, (a, b) in enumerate(zip(real, sim, strict=True)):
            lines.extend(differences(a, b, f"{path}[{index}]"))
        return lines
    if real != sim or type(real) is not type(sim):
        return [f"{path or '.'}: real {real!r:.300} != sim {sim!r:.300}"]
    return []


def shape(value: Any) -> Any:
    """Keys and value types, not values: `{"a": "int", "b": ["str"]}`."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        shapes: list[Any] = []
        for item in value:
            if shape(item) not in shapes:
                shapes.append(shape(item))
        return shapes
    if isinstance(value, bool) or value is None:
        return type(value).__name__
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


__all__ = [
    "Frame",
    "Normaliser",
    "Recorder",
    "binary_summary",
    "differences",
    "linked_values",
    "matches",
    "shape",
]
