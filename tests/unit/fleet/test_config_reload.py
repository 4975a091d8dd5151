"""Config reload: what changed between two node lists, errors with their location, and the
watcher that applies a changed file (strategy at once, nodes through the registry)."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.fleet import config_reload
from comfyfleet.fleet.config_reload import ConfigWatcher, diff_nodes
from comfyfleet.fleet.router import Router
from comfyfleet.settings import NodeConfig, Settings
from comfyfleet.store import Conflict


def node(node_id: str, **kw: Any) -> NodeConfig:
    return NodeConfig(id=node_id, url=f"http://{node_id}:8188", **kw)


def test_diff_finds_added_changed_disabled_enabled_and_removed_nodes() -> None:
    old = [node("a"), node("b", capacity=2), node("c"), node("d", enabled=False), node("e")]
    new = [node("a"), node("b", capacity=4), node("c", enabled=False), node("d"), node("f")]
    changes = diff_nodes(old, new)
    assert [n.id for n in changes.added] == ["f"]
    assert [(n.id, n.capacity) for n in changes.changed] == [("b", 4)]
    assert changes.disabled == ["c"]
    assert changes.enabled == ["d"]
    assert changes.removed == ["e"]
    assert not diff_nodes(new, new)


class FakeDb:
    def run(self, fn: Any, **kw: Any) -> Any:
        return None


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in [k for k in os.environ if k.startswith("COMFYFLEET_") and "__" in k]:
        monkeypatch.delenv(key)
    path = tmp_path / "comfyfleet.yaml"
    path.write_text("nodes: [{id: a, url: 'http://a:8188'}, {id: b, url: 'http://b:8188'}]\n")
    return path


def rewrite(path: Path, text: str) -> None:
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 10**9, before + 10**9))


def test_watcher_switches_the_strategy_and_applies_node_changes(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    applied: list[config_reload.NodeChanges] = []

    async def fake_apply(client: Any, db: Any, changes: Any) -> None:
        applied.append(changes)

    monkeypatch.setattr(config_reload, "apply_changes", fake_apply)
    watcher = ConfigWatcher(config_reload.read_settings(config), path=config)
    router = Router("least_loaded")
    assert asyncio.run(watcher.check(None, FakeDb(), router=router)) is False  # unchanged
    rewrite(
        config,
        "routing: {strategy: round_robin}\n"
        "nodes: [{id: a, url: 'http://a:8188', capacity: 5}, {id: b, url: 'http://b:8188'}]\n",
    )
    assert asyncio.run(watcher.check(None, FakeDb(), router=router)) is True
    assert router.strategy == "round_robin"
    assert [(n.id, n.capacity) for n in applied[0].changed] == [("a", 5)]


def test_an_invalid_file_changes_nothing_and_says_where(
    config: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(config_reload, "apply_changes", pytest.fail)
    watcher = ConfigWatcher(config_reload.read_settings(config), path=config)
    router = Router("least_loaded")
    rewrite(config, "routing: {strategy: fastest}\nnodes: []\n")
    with caplog.at_level(logging.ERROR):
        assert asyncio.run(watcher.check(None, FakeDb(), router=router)) is False
    assert router.strategy == "least_loaded"
    assert "routing.strategy (line 1)" in caplog.text
    assert [n.id for n in watcher.applied.nodes] == ["a", "b"]


def test_a_removed_node_is_removed_once_it_has_drained(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from comfyfleet.fleet import registry

    async def fake_apply(client: Any, db: Any, changes: Any) -> None:
        pass

    busy = [True]
    removed: list[str] = []

    async def fake_remove(client: Any, node_id: str, **kw: Any) -> None:
        if busy[0]:
            raise Conflict(f"node {node_id!r} is draining: 1 job(s) still in flight")
        removed.append(node_id)

    monkeypatch.setattr(config_reload, "apply_changes", fake_apply)
    monkeypatch.setattr(registry, "remove_node", fake_remove)
    watcher = ConfigWatcher(config_reload.read_settings(config), path=config)
    router = Router("least_loaded")
    rewrite(config, "nodes: [{id: a, url: 'http://a:8188'}]\n")
    asyncio.run(watcher.check(None, FakeDb(), router=router))
    assert watcher.pending_removal == {"b"} and removed == []
    busy[0] = False
    assert asyncio.run(watcher.check(None, FakeDb(), router=router)) is True
    assert removed == ["b"] and watcher.pending_removal == set()


def test_sighup_rereads_an_unchanged_file(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    watcher = ConfigWatcher(Settings(nodes=[]), path=config)
    assert watcher.load() is None
    watcher.request()
    assert [n.id for n in watcher.load().nodes] == ["a", "b"]
