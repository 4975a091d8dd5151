"""What each node has installed: the monitor reads it in the background (first probe, back after
an outage, periodically, on an admin's request), keeps it when a read fails; the fleet service
writes it to `fleet-inventory.json` only when it changed, and other processes read it back."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx

from comfyfleet.catalog.raw import Inventory
from comfyfleet.fleet.monitor import Monitor
from comfyfleet.fleet.state import node_inventories, node_states
from comfyfleet.settings import HealthSettings
from comfyfleet.store import Database, audit
from tests.unit.fleet.fakes import (
    HEALTH,
    Clock,
    FakeNode,
    FakePrefect,
    gpu,
    read_facts,
    service,
)

REFRESH_S = 100.0


class StockedNode(FakeNode):
    """A fake node that also answers /object_info and /models (what it has installed)."""

    def __init__(self) -> None:
        super().__init__()
        self.object_info: dict[str, Any] = {
            "KSampler": {"output_node": False},
            "SaveImage": {"output_node": True},
            "TestOnlyHere": {},
        }
        self.folders: dict[str, list[str] | int] = {
            "checkpoints": ["tiny-sd15.ckpt"], "loras": ["a.safetensors"],
            "custom_nodes": ["x.py"], "configs": ["v1.yaml"], "broken": 500, "gone": 404,
        }  # fmt: skip
        self.info_up = True  # /object_info answers
        self.info_reads = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if not self.up or path == "/models/checkpoints" or not path.startswith(("/object", "/mod")):
            return super().__call__(request)
        if path == "/object_info":
            self.info_reads += 1
            return httpx.Response(200 if self.info_up else 503, json=self.object_info)
        if path == "/models":
            return httpx.Response(200, json=list(self.folders))
        found = self.folders.get(path.removeprefix("/models/"), 404)
        if isinstance(found, int):
            return httpx.Response(found)
        return httpx.Response(200, json=found)


def stocked_monitor(node: StockedNode, clock: Clock) -> Monitor:
    settings = HealthSettings(**{**HEALTH.model_dump(), "inventory_refresh_s": REFRESH_S})
    mon = Monitor(settings, transport=httpx.MockTransport(node), clock=clock)
    mon.track("gpu-1", "http://gpu-1:8188")
    return mon


async def rounds(mon: Monitor, clock: Clock, n: int = 1, step: float = 1.0) -> None:
    """Probe rounds, each waiting for the inventory reads it started."""
    for _ in range(n):
        await mon.probe_all()
        await mon.wait_inventory_reads()
        clock.now += step


async def test_the_first_good_probe_reads_the_inventory_in_the_background() -> None:
    node, clock = StockedNode(), Clock()
    mon = stocked_monitor(node, clock)
    health = mon.nodes["gpu-1"]
    await mon.probe_all()
    assert health.healthy and health.inventory is None  # the probe did not wait for it
    await mon.wait_inventory_reads()
    assert health.inventory == Inventory(
        class_types=frozenset({"KSampler", "SaveImage", "TestOnlyHere"}),
        output_class_types=frozenset({"SaveImage"}),
        models={
            "checkpoints": frozenset({"tiny-sd15.ckpt"}),
            "loras": frozenset({"a.safetensors"}),
        },
    )  # custom_nodes and configs skipped; the folders that failed on their own left out
    assert health.inventory_at == clock.now and health.inventory_error is None
    await rounds(mon, clock, 5)
    assert node.info_reads == 1  # not every round


async def test_it_is_read_again_periodically_and_when_the_node_comes_back() -> None:
    node, clock = StockedNode(), Clock()
    mon = stocked_monitor(node, clock)
    health = mon.nodes["gpu-1"]
    await rounds(mon, clock)
    first = health.inventory
    clock.now += REFRESH_S
    await rounds(mon, clock)
    assert node.info_reads == 2 and health.inventory is first  # same content: same object
    node.up = False
    while health.state != "open":
        await rounds(mon, clock)
    node.up = True
    node.object_info["NewlyInstalled"] = {}  # reinstalled while it was away
    clock.now = (health.opened_at or 0) + HEALTH.open_cooldown_s
    await rounds(mon, clock)  # half-open trial probe ok: closed, and the inventory read again
    assert health.state == "closed" and node.info_reads == 3
    assert health.inventory is not None and "NewlyInstalled" in health.inventory.class_types


async def test_a_failed_read_keeps_the_old_inventory_and_does_not_open_the_circuit() -> None:
    node, clock = StockedNode(), Clock()
    mon = stocked_monitor(node, clock)
    health = mon.nodes["gpu-1"]
    await rounds(mon, clock)
    known, read_at = health.inventory, health.inventory_at
    node.info_up = False
    clock.now += REFRESH_S
    await rounds(mon, clock)
    assert health.inventory is known and health.inventory_at == read_at
    assert "503" in (health.inventory_error or "")
    assert health.state == "closed" and health.healthy and health.failures == 0
    await rounds(mon, clock, 3)
    assert node.info_reads == 2  # retried later, not every round
    node.info_up = True
    clock.now += 30
    await rounds(mon, clock)
    assert health.inventory_error is None and health.inventory_at == clock.now - 1


async def test_an_admin_request_reads_it_again_once() -> None:
    node, clock = StockedNode(), Clock()
    mon = stocked_monitor(node, clock)
    health = mon.nodes["gpu-1"]
    await rounds(mon, clock)
    mon.request_inventory("gpu-1", at=clock.now - 100)  # older than the last read: nothing
    await rounds(mon, clock)
    assert node.info_reads == 1
    mon.request_inventory("gpu-1", at=clock.now)
    await rounds(mon, clock, 3)
    assert node.info_reads == 2 and (health.inventory_at or 0) >= health.refresh_requested_at


async def test_one_read_at_a_time_per_node_and_the_probe_round_does_not_wait() -> None:
    node, clock = StockedNode(), Clock()
    release = asyncio.Event()
    started = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal started
        if request.url.path == "/object_info":
            started += 1
            await release.wait()
        return node(request)

    settings = HealthSettings(**{**HEALTH.model_dump(), "inventory_refresh_s": REFRESH_S})
    mon = Monitor(settings, transport=httpx.MockTransport(slow), clock=clock)
    mon.track("gpu-1", "http://gpu-1:8188")
    for _ in range(3):
        await asyncio.wait_for(mon.probe_all(), 1.0)
        await asyncio.sleep(0)
        mon.request_inventory("gpu-1")
        clock.now += 1
    assert started == 1 and mon.nodes["gpu-1"].inventory is None
    release.set()
    await mon.wait_inventory_reads()
    assert mon.nodes["gpu-1"].inventory is not None
    await mon.aclose()


async def test_the_service_writes_the_inventory_file_only_when_it_changed(
    sqlite_db: Database, tmp_path: Path
) -> None:
    svc = service(sqlite_db, tmp_path, gpu(1), gpu(2))
    path = svc.inventory_file = tmp_path / "fleet-inventory.json"
    assert not svc.write_inventory() and not path.exists()  # nothing read yet: nothing to say
    gpu1 = Inventory(class_types=frozenset({"KSampler", "SaveImage"}),
                     output_class_types=frozenset({"SaveImage"}),
                     models={"checkpoints": frozenset({"a.ckpt"})})  # fmt: skip
    svc.monitor.nodes["gpu-1"].inventory = gpu1
    svc.monitor.nodes["gpu-1"].inventory_at = 1000.0
    svc.write_snapshot()
    doc = json.loads(path.read_text())["nodes"]
    assert doc == {"gpu-1": {
        "class_types": ["KSampler", "SaveImage"], "output_class_types": ["SaveImage"],
        "models": {"checkpoints": ["a.ckpt"]}, "read_at": 1000.0,
    }}  # fmt: skip
    assert node_inventories(path=path) == {"gpu-1": gpu1}
    [state] = [s for s in node_states(path=svc.state_file) if s.id == "gpu-1"]
    assert state.class_types == 2 and state.inventory_read_at is not None
    os.utime(path, (0, 0))
    svc.write_snapshot()
    assert path.stat().st_mtime == 0  # unchanged: not written again
    gpu2 = Inventory(class_types=frozenset({"TestOnlyHere"}))
    svc.monitor.nodes["gpu-2"].inventory = gpu2
    assert svc.write_inventory()
    assert node_inventories(path=path) == {"gpu-1": gpu1, "gpu-2": gpu2}
    svc.nodes = svc.nodes[1:]  # gpu-1 left the registry
    assert svc.write_inventory()
    assert node_inventories(path=path) == {"gpu-2": gpu2}


def test_node_inventories_is_cached_by_mtime(tmp_path: Path) -> None:
    path = tmp_path / "fleet-inventory.json"
    assert node_inventories(path=path) == {}
    path.write_text(json.dumps({"nodes": {"gpu-1": {"class_types": ["A"]}}}))
    assert node_inventories(path=path) == {"gpu-1": Inventory(class_types=frozenset({"A"}))}
    first = node_inventories(path=path)["gpu-1"]
    assert node_inventories(path=path)["gpu-1"] is first  # not parsed again
    path.write_text("{not json")
    assert node_inventories(path=path) == {}


async def test_a_node_refresh_in_the_audit_log_makes_the_health_round_read_it_again(
    sqlite_db: Database, tmp_path: Path
) -> None:
    svc = service(sqlite_db, tmp_path, gpu(1))
    svc.inventory_file = tmp_path / "fleet-inventory.json"
    node = StockedNode()
    svc.monitor._transport = httpx.MockTransport(node)
    svc._last_refresh = time.monotonic() + 3600  # the registry is as given
    prefect = FakePrefect()

    async def health_round() -> None:
        await svc.health_round(prefect)  # type: ignore[arg-type]
        await svc.monitor.wait_inventory_reads()

    await health_round()
    await health_round()  # the inventory read in the first round is written in the second
    assert (
        node.info_reads == 1
        and "TestOnlyHere" in node_inventories(path=svc.inventory_file)["gpu-1"].class_types
    )
    node.object_info["Installed"] = {}
    await asyncio.sleep(0.01)  # the request is later than the read
    sqlite_db.run(lambda s: audit(s, actor="test", action="node.refresh", target="gpu-1"))
    assert set(sqlite_db.run(read_facts, readonly=True).refreshes) == {"gpu-1"}
    for _ in range(3):
        await health_round()
    assert node.info_reads == 2  # once per request
    assert "Installed" in node_inventories(path=svc.inventory_file)["gpu-1"].class_types
    await svc.monitor.aclose()
