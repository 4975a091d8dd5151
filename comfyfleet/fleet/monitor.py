"""The fleet monitor: probes every node, keeps a circuit breaker per node, knows its models.

Each probe is `GET /system_stats` + `GET /queue` (cheap), with a short timeout; every few probes
also `GET /models/checkpoints`. Per node a circuit breaker:

    closed --K consecutive failures--> open --cool-down--> half_open --probe ok--> closed
                                         ^------------------ probe fails ---------|

Only `closed` nodes get new attempts. Quarantine: a node with more than N attempt faults in the
last hour (`health.quarantine_faults_per_hour`) is kept out of rotation until a clean probe window
(`QUARANTINE_CLEAN_S` of successful probes) or an admin releases it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from comfyfleet.settings import HealthSettings

logger = logging.getLogger(__name__)

CircuitState = Literal["closed", "open", "half_open"]
PROBE_TIMEOUT_S = 2.0
MODELS_EVERY = 5  # probes between model inventory refreshes
QUARANTINE_CLEAN_S = 300.0


@dataclass
class NodeHealth:
    """What the monitor knows about one node."""

    id: str
    url: str
    state: CircuitState = "closed"
    failures: int = 0
    last_error: str | None = None
    last_seen: float | None = None  # wall clock of the last good probe
    opened_at: float | None = None
    queue_depth: int = 0
    models: dict[str, frozenset[str]] | None = None
    probes: int = 0
    faults: deque[float] = field(default_factory=deque)  # attempt faults (wall clock)
    quarantined_at: float | None = None

    @property
    def healthy(self) -> bool:
        return self.state == "closed" and self.quarantined_at is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "url": self.url, "state": self.state, "healthy": self.healthy,
            "failures": self.failures, "last_error": self.last_error, "last_seen": self.last_seen,
            "queue_depth": self.queue_depth, "quarantined": self.quarantined_at is not None,
            "models": {k: sorted(v) for k, v in (self.models or {}).items()},
        }  # fmt: skip


class Monitor:
    """Probes nodes on a schedule and answers "is it healthy?" for the router."""

    def __init__(self, settings: HealthSettings, *, transport: Any = None) -> None:
        self.settings = settings
        self.nodes: dict[str, NodeHealth] = {}
        self._http = httpx.AsyncClient(timeout=PROBE_TIMEOUT_S, transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    def track(self, node_id: str, url: str) -> NodeHealth:
        health = self.nodes.get(node_id)
        if health is None or health.url != url:
            health = self.nodes[node_id] = NodeHealth(id=node_id, url=url.rstrip("/"))
        return health

    def forget(self, node_id: str) -> None:
        self.nodes.pop(node_id, None)

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(h) for h in list(self.nodes.values())))

    async def probe(self, health: NodeHealth) -> None:
        now = time.time()
        if health.state == "open":
            if now - (health.opened_at or now) < self.settings.open_cooldown_s:
                return
            self._set_state(health, "half_open", "cool-down over: trial probe")
        try:
            stats = await self._http.get(f"{health.url}/system_stats")
            stats.raise_for_status()
            queue = (await self._http.get(f"{health.url}/queue")).json()
            health.queue_depth = len(queue.get("queue_running", [])) + len(
                queue.get("queue_pending", [])
            )
            if health.models is None or health.probes % MODELS_EVERY == 0:
                ckpts = await self._http.get(f"{health.url}/models/checkpoints")
                health.models = {"checkpoints": frozenset(ckpts.json())}
        except (httpx.HTTPError, ValueError) as exc:
            self._failed(health, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            return
        health.probes += 1
        health.failures = 0
        health.last_error = None
        health.last_seen = now
        if health.state != "closed":
            self._set_state(health, "closed", "probe ok")
        self._maybe_release(health, now)

    def _failed(self, health: NodeHealth, error: str) -> None:
        health.failures += 1
        health.last_error = error
        if health.state == "half_open" or (
            health.state == "closed" and health.failures >= self.settings.failures_to_open
        ):
            health.opened_at = time.time()
            self._set_state(health, "open", error)

    def _set_state(self, health: NodeHealth, state: CircuitState, why: str) -> None:
        logger.info("node %s: circuit %s → %s (%s)", health.id, health.state, state, why)
        health.state = state

    def attempt_fault(self, node_id: str, *, now: float | None = None) -> None:
        """An attempt on the node ended as a node fault: count it for quarantine."""
        health = self.nodes.get(node_id)
        if health is None:
            return
        now = now or time.time()
        health.faults.append(now)
        while health.faults and health.faults[0] < now - 3600:
            health.faults.popleft()
        if (
            health.quarantined_at is None
            and len(health.faults) > self.settings.quarantine_faults_per_hour
        ):
            health.quarantined_at = now
            logger.warning("node %s quarantined: %d faults in an hour", node_id, len(health.faults))

    def release(self, node_id: str) -> None:
        """An admin returns a quarantined node to rotation."""
        health = self.nodes.get(node_id)
        if health is not None:
            health.quarantined_at = None
            health.faults.clear()

    def _maybe_release(self, health: NodeHealth, now: float) -> None:
        if health.quarantined_at is not None and now - health.quarantined_at >= QUARANTINE_CLEAN_S:
            recent = [t for t in health.faults if t >= health.quarantined_at]
            if not recent:
                logger.info("node %s leaves quarantine after a clean probe window", health.id)
                self.release(health.id)
