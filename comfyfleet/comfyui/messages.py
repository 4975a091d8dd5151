"""The ComfyUI websocket protocol, typed.

Text frames are ``{"type": str, "data": {...}}``; each known ``type`` becomes one frozen model
whose fields are the ``data`` keys (``msg.prompt_id``, ``msg.node``…). Extra keys are kept (custom
nodes and newer servers add some), and a type we do not know — or a known type whose data does not
fit — becomes an :class:`UnknownMessage` rather than an error.

Binary frames are ``>I event`` + payload: event 1 (``PREVIEW_IMAGE``: ``>I format`` + image) and
event 4 (``PREVIEW_IMAGE_WITH_METADATA``: ``>I length`` + JSON metadata + image) become a
:class:`PreviewFrame`; any other event an :class:`UnknownBinary`.

History entries store the same messages as ``[type, data]`` pairs; :func:`parse_message` reads
those.
"""

from __future__ import annotations

import json
import logging
import struct
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

logger = logging.getLogger(__name__)

PREVIEW_IMAGE = 1
TEXT = 3
PREVIEW_IMAGE_WITH_METADATA = 4

_IMAGE_FORMATS = {1: "JPEG", 2: "PNG"}
_CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png"}


def timestamp_to_datetime(ms: float | None) -> datetime | None:
    """ComfyUI timestamps are milliseconds since the epoch (server clock)."""
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    prompt_id: str | None = None


def _none_to_empty(value: Any) -> Any:
    return {} if value is None else value


def _none_to_list(value: Any) -> Any:
    return [] if value is None else value


class ExecInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    queue_remaining: int = 0


class StatusInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    exec_info: ExecInfo = ExecInfo()


class Status(_Message):
    """Queue size; sent to every client whenever the queue changes, and first on connect."""

    type: Literal["status"] = "status"
    status: StatusInfo | None = None
    sid: str | None = None

    @property
    def queue_remaining(self) -> int | None:
        return None if self.status is None else self.status.exec_info.queue_remaining


class ExecutionStart(_Message):
    type: Literal["execution_start"] = "execution_start"
    prompt_id: str
    timestamp: int | None = None


class ExecutionCached(_Message):
    """Node ids served from ComfyUI's cache (``executed`` is replayed for cached output nodes)."""

    type: Literal["execution_cached"] = "execution_cached"
    prompt_id: str
    nodes: list[str] = []
    timestamp: int | None = None

    _nodes = field_validator("nodes", mode="before")(_none_to_list)


class Executing(_Message):
    """A node starts; ``node is None`` is the legacy "prompt finished" marker (after the end)."""

    type: Literal["executing"] = "executing"
    node: str | None = None
    display_node: str | None = None

    @property
    def finished(self) -> bool:
        return self.node is None


class Progress(_Message):
    """The classic per-node step counter (sampler steps, ``comfy.utils.ProgressBar``)."""

    type: Literal["progress"] = "progress"
    node: str | None = None
    value: float
    max: float


class NodeProgress(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    value: float = 0.0
    max: float = 1.0
    state: str = "pending"
    node_id: str | None = None
    display_node_id: str | None = None
    real_node_id: str | None = None
    parent_node_id: str | None = None


class ProgressState(_Message):
    """State of every node so far (``pending``/``running``/``finished``); frequent."""

    type: Literal["progress_state"] = "progress_state"
    prompt_id: str
    nodes: dict[str, NodeProgress] = {}

    _nodes = field_validator("nodes", mode="before")(_none_to_empty)


class Executed(_Message):
    """A node with UI output finished; ``output`` is its UI dict (``images``, ``gifs``…)."""

    type: Literal["executed"] = "executed"
    prompt_id: str
    node: str
    display_node: str | None = None
    output: dict[str, Any] = {}

    _output = field_validator("output", mode="before")(_none_to_empty)


class ExecutionSuccess(_Message):
    type: Literal["execution_success"] = "execution_success"
    prompt_id: str
    timestamp: int | None = None


class ExecutionError(_Message):
    """A node raised. ``exception_message`` usually ends with a newline."""

    type: Literal["execution_error"] = "execution_error"
    prompt_id: str
    node_id: str | None = None
    node_type: str | None = None
    executed: list[str] = []
    exception_message: str = ""
    exception_type: str = ""
    traceback: list[str] = []
    current_inputs: dict[str, Any] = {}
    current_outputs: list[Any] = []
    timestamp: int | None = None

    _lists = field_validator("executed", "traceback", "current_outputs", mode="before")(
        _none_to_list
    )
    _dicts = field_validator("current_inputs", mode="before")(_none_to_empty)


class ExecutionInterrupted(_Message):
    type: Literal["execution_interrupted"] = "execution_interrupted"
    prompt_id: str
    node_id: str | None = None
    node_type: str | None = None
    executed: list[str] = []
    timestamp: int | None = None

    _executed = field_validator("executed", mode="before")(_none_to_list)


class FeatureFlags(_Message):
    """The server's answer to our ``feature_flags`` opening message."""

    type: Literal["feature_flags"] = "feature_flags"
    supports_preview_metadata: bool | None = None
    max_upload_size: int | None = None


class UnknownMessage(BaseModel):
    """A text frame of a type we do not model (custom nodes send their own)."""

    model_config = ConfigDict(frozen=True)

    type: str
    data: Any = None

    @property
    def prompt_id(self) -> str | None:
        if isinstance(self.data, dict):
            value = self.data.get("prompt_id")
            return value if isinstance(value, str) else None
        return None


class PreviewFrame(BaseModel):
    """A preview image (binary event 1, or 4 with metadata naming the node and prompt)."""

    model_config = ConfigDict(frozen=True)

    type: Literal["preview"] = "preview"
    event: int = PREVIEW_IMAGE
    image_format: str
    image: bytes = Field(repr=False)
    metadata: dict[str, Any] | None = None

    @property
    def content_type(self) -> str:
        return _CONTENT_TYPES.get(self.image_format, "application/octet-stream")

    @property
    def prompt_id(self) -> str | None:
        return None if self.metadata is None else self.metadata.get("prompt_id")

    @property
    def node_id(self) -> str | None:
        return None if self.metadata is None else self.metadata.get("node_id")


class UnknownBinary(BaseModel):
    """A binary frame of another event (3 = progress text from some nodes, …)."""

    model_config = ConfigDict(frozen=True)

    type: Literal["binary"] = "binary"
    event: int
    payload: bytes = Field(repr=False)

    @property
    def prompt_id(self) -> None:
        return None


KnownMessage = Annotated[
    Status
    | ExecutionStart
    | ExecutionCached
    | Executing
    | Progress
    | ProgressState
    | Executed
    | ExecutionSuccess
    | ExecutionError
    | ExecutionInterrupted
    | FeatureFlags,
    Field(discriminator="type"),
]

Message = (
    Status
    | ExecutionStart
    | ExecutionCached
    | Executing
    | Progress
    | ProgressState
    | Executed
    | ExecutionSuccess
    | ExecutionError
    | ExecutionInterrupted
    | FeatureFlags
    | UnknownMessage
    | PreviewFrame
    | UnknownBinary
)

_known: TypeAdapter[Any] = TypeAdapter(KnownMessage)
_KNOWN_TYPES = frozenset(
    {
        "status",
        "execution_start",
        "execution_cached",
        "executing",
        "progress",
        "progress_state",
        "executed",
        "execution_success",
        "execution_error",
        "execution_interrupted",
        "feature_flags",
    }
)


def parse_message(type_: str, data: Any) -> Message:
    """The typed message for one ``type`` + ``data`` pair (a text frame or a history entry)."""
    if type_ in _KNOWN_TYPES and isinstance(data, dict):
        try:
            return _known.validate_python({**data, "type": type_})
        except ValidationError as exc:
            logger.debug("ComfyUI %r message does not fit its model (%s)", type_, exc)
    return UnknownMessage(type=type_, data=data)


def parse_text(text: str | bytes) -> Message:
    """Parse one websocket text frame. Raises ``ValueError`` if it is not a JSON object."""
    frame = json.loads(text)
    if not isinstance(frame, dict):
        raise ValueError(f"websocket text frame is not a JSON object: {str(text)[:80]!r}")
    type_ = frame.get("type")
    return parse_message(type_ if isinstance(type_, str) else "", frame.get("data"))


def parse_binary(frame: bytes) -> PreviewFrame | UnknownBinary:
    """Parse one websocket binary frame. Raises ``ValueError`` if it has no event header."""
    if len(frame) < 4:
        raise ValueError(f"binary frame of {len(frame)} bytes has no event header")
    (event,) = struct.unpack_from(">I", frame, 0)
    payload = bytes(frame[4:])
    if event == PREVIEW_IMAGE and len(payload) >= 4:
        (fmt,) = struct.unpack_from(">I", payload, 0)
        return PreviewFrame(
            event=event, image_format=_IMAGE_FORMATS.get(fmt, str(fmt)), image=payload[4:]
        )
    if event == PREVIEW_IMAGE_WITH_METADATA and len(payload) >= 4:
        (length,) = struct.unpack_from(">I", payload, 0)
        try:
            metadata = json.loads(payload[4 : 4 + length])
        except ValueError:
            metadata = None
        if isinstance(metadata, dict) and len(payload) >= 4 + length:
            image_type = str(metadata.get("image_type", ""))
            image_format = "PNG" if image_type == "image/png" else "JPEG"
            return PreviewFrame(
                event=event,
                image_format=image_format,
                image=payload[4 + length :],
                metadata=metadata,
            )
    return UnknownBinary(event=event, payload=payload)


__all__ = [
    "PREVIEW_IMAGE",
    "PREVIEW_IMAGE_WITH_METADATA",
    "TEXT",
    "ExecInfo",
    "Executed",
    "Executing",
    "ExecutionCached",
    "ExecutionError",
    "ExecutionInterrupted",
    "ExecutionStart",
    "ExecutionSuccess",
    "FeatureFlags",
    "KnownMessage",
    "Message",
    "NodeProgress",
    "PreviewFrame",
    "Progress",
    "ProgressState",
    "Status",
    "StatusInfo",
    "UnknownBinary",
    "UnknownMessage",
    "parse_binary",
    "parse_message",
    "parse_text",
    "timestamp_to_datetime",
]
