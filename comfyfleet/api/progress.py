"""Live job progress from Prefect events, fanned out to the gateway's SSE streams and the UI.

The flows emit `comfy.progress` (payload `{value, max, node}`) and other `comfy.*` events on the
resource `comfy.job.<job id>` (reference/prefect-mechanics.md §9: ~50 ms from emit to a
subscriber). One `ProgressHub` per process holds ONE Prefect events subscription for all jobs
(`comfy.*` on resources `comfy.job.*`) and hands each event to the queues of the streams
following that job. It starts with the first subscriber and reconnects with backoff if the
Prefect server goes away; meanwhile streams still see status changes from the job store.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

log = logging.getLogger(__name__)

RESOURCE_PREFIX = "comfy.job."
EVENT_PREFIX = "comfy."
_QUEUE_SIZE = 256


@dataclass(frozen=True)
class JobEvent:
    """One Prefect event about a job: `kind` is the name after `comfy.` (`progress`, …)."""

    job_id: str
    kind: str
    payload: dict[str, Any]
    occurred: datetime


class _Subscription:
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.queue: asyncio.Queue[JobEvent] = asyncio.Queue(maxsize=_QUEUE_SIZE)
        self.since = datetime.now(UTC) - timedelta(seconds=1)

    def offer(self, event: JobEvent) -> None:
        if event.occurred < self.since:
            return  # a replay from before this stream began: the store snapshot covers it
        if self.queue.full():  # a slow reader loses the oldest progress, never blocks the hub
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
        self.queue.put_nowait(event)


class ProgressHub:
    """Fan-out of `comfy.job.<id>` events to per-job subscribers."""

    def __init__(self, api_url: str | None) -> None:
        self.api_url = api_url
        self.connected = False
        self.last_error: str | None = None
        self._subs: dict[str, set[_Subscription]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    @contextlib.asynccontextmanager
    async def subscribe(self, job_id: str) -> AsyncIterator[asyncio.Queue[JobEvent]]:
        """A queue of the job's events while the block runs."""
        sub = _Subscription(job_id)
        self._subs.setdefault(job_id, set()).add(sub)
        self._ensure_started()
        try:
            yield sub.queue
        finally:
            subs = self._subs.get(job_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    self._subs.pop(job_id, None)

    async def wait_connected(self, timeout: float) -> bool:
        """Wait until the Prefect subscription is up (tests, the UI before submitting)."""
        self._ensure_started()
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def publish(self, event: JobEvent) -> None:
        """Hand an event to the job's subscribers (the Prefect listener calls this)."""
        for sub in list(self._subs.get(event.job_id, ())):
            sub.offer(event)

    def start(self) -> None:
        """Connect now (the gateway does at startup) rather than with the first subscriber."""
        self._ensure_started()

    def _ensure_started(self) -> None:
        if self.api_url and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self) -> None:
        delay = 0.5
        while True:
            try:
                await self._listen()
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # server down or restarting: retry with backoff
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.info("progress hub: Prefect events unavailable (%s); retrying", exc)
            self.connected = False
            self._ready.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _listen(self) -> None:
        # imported in a thread: a first import takes long enough to stall the loop
        await asyncio.to_thread(importlib.import_module, "prefect.events.clients")
        from prefect.events.clients import PrefectEventSubscriber
        from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

        event_filter = EventFilter(
            event=EventNameFilter(prefix=[EVENT_PREFIX]),
            resource=EventResourceFilter(id_prefix=[RESOURCE_PREFIX]),
        )
        async with PrefectEventSubscriber(
            api_url=self.api_url, filter=event_filter, reconnection_attempts=2
        ) as subscriber:
            self.connected = True
            self._ready.set()
            self.last_error = None
            async for event in subscriber:
                resource_id = event.resource.id
                if not resource_id.startswith(RESOURCE_PREFIX):
                    continue
                occurred = event.occurred
                if occurred.tzinfo is None:
                    occurred = occurred.replace(tzinfo=UTC)
                self.publish(
                    JobEvent(
                        job_id=resource_id[len(RESOURCE_PREFIX) :],
                        kind=event.event[len(EVENT_PREFIX) :],
                        payload=dict(event.payload or {}),
                        occurred=occurred,
                    )
                )
