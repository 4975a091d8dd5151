"""What the client's methods return: small frozen models over ComfyUI's JSON."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from comfyfleet.comfyui.errors import ComfyUIError, ExecutionFailed, Interrupted
from comfyfleet.comfyui.messages import (
    Executed,
    ExecutionCached,
    ExecutionError,
    ExecutionInterrupted,
    ExecutionStart,
    ExecutionSuccess,
    Message,
    parse_message,
    timestamp_to_datetime,
)

OnMessage = Callable[[Message], Awaitable[None] | None]
"""A callback for every followed message; may be sync or async."""

_ANIMATED_KINDS = frozenset({"gifs", "videos", "video", "animated"})


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class SubmitResult(_Frozen):
    """POST /prompt accepted the prompt. ``node_errors`` lists outputs dropped as invalid."""

    prompt_id: str
    number: float
    node_errors: dict[str, Any] = {}


class OutputFile(_Frozen):
    """One file a node produced: an ``images``/``gifs``/``videos``… item of its UI output."""

    node_id: str
    filename: str
    subfolder: str = ""
    type: str = "output"
    kind: str = "images"
    animated: bool = False

    def view_params(self) -> dict[str, str]:
        """Query parameters of ``GET /view`` for this file."""
        return {"filename": self.filename, "subfolder": self.subfolder, "type": self.type}


def output_files(outputs: dict[str, dict[str, Any]]) -> list[OutputFile]:
    """The files in a prompt's outputs (``node_id → UI dict``), in node then item order.

    Any list of dicts carrying ``filename`` counts (``images``, ``gifs`` from VideoHelperSuite,
    ``audio``…). ``animated`` is SaveAnimatedWEBP/PNG's ``animated: [bool]`` flag (one per item, or
    one for the batch), and true for video kinds.
    """
    files: list[OutputFile] = []
    for node_id, output in outputs.items():
        if not isinstance(output, dict):
            continue
        flags = output.get("animated")
        flags = list(flags) if isinstance(flags, list | tuple) else []
        for kind, items in output.items():
            if not isinstance(items, list):
                continue
            for index, item in enumerate(items):
                if not isinstance(item, dict) or not isinstance(item.get("filename"), str):
                    continue
                if len(flags) == len(items):
                    flag = bool(flags[index])
                else:
                    flag = any(bool(f) for f in flags)
                files.append(
                    OutputFile(
                        node_id=str(node_id),
                        filename=item["filename"],
                        subfolder=str(item.get("subfolder") or ""),
                        type=str(item.get("type") or "output"),
                        kind=kind,
                        animated=flag or kind in _ANIMATED_KINDS,
                    )
                )
    return files


class PromptResult(_Frozen):
    """A prompt that finished successfully."""

    prompt_id: str
    outputs: dict[str, dict[str, Any]]
    started_at: datetime | None = None
    finished_at: datetime | None = None
    cached_nodes: list[str] = []

    @property
    def files(self) -> list[OutputFile]:
        return output_files(self.outputs)

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


class QueueState(_Frozen):
    """GET /queue: prompt ids running, and pending in run order (sorted by number)."""

    running: list[str]
    pending: list[str]

    def __contains__(self, prompt_id: object) -> bool:
        return prompt_id in self.running or prompt_id in self.pending

    def position(self, prompt_id: str) -> int | None:
        """0 while running, 1 for the next pending one, …; None if not queued."""
        if prompt_id in self.running:
            return 0
        if prompt_id in self.pending:
            return self.pending.index(prompt_id) + 1
        return None


class NodeProbe(_Frozen):
    """What a health probe needs of a node: its /system_stats and the depth of its queue."""

    system_stats: dict[str, Any]
    queue_depth: int | None = None
    """Prompts running and pending (None: the queue was not asked)."""
    prompt_ids: list[str] = []
    """Their ids (running first)."""

    @property
    def version(self) -> str | None:
        """ComfyUI's version, e.g. ``0.3.75`` (None when /system_stats does not say)."""
        system = self.system_stats.get("system")
        return system.get("comfyui_version") if isinstance(system, dict) else None


class HistoryEntry(_Frozen):
    """GET /history/{id}: a prompt that ended (success, error or interrupted)."""

    prompt_id: str
    number: float | None = None
    graph: dict[str, Any] = {}
    extra_data: dict[str, Any] = {}
    outputs: dict[str, dict[str, Any]] = {}
    status_str: str | None = None
    completed: bool = False
    messages: list[Message] = []

    @classmethod
    def from_json(cls, prompt_id: str, entry: dict[str, Any]) -> HistoryEntry:
        prompt = entry.get("prompt") or []
        status = entry.get("status") or {}
        messages: list[Message] = []
        for pair in status.get("messages") or []:
            if isinstance(pair, list | tuple) and len(pair) == 2 and isinstance(pair[0], str):
                data = pair[1]
                if isinstance(data, dict):
                    data = {"prompt_id": prompt_id, **data}
                messages.append(parse_message(pair[0], data))
        return cls(
            prompt_id=prompt_id,
            number=prompt[0] if len(prompt) > 0 and isinstance(prompt[0], int | float) else None,
            graph=prompt[2] if len(prompt) > 2 and isinstance(prompt[2], dict) else {},
            extra_data=prompt[3] if len(prompt) > 3 and isinstance(prompt[3], dict) else {},
            outputs=entry.get("outputs") or {},
            status_str=status.get("status_str"),
            completed=bool(status.get("completed", False)),
            messages=messages,
        )

    @property
    def succeeded(self) -> bool:
        if any(isinstance(m, ExecutionError | ExecutionInterrupted) for m in self.messages):
            return False
        return self.status_str in (None, "success")

    def terminal_message(self) -> ExecutionSuccess | ExecutionError | ExecutionInterrupted:
        """The message that ended the prompt (made up from ``status_str`` if none was stored)."""
        for message in reversed(self.messages):
            if isinstance(message, ExecutionSuccess | ExecutionError | ExecutionInterrupted):
                return message
        if self.succeeded:
            return ExecutionSuccess(prompt_id=self.prompt_id)
        return ExecutionError(
            prompt_id=self.prompt_id,
            exception_type="unknown",
            exception_message=f"history status {self.status_str!r} without an error message",
        )

    @property
    def files(self) -> list[OutputFile]:
        return output_files(self.outputs)


class UploadedFile(_Frozen):
    """POST /upload/image answer; ``name`` may differ from the asked one (``x (1).png``)."""

    name: str
    subfolder: str = ""
    type: str = "input"

    @property
    def ref(self) -> str:
        """The value for ``LoadImage.inputs.image``: ``subfolder/name``."""
        return f"{self.subfolder}/{self.name}" if self.subfolder else self.name


class DownloadedFile(_Frozen):
    path: Path
    sha256: str
    size: int
    content_type: str | None = None


FileRef = OutputFile | UploadedFile | Mapping[str, Any]
"""Something naming a file on a node: an output, an upload, or a ``{filename, subfolder, type}``."""


async def collect_result(
    prompt_id: str, messages: AsyncIterator[Message], on_message: OnMessage | None = None
) -> PromptResult:
    """Consume a prompt's messages into its result; raise on an error or interruption."""
    outputs: dict[str, dict[str, Any]] = {}
    started_at: datetime | None = None
    cached: list[str] = []
    async for message in messages:
        if on_message is not None:
            result = on_message(message)
            if inspect.isawaitable(result):
                await result
        if isinstance(message, ExecutionStart):
            started_at = timestamp_to_datetime(message.timestamp) or datetime.now(tz=UTC)
        elif isinstance(message, ExecutionCached):
            cached = list(message.nodes)
        elif isinstance(message, Executed):
            outputs[message.node] = dict(message.output)
        elif isinstance(message, ExecutionSuccess):
            return PromptResult(
                prompt_id=prompt_id,
                outputs=outputs,
                started_at=started_at,
                finished_at=timestamp_to_datetime(message.timestamp) or datetime.now(tz=UTC),
                cached_nodes=cached,
            )
        elif isinstance(message, ExecutionError):
            raise ExecutionFailed(
                message.node_id,
                message.node_type,
                message.exception_type,
                message.exception_message,
                prompt_id=prompt_id,
                traceback=list(message.traceback),
                executed=list(message.executed),
            )
        elif isinstance(message, ExecutionInterrupted):
            raise Interrupted(message.node_id, message.node_type, prompt_id=prompt_id)
    raise ComfyUIError(f"prompt {prompt_id}: the message stream ended without a result")


__all__ = [
    "DownloadedFile",
    "FileRef",
    "HistoryEntry",
    "OnMessage",
    "OutputFile",
    "PromptResult",
    "QueueState",
    "SubmitResult",
    "UploadedFile",
    "collect_result",
    "output_files",
]
