"""Following one prompt over the shared websocket, to its end.

:func:`follow_prompt` turns a hub subscription into the messages of one prompt and decides how
it ends, consulting /history and /queue whenever frames may have been missed: on start, after a
reconnect, after silence, and (for a prompt submitted by another client id) on queue changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from comfyfleet.comfyui.errors import PromptLost
from comfyfleet.comfyui.hub import Connected, Down, Subscription
from comfyfleet.comfyui.messages import (
    Executed,
    Executing,
    ExecutionCached,
    ExecutionError,
    ExecutionInterrupted,
    ExecutionStart,
    ExecutionSuccess,
    Message,
    PreviewFrame,
    Status,
    UnknownBinary,
    UnknownMessage,
)
from comfyfleet.comfyui.results import HistoryEntry, QueueState

logger = logging.getLogger(__name__)

_TERMINAL = (ExecutionSuccess, ExecutionError, ExecutionInterrupted)
SILENCE_CHECK_S = 30.0
"""Without ``no_progress_timeout``, silence this long still triggers a /history + /queue check."""


class _Probe(Protocol):
    async def history(self, prompt_id: str) -> HistoryEntry | None: ...

    async def queue(self) -> QueueState: ...


async def locate(probe: _Probe, prompt_id: str) -> HistoryEntry | QueueState | None:
    """Where is the prompt: ended (its history entry), queued/running (the queue), or unknown.

    History is read again after the queue, because a prompt that ends between the two reads moves
    from the queue to the history (atomically on the server) and would otherwise look lost."""
    entry = await probe.history(prompt_id)
    if entry is not None:
        return entry
    queue = await probe.queue()
    if prompt_id in queue:
        return queue
    return await probe.history(prompt_id)


class _Tracker:
    """What we have seen of one prompt."""

    def __init__(self, prompt_id: str) -> None:
        self.prompt_id = prompt_id
        self.started = False
        self.running = False
        self.cached_seen = False
        self.executed: set[str] = set()
        self.last_queue_remaining: int | None = None

    def note(self, message: Message) -> None:
        self.started = True
        if isinstance(message, ExecutionStart):
            self.running = True
        elif isinstance(message, ExecutionCached):
            self.cached_seen = True
        elif isinstance(message, Executed):
            self.executed.add(message.node)
        elif isinstance(message, _TERMINAL):
            self.running = False

    def replay(self, entry: HistoryEntry) -> list[Message]:
        """The messages we missed, rebuilt from the history entry, ending with the terminal one."""
        missed: list[Message] = []
        for message in entry.messages:
            if isinstance(message, ExecutionStart) and not self.started:
                missed.append(message)
            elif isinstance(message, ExecutionCached) and not self.cached_seen:
                missed.append(message)
        for node_id, output in entry.outputs.items():
            if node_id not in self.executed and isinstance(output, dict):
                missed.append(Executed(prompt_id=self.prompt_id, node=node_id, output=output))
        missed.append(entry.terminal_message())
        return missed


def _belongs(message: Message, tracker: _Tracker) -> bool:
    """Is this frame part of the prompt's stream (besides status, which always is)?"""
    if isinstance(message, PreviewFrame):
        if message.prompt_id is not None:
            return message.prompt_id == tracker.prompt_id
        return tracker.running  # event 1 names no prompt: ComfyUI runs one prompt at a time
    if isinstance(message, UnknownBinary):
        return tracker.running
    return message.prompt_id == tracker.prompt_id


async def follow_prompt(
    probe: _Probe,
    sub: Subscription,
    prompt_id: str,
    *,
    check_first: bool,
    no_progress_timeout: float | None = None,
) -> AsyncIterator[Message]:
    """Yield the prompt's messages (and status/preview frames) until its terminal message.

    Raises :class:`PromptLost` when the node no longer knows the prompt, :class:`NodeUnavailable`
    when the socket is gone for good or the node does not answer.

    After ``no_progress_timeout`` seconds (default :data:`SILENCE_CHECK_S`) without a message for
    the prompt, the node is asked where the prompt is: ended → resolved from history; queued or
    running → keep following; unknown → :class:`PromptLost`."""
    tracker = _Tracker(prompt_id)
    loop = asyncio.get_running_loop()

    async def settle(reason: str) -> list[Message] | None:
        located = await locate(probe, prompt_id)
        if isinstance(located, HistoryEntry):
            logger.debug("prompt %s resolved from history (%s)", prompt_id, reason)
            return tracker.replay(located)
        if located is None:
            raise PromptLost(prompt_id, f"unknown to the node ({reason})")
        return None

    if check_first:
        missed = await settle("follow started")
        if missed is not None:
            for message in missed:
                yield message
            return

    silence = SILENCE_CHECK_S if no_progress_timeout is None else no_progress_timeout
    last_activity = loop.time()
    while True:
        try:
            async with asyncio.timeout(max(0.0, last_activity + silence - loop.time())):
                item = await sub.get()
        except TimeoutError:
            missed = await settle(f"no message for {silence}s")
            last_activity = loop.time()
            if missed is None:
                continue
            for message in missed:
                yield message
            return

        if isinstance(item, Down):
            raise item.error
        if isinstance(item, Connected):
            missed = await settle("after reconnecting")
            last_activity = loop.time()
            if missed is None:
                continue
            for message in missed:
                yield message
            return

        message: Message = item
        if isinstance(message, Status):
            yield message
            previous, tracker.last_queue_remaining = (
                tracker.last_queue_remaining,
                message.queue_remaining,
            )
            # Job messages go to the submitting client id only; if we are not it (adopting a
            # prompt) the queue changes are our only news, so look at the history on each one.
            if not tracker.started and previous is not None and previous != message.queue_remaining:
                entry = await probe.history(prompt_id)
                if entry is not None:
                    for missed_message in tracker.replay(entry):
                        yield missed_message
                    return
            continue
        if isinstance(message, ExecutionStart) and message.prompt_id != prompt_id:
            tracker.running = False
            continue
        if not _belongs(message, tracker):
            continue
        last_activity = loop.time()
        if isinstance(message, PreviewFrame | UnknownBinary | UnknownMessage):
            yield message
            continue
        if isinstance(message, Executing) and message.finished:
            # The legacy end marker; the terminal message should have come before it.
            missed = await settle("end marker without a result")
            if missed is not None:
                for missed_message in missed:
                    yield missed_message
                return
            continue
        tracker.note(message)
        yield message
        if isinstance(message, _TERMINAL):
            return
