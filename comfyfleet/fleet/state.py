"""Node state: a node's registry entry with its live state (`NodeState`), built by the fleet
service from the monitor, and the snapshot every other process reads.

The fleet service (the one process that probes) writes a snapshot of every node after each
probe round to one JSON file, `state_path(settings)`: beside the SQLite database
(`var/fleet-nodes.json` by default), or for other databases beside the output store's folder
(`store.outputs_dir`'s parent: `var/` by default), so two fleets on one MySQL server but with
their own stores never share it. It is replaced atomically (write + rename), so readers never
see half a file. `node_states()` reads it; that is the function the REST API, the UI, the
metrics and `comfyfleet nodes list` call. A snapshot older than `STALE_AFTER_S` (or 3 probe
intervals) means no fleet service is running: every node then reads `state: unknown`,
`stale: true`. The file is local to the host of the fleet service; a gateway on another host
sees no state (`unknown`) until the snapshot moves into the job store.

Beside it, `fleet-inventory.json` (`inventory_path`) holds what each node has installed (its
class types, output class types and model files: comfyfleet.catalog.raw.Inventory) for the
gateway, which checks at submit that some node can run a raw graph. A real node's class-type
list is long, so this file is written only when some node's inventory changed (or a node left),
not every round; `node_inventories()` reads it, cached by the file's mtime, so calling it on
every request costs a `stat`. Its `read_at` is when the read that found the content began.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy.engine import make_url

from comfyfleet.catalog.raw import Inventory
from comfyfleet.settings import NodeConfig, Settings, get_settings

if TYPE_CHECKING:
    from comfyfleet.fleet.monitor import NodeHealth

STATE_FILE = "fleet-nodes.json"
INVENTORY_FILE = "fleet-inventory.json"
STALE_AFTER_S = 15.0

NodeStatus = Literal["up", "down", "draining", "disabled", "unknown"]
Circuit = Literal["closed", "open", "half_open", "quarantined"]


class NodeState(NodeConfig):
    """One node: its registry entry (`NodeConfig`) and its live state."""

    draining: bool = False
    state: NodeStatus = "unknown"
    circuit: Circuit = "closed"
    healthy: bool = False
    paused: bool | None = None
    reachable: bool | None = None  # the last probe succeeded (None: not probed)
    in_flight: int = 0
    queue_depth: int | None = None
    load: float = 0.0
    models: dict[str, list[str]] | None = None
    last_checkpoint: str | None = None
    inventory_read_at: datetime | None = None  # the node's installed class types and models
    class_types: int | None = None  # how many class types it has (None: not read yet)
    last_error: str | None = None
    last_seen: datetime | None = None
    state_since: datetime | None = None
    faults_last_hour: int = 0
    quarantined_since: datetime | None = None
    updated_at: datetime | None = None
    stale: bool = False


def utc(ts: float | None) -> datetime | None:
    """Epoch seconds → aware UTC datetime (None stays None)."""
    return datetime.fromtimestamp(ts, UTC) if ts is not None else None


def node_status(*, enabled: bool, in_flight: int, answers: bool | None) -> NodeStatus:
    """`disabled` (nothing in flight) / `draining` (disabled, jobs still finishing) / `up` /
    `down`; `unknown` when nobody probes the node (`answers` None)."""
    if not enabled:
        return "draining" if in_flight else "disabled"
    if answers is None:
        return "unknown"
    return "up" if answers else "down"


def live_state(
    node: NodeConfig, health: NodeHealth, *, in_flight: int, healthy: bool,
    paused: bool | None, now: float,
) -> NodeState:  # fmt: skip
    """The node as the fleet service sees it now: its entry, what the monitor knows (`health`),
    its attempts in flight, whether it is in rotation (`healthy`) and its pool paused."""
    reachable = None if health.probes == 0 and health.failures == 0 else health.failures == 0
    status = node_status(enabled=node.enabled, in_flight=in_flight, answers=reachable)
    return NodeState(
        **node.model_dump(), draining=status == "draining", state=status,
        circuit="quarantined" if health.quarantined else health.state,
        healthy=healthy, paused=paused, reachable=reachable, in_flight=in_flight,
        queue_depth=health.queue_depth if health.last_seen else None,
        load=max(in_flight, health.queue_depth) / max(node.capacity, 1),
        models={k: sorted(v) for k, v in health.models.items()} if health.models else None,
        last_checkpoint=health.last_checkpoint, inventory_read_at=utc(health.inventory_at),
        class_types=len(health.inventory.class_types) if health.inventory else None,
        last_error=health.last_error,
        last_seen=utc(health.last_seen), state_since=utc(health.state_since),
        faults_last_hour=len(health.fault_times(now)),
        quarantined_since=utc(health.quarantined_at), updated_at=utc(now),
    )  # fmt: skip


def merge_state(config: NodeConfig, known: NodeState | None, *, in_flight: int) -> NodeState:
    """A node's registry entry (fresh) over its last known live state (the snapshot)."""
    live = known.model_dump() if known is not None else {}
    live.update(config.model_dump(), in_flight=in_flight)
    state = NodeState.model_validate(live)
    answers = None if known is None or known.stale else known.reachable
    status = node_status(enabled=config.enabled, in_flight=in_flight, answers=answers)
    busy = max(in_flight, state.queue_depth or 0)
    return state.model_copy(update={
        "state": status, "draining": status == "draining",
        "load": busy / max(config.capacity, 1),
        "healthy": state.healthy and config.enabled and status == "up",
    })  # fmt: skip


def state_path(settings: Settings | None = None) -> Path:
    """Where the fleet service writes the node-state snapshot."""
    settings = settings or get_settings()
    url = make_url(settings.database.url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return Path(str(url.database)).with_name(STATE_FILE)
    return Path(settings.store.outputs_dir).parent / STATE_FILE


def write_snapshot(path: Path, nodes: Iterable[NodeState], *, probe_interval_s: float) -> None:
    """Replace the snapshot file atomically."""
    _write_atomic(path, {
        "written_at": time.time(),
        "pid": os.getpid(),
        "probe_interval_s": probe_interval_s,
        "nodes": [n.model_dump(mode="json") for n in nodes],
    })  # fmt: skip


def _write_atomic(path: Path, doc: Any) -> None:
    """Write `doc` as JSON to a temporary file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def node_states(
    settings: Settings | None = None, *, path: Path | None = None, now: float | None = None
) -> list[NodeState]:
    """Every node as the fleet service last saw it (sorted by id; [] before its first round).

    Synchronous and cheap (one small file): fine to call on every REST request or scrape.
    """
    path = path or state_path(settings)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    now = time.time() if now is None else now
    interval = float(doc.get("probe_interval_s") or 0)
    stale = now - float(doc.get("written_at") or 0) > max(STALE_AFTER_S, 3 * interval)
    nodes = []
    for raw in doc.get("nodes", []):
        node = NodeState.model_validate(raw)
        if stale:
            node = node.model_copy(update={
                "stale": True, "healthy": False,
                "state": node_status(enabled=node.enabled, in_flight=node.in_flight, answers=None),
            })  # fmt: skip
        nodes.append(node)
    return sorted(nodes, key=lambda n: n.id)


def inventory_path(settings: Settings | None = None) -> Path:
    """Where the fleet service writes the nodes' inventories (beside the snapshot)."""
    return state_path(settings).with_name(INVENTORY_FILE)


def write_inventory(path: Path, inventories: Mapping[str, tuple[Inventory, float | None]]) -> None:
    """Replace the inventory file atomically: `{node id: (inventory, read at)}`."""
    _write_atomic(path, {
        "written_at": time.time(),
        "nodes": {
            node_id: {
                "class_types": sorted(inv.class_types),
                "output_class_types": sorted(inv.output_class_types),
                "models": {folder: sorted(files) for folder, files in sorted(inv.models.items())},
                "read_at": read_at,
            }
            for node_id, (inv, read_at) in sorted(inventories.items())
        },
    })  # fmt: skip


_inventory_cache: dict[Path, tuple[tuple[int, int, int], dict[str, Inventory]]] = {}


def node_inventories(
    settings: Settings | None = None, *, path: Path | None = None
) -> dict[str, Inventory]:
    """What each node has installed, as the fleet service last read it ({} before it has; no
    health: combine with `node_states()`). Cached by the file's mtime: cheap per request."""
    path = path or inventory_path(settings)
    try:
        stat = path.stat()
    except OSError:
        return {}
    key = (stat.st_mtime_ns, stat.st_ino, stat.st_size)  # a rename gives a new inode
    cached = _inventory_cache.get(path)
    if cached is not None and cached[0] == key:
        return dict(cached[1])
    try:
        doc = json.loads(path.read_text())
        nodes = {
            str(node_id): Inventory(
                class_types=frozenset(raw.get("class_types") or ()),
                output_class_types=frozenset(raw.get("output_class_types") or ()),
                models={str(f): frozenset(files) for f, files in (raw.get("models") or {}).items()},
            )
            for node_id, raw in (doc.get("nodes") or {}).items()
        }  # fmt: skip
    except (OSError, ValueError, TypeError, AttributeError):
        return {}
    _inventory_cache[path] = (key, nodes)
    return dict(nodes)


def healthy_inventories(settings: Settings | None = None) -> dict[str, Inventory]:
    """What each healthy node in rotation has installed, by node id (what a raw graph may be
    routed to now)."""
    known = node_inventories(settings)
    return {
        n.id: known[n.id] for n in node_states(settings)
        if n.healthy and n.enabled and n.id in known
    }  # fmt: skip


def fleet_service_pid(settings: Settings) -> int | None:
    """The pid of the fleet service that writes the node-state snapshot, if it runs here."""
    try:
        pid = int(json.loads(state_path(settings).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return pid if b"comfyfleet.fleet" in cmdline else None
