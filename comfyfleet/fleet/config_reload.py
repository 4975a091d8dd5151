"""Config reload: changes to nodes, capacities and the routing strategy apply without a restart.

The fleet service holds a `ConfigWatcher`. It looks at the config file's modification time every
`CHECK_S` (and at once on SIGHUP, which `comfyfleet config reload` sends). A changed file is read
again; a file that does not validate is reported (with each error's location) and changes
nothing. Otherwise the difference to the config applied last is applied:

- a node added, or one whose URL, capacity, capabilities, weight, priority or metadata changed:
  its block, pool (concurrency limit = capacity), queues and deployments
  (comfyfleet.fleet.provision.apply_node, with the flows as deployed on the server);
- a node now `enabled: false`: disabled as by `comfyfleet nodes disable` (pool paused, attempts
  that have not started move to other nodes; running ones finish); `enabled: true` again: enabled;
- a node gone from the file: drained and removed; while jobs still run there it stays disabled
  and the removal is tried again at each check;
- `routing.strategy`: the router switches at once (the next dispatch uses it).

Only nodes the file lists are touched: nodes added at run time (`comfyfleet nodes add`, REST,
join) are not the file's to remove.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfyfleet.fleet import provision, registry
from comfyfleet.fleet.node_block import ComfyUINode
from comfyfleet.settings import NodeConfig, Settings, config_path, format_errors, read_settings
from comfyfleet.store import Conflict, NotFound, audit

logger = logging.getLogger(__name__)

CHECK_S = 2.0
ACTOR = "config-reload"


@dataclass
class NodeChanges:
    added: list[NodeConfig] = field(default_factory=list)
    changed: list[NodeConfig] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)
    enabled: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any((self.added, self.changed, self.disabled, self.enabled, self.removed))


def diff_nodes(old: Sequence[NodeConfig], new: Sequence[NodeConfig]) -> NodeChanges:
    """What changed between two node lists (by id)."""
    before = {n.id: n for n in old}
    after = {n.id: n for n in new}
    changes = NodeChanges()
    for node_id, node in after.items():
        was = before.get(node_id)
        if was is None:
            changes.added.append(node)
            continue
        if was.model_dump(exclude={"enabled"}) != node.model_dump(exclude={"enabled"}):
            changes.changed.append(node)
        if was.enabled and not node.enabled:
            changes.disabled.append(node_id)
        elif node.enabled and not was.enabled:
            changes.enabled.append(node_id)
    changes.removed = [node_id for node_id in before if node_id not in after]
    return changes


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


class ConfigWatcher:
    """Re-applies the config file when it changes (see the module docstring)."""

    def __init__(self, settings: Settings, *, path: Path | None = None) -> None:
        self.path = path or config_path()
        self.applied = settings
        self._stamp = _stamp(self.path)
        self._forced = False
        self.pending_removal: set[str] = set()

    def request(self) -> None:
        """Read the file at the next check even if it looks unchanged (SIGHUP)."""
        self._forced = True

    def load(self) -> Settings | None:
        """The file's settings if it changed (or a reload was requested) and validates."""
        stamp = _stamp(self.path)
        if stamp == self._stamp and not self._forced:
            return None
        self._stamp, self._forced = stamp, False
        try:
            return read_settings(self.path)
        except Exception as exc:  # ValidationError, YAML syntax, unreadable file
            logger.error("config not reloaded; the running config stays:\n%s",
                         format_errors(exc, self.path))  # fmt: skip
            return None

    async def check(self, client: Any, db: Any, *, router: Any) -> bool:
        """Apply what changed; True when the node registry changed."""
        new = self.load()
        touched = False
        if new is not None:
            changes = diff_nodes(self.applied.nodes, new.nodes)
            if new.routing.strategy != router.strategy:
                logger.warning("routing strategy %s → %s (config reload)", router.strategy,
                               new.routing.strategy)  # fmt: skip
                router.strategy = new.routing.strategy
            if changes:
                await apply_changes(client, db, changes)
                self.pending_removal |= set(changes.removed)
                self.pending_removal -= {n.id for n in new.nodes}
                touched = True
            self.applied = new
        if self.pending_removal:
            touched = await self._remove_pending(client, db) or touched
        return touched

    async def _remove_pending(self, client: Any, db: Any) -> bool:
        removed = False
        for node_id in sorted(self.pending_removal):
            try:
                await registry.remove_node(client, node_id, db=db, actor=ACTOR)
            except Conflict as exc:
                logger.info("node %s left the config: %s", node_id, exc)
                continue
            except NotFound:
                pass
            self.pending_removal.discard(node_id)
            removed = True
        return removed


async def apply_changes(client: Any, db: Any, changes: NodeChanges) -> None:
    """Apply node changes to the registry (blocks, pools, deployments) and say so."""
    if changes.added:
        await ComfyUINode.aregister_type_and_schema()
    flows = await provision.read_flow_specs(client) if changes.added or changes.changed else []
    for node in [*changes.added, *changes.changed]:
        await provision.apply_node(client, node, flows=flows)
        action = "node.add" if node in changes.added else "node.update"
        detail = {"url": node.url, "capacity": node.capacity}
        await asyncio.to_thread(
            db.run, lambda s, n=node, a=action, d=detail: audit(
                s, actor=ACTOR, action=a, target=n.id, detail=d)
        )  # fmt: skip
        logger.warning("node %s %s (config reload): %s, capacity %d", node.id,
                       "added" if node in changes.added else "updated", node.url,
                       node.capacity)  # fmt: skip
    for node_id, enabled in [(n, False) for n in changes.disabled] + [
        (n, True) for n in changes.enabled
    ]:
        try:
            moved = await registry.set_enabled(client, node_id, enabled, db=db, actor=ACTOR)
        except NotFound:
            logger.warning("node %s is not in the registry; nothing to %s", node_id,
                           "enable" if enabled else "disable")  # fmt: skip
            continue
        logger.warning("node %s %s (config reload)%s", node_id,
                       "enabled" if enabled else "disabled",
                       f"; {moved} waiting job(s) moved" if moved else "")  # fmt: skip
