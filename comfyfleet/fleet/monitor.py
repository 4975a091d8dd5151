"""The fleet monitor: probes every node, keeps a circuit breaker per node, knows what each has
installed.

Each probe is `ComfyUIClient.probe` (`GET /system_stats` + `GET /queue`: cheap), with a short
timeout, over one client per node; every few probes also `GET /models/checkpoints`. Per node a
circuit breaker (`health.failures_to_open` = K, `health.open_cooldown_s`):

    closed --K consecutive failures--> open --cool-down--> half_open --probe ok--> closed
                                         ^------------------ probe fails ---------|

Only nodes that have answered a probe, are `closed` and are not quarantined get new attempts
(`NodeHealth.healthy`).

Quarantine (a flapping node): more than N faults (`health.quarantine_faults_per_hour`) in the
last hour take the node out of rotation, whatever its circuit says. A fault is a circuit opening
(counted here) or an attempt that had started on the node and ended `node_fault` (counted by the
job store, handed in by the fleet service with `record_attempt_faults`, so faults seen by flows
in other processes count too). Attempts moved off a node before they started do not count: one
node death is one event, not one per queued job. The node leaves quarantine when an admin
releases it (`release`: `comfyfleet nodes enable`), which also forgets the faults before it, or
after a clean probe window: `clean_window_s` (default `QUARANTINE_CLEAN_S`) of successful probes
with no new fault.

Inventory (`NodeHealth.inventory`: class types from `GET /object_info`, the output ones among
them, and every model folder's files from `GET /models` + `/models/<folder>`), for routing raw
graphs to the nodes that have what they name (comfyfleet.fleet.router). A real ComfyUI's
object_info is about 1 MB, so it is not part of the probe: after a good probe, the monitor starts
a background read of the node's inventory (one at a time per node, `INVENTORY_TIMEOUT_S` per
request) when it is due: the node's first good probe, its circuit closing again after being open
(it may have been reinstalled meanwhile), every `health.inventory_refresh_s`, and when an admin
asked for it (`request_inventory`: `comfyfleet nodes refresh`) after the last read began. A read
that fails keeps the old inventory, logs a warning and is tried again after
`INVENTORY_RETRY_S`; it never opens the circuit (the probe says whether the node answers).

Every state change is logged (`node gpu-1: circuit closed → open (ConnectError: …)`) and kept
in `NodeHealth.state_since`. The monitor itself does no other I/O than probing: the fleet
service acts on what it says (pauses pools, moves attempts, writes the node-state snapshot).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from comfyfleet.catalog.raw import Inventory
from comfyfleet.comfyui import ComfyUIClient, ComfyUIError, NodeUnavailable
from comfyfleet.settings import HealthSettings
from comfyfleet.store.attempts import is_attempt_id

logger = logging.getLogger(__name__)

CircuitState = Literal["closed", "open", "half_open"]
PROBE_TIMEOUT_S = 2.0
MODELS_EVERY = 5  # probes between model inventory refreshes
QUARANTINE_CLEAN_S = 300.0
FAULT_WINDOW_S = 3600.0
INVENTORY_TIMEOUT_S = 15.0  # per request: a real ComfyUI's /object_info is about 1 MB
INVENTORY_RETRY_S = 30.0  # a failed inventory read is tried again after this (at most)
INVENTORY_SKIPPED_FOLDERS = frozenset({"custom_nodes", "configs"})  # not model files


@dataclass
class NodeHealth:
    """What the monitor knows about one node (wall-clock times, seconds since the epoch)."""

    id: str
    url: str
    state: CircuitState = "closed"
    state_since: float | None = None
    failures: int = 0  # consecutive failed probes
    last_error: str | None = None
    last_seen: float | None = None  # the last good probe
    ok_since: float | None = None  # start of the current run of good probes
    opened_at: float | None = None
    queue_depth: int = 0
    """Prompts on the node that are not this fleet's (someone using its ComfyUI directly)."""
    models: dict[str, frozenset[str]] | None = None
    last_checkpoint: str | None = None  # the checkpoint of the node's latest attempt
    probes: int = 0
    openings: deque[float] = field(default_factory=deque)  # circuit openings
    attempt_faults: tuple[float, ...] = ()  # started attempts that ended node_fault (store)
    quarantined_at: float | None = None
    released_at: float | None = None  # faults before this are forgiven
    inventory: Inventory | None = None
    """What the node has installed (None: never read); kept when a later read fails."""
    inventory_at: float | None = None  # when the read that gave `inventory` began
    inventory_tried_at: float | None = None  # when the last read (good or not) began
    inventory_error: str | None = None  # why the last read failed (None: it did not)
    inventory_due: bool = False  # read it after the next good probe (the node came back)
    refresh_requested_at: float | None = None  # an admin's last `nodes refresh`

    @property
    def healthy(self) -> bool:
        """May get new attempts: answered a probe, circuit closed, not quarantined."""
        return self.state == "closed" and self.quarantined_at is None and self.last_seen is not None

    @property
    def quarantined(self) -> bool:
        return self.quarantined_at is not None

    def fault_times(self, now: float) -> list[float]:
        """Faults that count now: in the last hour and after the last release."""
        since = max(now - FAULT_WINDOW_S, self.released_at or 0.0)
        return sorted(t for t in (*self.openings, *self.attempt_faults) if t > since)

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        return {
            "id": self.id, "url": self.url, "state": self.state, "healthy": self.healthy,
            "state_since": self.state_since, "failures": self.failures,
            "last_error": self.last_error, "last_seen": self.last_seen,
            "queue_depth": self.queue_depth, "quarantined": self.quarantined,
            "quarantined_at": self.quarantined_at, "faults_last_hour": len(self.fault_times(now)),
            "models": {k: sorted(v) for k, v in (self.models or {}).items()},
            "last_checkpoint": self.last_checkpoint, "inventory_at": self.inventory_at,
            "class_types": len(self.inventory.class_types) if self.inventory else None,
            "inventory_error": self.inventory_error,
        }  # fmt: skip

    def inventory_wanted(self, now: float, refresh_s: float) -> bool:
        """Whether the inventory should be read now (see the module docstring)."""
        tried = self.inventory_tried_at
        if tried is None or self.inventory_due:
            return True
        if self.refresh_requested_at is not None and tried < self.refresh_requested_at:
            return True
        wait = refresh_s if self.inventory_error is None else min(refresh_s, INVENTORY_RETRY_S)
        return now - tried >= wait


class Monitor:
    """Probes nodes on a schedule and answers "is it healthy?" for the router."""

    def __init__(
        self,
        settings: HealthSettings,
        *,
        transport: Any = None,
        clock: Callable[[], float] = time.time,
        clean_window_s: float = QUARANTINE_CLEAN_S,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.clean_window_s = clean_window_s
        self.nodes: dict[str, NodeHealth] = {}
        self._transport = transport
        self._clients: dict[str, ComfyUIClient] = {}  # by node URL
        self._retired: list[ComfyUIClient] = []  # of nodes forgotten or moved: closed next
        self._inventory_reads: dict[str, asyncio.Task[None]] = {}  # by node id: one at a time

    async def aclose(self) -> None:
        reads = list(self._inventory_reads.values())
        for task in reads:
            task.cancel()
        await asyncio.gather(*reads, return_exceptions=True)
        await self._close_retired()
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    def track(self, node_id: str, url: str) -> NodeHealth:
        url = url.rstrip("/")
        health = self.nodes.get(node_id)
        if health is None or health.url != url:
            if health is not None:
                self._retire(health.url)
            health = self.nodes[node_id] = NodeHealth(id=node_id, url=url, state_since=self.clock())
        return health

    def forget(self, node_id: str) -> None:
        health = self.nodes.pop(node_id, None)
        if health is not None:
            self._retire(health.url)
        read = self._inventory_reads.pop(node_id, None)
        if read is not None:
            read.cancel()

    def _retire(self, url: str) -> None:
        client = self._clients.pop(url, None)
        if client is not None:
            self._retired.append(client)

    async def _close_retired(self) -> None:
        retired, self._retired = self._retired, []
        for client in retired:
            await client.aclose()

    def _client(self, url: str) -> ComfyUIClient:
        client = self._clients.get(url)
        if client is None:
            client = self._clients[url] = ComfyUIClient(
                url, timeout=PROBE_TIMEOUT_S, transport=self._transport
            )
        return client

    async def probe_all(self) -> None:
        await self._close_retired()
        await asyncio.gather(*(self.probe(h) for h in list(self.nodes.values())))

    async def probe(self, health: NodeHealth) -> None:
        now = self.clock()
        if health.state == "open":
            if now - (health.opened_at or now) < self.settings.open_cooldown_s:
                return
            self._set_state(health, "half_open", "cool-down over: trial probe", now)
        client = self._client(health.url)
        try:
            probe = await client.probe()
            # Foreign load only: our own prompts (attempt ids) are counted as in flight.
            depth = sum(1 for prompt in probe.prompt_ids if not is_attempt_id(prompt))
            if health.models is None or health.probes % MODELS_EVERY == 0:
                health.models = {"checkpoints": frozenset(await client.models("checkpoints"))}
        except (ComfyUIError, ValueError, LookupError, TypeError, AttributeError) as exc:
            self._failed(health, _describe(exc), self.clock())
            return
        now = self.clock()
        health.queue_depth = depth
        health.probes += 1
        health.failures = 0
        health.last_error = None
        health.last_seen = now
        if health.ok_since is None:
            health.ok_since = now
        if health.state != "closed":
            self._set_state(health, "closed", "probe ok", now)
            health.inventory_due = True  # back after being out: it may have been reinstalled
        self._maybe_release(health, now)
        if health.inventory_wanted(now, self.settings.inventory_refresh_s):
            self._start_inventory_read(health)

    # -- inventory ------------------------------------------------------------------------------

    def request_inventory(self, node_id: str, *, at: float | None = None) -> None:
        """An admin asked (at `at`) for the node's inventory to be read again: it is, after
        its next good probe, unless a read began after the request."""
        health = self.nodes.get(node_id)
        if health is None:
            return
        at = self.clock() if at is None else at
        health.refresh_requested_at = max(at, health.refresh_requested_at or 0.0)

    def _start_inventory_read(self, health: NodeHealth) -> None:
        running = self._inventory_reads.get(health.id)
        if running is not None and not running.done():
            return  # one at a time; still due (the flags stay) when this one began earlier
        health.inventory_due = False
        health.inventory_tried_at = self.clock()
        task = asyncio.create_task(self.read_inventory(health), name=f"inventory-{health.id}")
        self._inventory_reads[health.id] = task
        task.add_done_callback(lambda t, node_id=health.id: self._read_done(node_id, t))

    def _read_done(self, node_id: str, task: asyncio.Task[None]) -> None:
        if self._inventory_reads.get(node_id) is task:
            del self._inventory_reads[node_id]

    async def wait_inventory_reads(self) -> None:
        """Until the inventory reads under way now have ended (tests, shutdown)."""
        await asyncio.gather(*list(self._inventory_reads.values()), return_exceptions=True)

    async def read_inventory(self, health: NodeHealth) -> None:
        """Read the node's inventory into `health` (a failure keeps the old one: warned)."""
        began = health.inventory_tried_at if health.inventory_tried_at is not None else self.clock()
        try:
            async with ComfyUIClient(
                health.url, timeout=INVENTORY_TIMEOUT_S, transport=self._transport
            ) as client:
                inventory = await fetch_inventory(client)
        except Exception as exc:  # any failure: keep what we had, say why
            health.inventory_error = _describe(exc)
            logger.warning(
                "node %s: inventory not read (%s); %s", health.id, health.inventory_error,
                "keeping the previous one" if health.inventory else "none known yet",
            )  # fmt: skip
            return
        health.inventory_error = None
        health.inventory_at = began
        if inventory != health.inventory:  # same content: keep the object (cheap comparisons)
            logger.info(
                "node %s: inventory %s: %d class types, %d model files", health.id,
                "read" if health.inventory is None else "changed", len(inventory.class_types),
                len(inventory.model_files),
            )  # fmt: skip
            health.inventory = inventory

    def _failed(self, health: NodeHealth, error: str, now: float) -> None:
        health.failures += 1
        health.last_error = error
        health.ok_since = None
        if health.state == "half_open" or (
            health.state == "closed" and health.failures >= self.settings.failures_to_open
        ):
            health.opened_at = now
            if health.state == "closed":
                health.openings.append(now)
            self._set_state(health, "open", error, now)
            self._check_quarantine(health, now)

    def _set_state(self, health: NodeHealth, state: CircuitState, why: str, now: float) -> None:
        level = logging.WARNING if state == "open" else logging.INFO
        logger.log(level, "node %s: circuit %s → %s (%s)", health.id, health.state, state, why)
        health.state = state
        health.state_since = now

    def record_attempt_faults(
        self, node_id: str, times: Iterable[float], *, released_at: float | None = None
    ) -> None:
        """The node's recent attempt faults (from the job store) and its last admin release."""
        health = self.nodes.get(node_id)
        if health is None:
            return
        now = self.clock()
        if released_at is not None and (health.released_at or 0.0) < released_at:
            self.release(node_id, at=released_at)
        health.attempt_faults = tuple(sorted(t for t in times if t > now - FAULT_WINDOW_S))
        while health.openings and health.openings[0] <= now - FAULT_WINDOW_S:
            health.openings.popleft()
        self._check_quarantine(health, now)

    def _check_quarantine(self, health: NodeHealth, now: float) -> None:
        if health.quarantined_at is not None:
            return
        faults = health.fault_times(now)
        if len(faults) > self.settings.quarantine_faults_per_hour:
            health.quarantined_at = now
            health.state_since = now
            logger.warning(
                "node %s quarantined: %d faults in the last hour (more than %d)",
                health.id, len(faults), self.settings.quarantine_faults_per_hour,
            )  # fmt: skip

    def release(self, node_id: str, *, at: float | None = None) -> None:
        """An admin returns the node to rotation; faults before `at` no longer count."""
        health = self.nodes.get(node_id)
        if health is None:
            return
        at = self.clock() if at is None else at
        health.released_at = max(at, health.released_at or 0.0)
        if health.quarantined_at is not None and health.quarantined_at <= health.released_at:
            logger.info("node %s released from quarantine by an admin", node_id)
            health.quarantined_at = None
            health.state_since = self.clock()

    def _maybe_release(self, health: NodeHealth, now: float) -> None:
        if health.quarantined_at is None or health.ok_since is None:
            return
        faults = health.fault_times(now)
        clean_since = max(health.ok_since, health.quarantined_at, faults[-1] if faults else 0.0)
        if now - clean_since >= self.clean_window_s:
            logger.info(
                "node %s leaves quarantine after %.0f s of clean probes", health.id,
                now - clean_since,
            )  # fmt: skip
            health.quarantined_at = None
            health.released_at = now
            health.state_since = now


async def fetch_inventory(client: ComfyUIClient) -> Inventory:
    """A node's inventory: class types (`/object_info` keys; the output ones have
    `"output_node": true`) and each model folder's files (`/models`, then `/models/<folder>`).
    A folder the node answers with an error for (404, a 500 of its own) is left out, as are
    `INVENTORY_SKIPPED_FOLDERS`; a node that stops answering (no HTTP answer at all) fails the
    whole read, so a node going away never reads as one without models."""
    info = await client.object_info()
    if not isinstance(info, dict):
        raise ValueError(f"/object_info: expected an object, got {type(info).__name__}")
    folders = await client.models()
    if not isinstance(folders, list):
        raise ValueError(f"/models: expected a list, got {type(folders).__name__}")
    names = sorted({f for f in folders if isinstance(f, str)} - INVENTORY_SKIPPED_FOLDERS)

    async def files(folder: str) -> frozenset[str] | None:
        try:
            found = await client.models(folder)
        except NodeUnavailable as exc:
            if exc.status_code is None:
                raise  # no answer at all: the node, not the folder
            logger.debug("%s: model folder %s skipped (%s)", client.base_url, folder, exc)
            return None
        except (ComfyUIError, ValueError) as exc:
            logger.debug("%s: model folder %s skipped (%s)", client.base_url, folder, exc)
            return None
        if not isinstance(found, list):
            return None
        return frozenset(f for f in found if isinstance(f, str))

    listed = await asyncio.gather(*(files(folder) for folder in names))
    return Inventory(
        class_types=frozenset(info),
        output_class_types=frozenset(
            name for name, spec in info.items()
            if isinstance(spec, dict) and spec.get("output_node") is True
        ),
        models={f: found for f, found in zip(names, listed, strict=True) if found is not None},
    )  # fmt: skip


def _describe(exc: BaseException) -> str:
    if isinstance(exc, NodeUnavailable) and exc.__cause__ is not None:
        exc = exc.__cause__  # the transport's own error: `ConnectError: …`
    text = str(exc)
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__
