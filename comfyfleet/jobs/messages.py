"""A raw graph job's ComfyUI messages, kept for the `/comfy/ws` relay.

The shift following a raw graph's prompt appends every message the node sends about it
(`execution_start`, `executing`, `progress`, `progress_state`, `executed`, `execution_error`…;
not `status`, not preview frames) as one JSON line to `<store>/<job>/.comfy-messages.jsonl`, with
the node's own prompt id (the attempt's). The web process tails that file for the websockets of
the job's client (comfyfleet.api.comfy). A file append per message: no Prefect event, artifact
or database write, so the relay costs the control plane nothing per job beyond the write. A
failed-over job's file holds each attempt's messages in turn.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import IO, Any

from comfyfleet.settings import get_settings

log = logging.getLogger(__name__)

MESSAGES_NAME = ".comfy-messages.jsonl"
SKIPPED = frozenset({"status", "preview", "binary", "feature_flags"})


def messages_path(job_id: str, *, outputs_dir: str | Path | None = None) -> Path:
    if not job_id or "/" in job_id or job_id.startswith("."):
        raise ValueError(f"job_id: not a job id: {job_id!r}")
    store = Path(outputs_dir if outputs_dir is not None else get_settings().store.outputs_dir)
    return store / job_id / MESSAGES_NAME


class MessageLog:
    """Appends one attempt's messages to its job's file (opened on the first one)."""

    def __init__(self, job_id: str) -> None:
        self.path = messages_path(job_id)
        self._file: IO[str] | None = None

    def write(self, message: Any) -> None:
        kind = getattr(message, "type", None)
        if kind is None or kind in SKIPPED:
            return
        data = message.model_dump(mode="json", exclude={"type"})
        try:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", encoding="utf-8")
            self._file.write(json.dumps({"type": kind, "data": data}) + "\n")
            self._file.flush()
        except OSError as exc:  # the relay is for watchers; the job goes on
            log.warning("could not keep message of %s: %s", self.path.parent.name, exc)

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


def read_messages(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The whole lines written after `offset`, and the offset after them."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            chunk = fh.read()
    except OSError:
        return [], offset
    end = chunk.rfind(b"\n") + 1
    out = []
    for line in chunk[:end].splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out, offset + end
