"""Config reload against a real Prefect server: a capacity change becomes the pool's concurrency
limit, a new node gets its block, pool and deployments, a disabled node's pool is paused, a node
gone from the file is removed, and the router takes the new strategy."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from comfyfleet.fleet.config_reload import ConfigWatcher, read_settings
from comfyfleet.fleet.router import Router
from comfyfleet.store import Database, upgrade

pytestmark = pytest.mark.integration


def write(path: Path, strategy: str, nodes: list[dict[str, Any]]) -> None:
    stamp = path.stat().st_mtime_ns + 10**9 if path.exists() else None
    path.write_text(yaml.safe_dump({"routing": {"strategy": strategy}, "nodes": nodes}))
    if stamp is not None:
        os.utime(path, ns=(stamp, stamp))


def test_reload_applies_nodes_capacities_and_strategy(prefect_server: Any, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client

    from comfyfleet.fleet.registry import read_nodes
    from deployments import apply_fleet

    db = Database(f"sqlite:///{tmp_path / 'cf.db'}")
    upgrade(db)
    config = tmp_path / "comfyfleet.yaml"
    a = {"id": "reload-a", "url": "http://127.0.0.1:9", "capacity": 2,
         "capabilities": ["text_to_image"]}  # fmt: skip
    b = {"id": "reload-b", "url": "http://127.0.0.1:10", "capacity": 1,
         "capabilities": ["text_to_image"]}  # fmt: skip
    write(config, "least_loaded", [a])
    settings = read_settings(config)
    asyncio.run(apply_fleet(settings.nodes))
    router = Router(settings.routing.strategy)
    watcher = ConfigWatcher(settings, path=config)

    async def step() -> tuple[bool, dict[str, Any], dict[str, Any]]:
        async with get_client() as client:
            touched = await watcher.check(client, db, router=router)
            pools = {p.name: p for p in await client.read_work_pools()}
            nodes = {n.id: n for n in await read_nodes(client)}
            return touched, pools, nodes

    write(config, "round_robin", [{**a, "capacity": 3}, b])
    touched, pools, nodes = asyncio.run(step())
    assert touched and router.strategy == "round_robin"
    assert nodes["reload-a"].capacity == 3 and nodes["reload-b"].capacity == 1
    assert {"comfyui-reload-a", "comfyui-reload-b"} <= set(pools)
    assert nodes["reload-b"].url == "http://127.0.0.1:10"

    write(config, "round_robin", [{**a, "capacity": 3, "enabled": False}, b])
    touched, pools, nodes = asyncio.run(step())
    assert pools["comfyui-reload-a"].is_paused and nodes["reload-a"].enabled is False

    write(config, "weighted", [{**a, "capacity": 3, "enabled": False}])
    touched, pools, nodes = asyncio.run(step())
    assert router.strategy == "weighted"
    assert "comfyui-reload-b" not in pools and "reload-b" not in nodes
    db.dispose()
