"""Routing by capability: a raw graph goes only to nodes known to have every class type and model
file it names; catalog jobs are routed as before; the dispatcher builds a graph job's view from
its graph and reads graph jobs from the backlog; the planner shapes graphs cheaply."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from comfyfleet.catalog.raw import GRAPH_CAPABILITY, GRAPH_WORKFLOW, Inventory
from comfyfleet.fleet import JobView, NodeView, Router, eligible, explain
from comfyfleet.fleet.dispatcher import Dispatcher
from comfyfleet.fleet.planner import shape
from comfyfleet.store import Database, create_job, get_job, list_attempts
from comfyfleet.store.users import ensure_service_user
from tests.unit.fleet.fakes import gpu, service
from tests.unit.fleet.test_dispatcher import queued, working
from tests.unit.fleet.test_router import ROUTING_BUDGET_MS, _median_ms

T2I = "text_to_image"
GRAPH = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
    "2": {"class_type": "TestOnlyHere", "inputs": {"model": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}},
}
TYPES = frozenset({"CheckpointLoaderSimple", "TestOnlyHere", "SaveImage"})
FILES = frozenset({"sd15.safetensors"})


def node(node_id: str, types: set[str] | None = None, files: set[str] | None = None,
         **kw: Any) -> NodeView:  # fmt: skip
    kw.setdefault("capacity", 2)
    kw.setdefault("capabilities", frozenset({T2I}))
    return NodeView(
        id=node_id, url=f"http://{node_id}:8188", class_types=types, model_files=files, **kw
    )


def graph_job(**kw: Any) -> JobView:
    return JobView(id="g-1", capability=GRAPH_CAPABILITY, class_types=TYPES, model_files=FILES,
                   **kw)  # fmt: skip


def test_a_graph_goes_only_to_nodes_that_have_all_it_names() -> None:
    nodes = [
        node("all", TYPES | {"Other"}, FILES | {"x.ckpt"}, capabilities=frozenset()),
        node("no-type", TYPES - {"TestOnlyHere"}, FILES),
        node("no-file", TYPES, set()),
        node("unknown"),  # inventory not read: not eligible (a graph would fail there)
        node("sick", TYPES, FILES, healthy=False),
    ]
    assert [n.id for n in eligible(graph_job(), nodes)] == ["all"]
    assert Router().choose(graph_job(), nodes).id == "all"  # type: ignore[union-attr]
    # a catalog job ignores the inventory (unknown is fine) and needs its capability
    catalog = JobView(id="c-1", capability=T2I)
    assert [n.id for n in eligible(catalog, nodes)] == ["no-type", "no-file", "unknown"]


def test_explain_names_what_no_node_has() -> None:
    nodes = [
        node("gpu-1", TYPES - {"TestOnlyHere"}, FILES),
        node("gpu-2", TYPES - {"TestOnlyHere"}),
    ]
    assert explain(graph_job(), nodes) == "no healthy node has class type TestOnlyHere"
    nodes = [node("gpu-1", TYPES - {"TestOnlyHere"}, set()), node("gpu-2")]
    assert explain(graph_job(), nodes) == (
        "no healthy node has class type TestOnlyHere and model file sd15.safetensors"
    )
    nodes = [node("gpu-1", TYPES - {"TestOnlyHere"}, FILES), node("gpu-2", TYPES, set())]
    assert explain(graph_job(), nodes) == (
        "no healthy node has every class type and model file the job needs "
        "(gpu-1 lacks TestOnlyHere; gpu-2 lacks sd15.safetensors)"
    )
    assert explain(graph_job(), [node("gpu-1")]) == (
        "no healthy node has reported what it has installed yet"
    )
    pinned = graph_job(pinned_node="gpu-2")
    assert explain(pinned, nodes) == "node gpu-2 does not have model file sd15.safetensors"
    assert explain(graph_job(), [node("gpu-1", TYPES, FILES)]) == (
        "1 of 1 eligible nodes have a free slot"
    )


def test_routing_a_graph_over_100_nodes_is_fast() -> None:
    rng = random.Random(3)
    installed = {f"Type{i}" for i in range(2000)} | TYPES
    files = {f"model-{i}.safetensors" for i in range(300)} | FILES
    nodes = [
        node(f"gpu-{i:03d}", installed - ({"TestOnlyHere"} if rng.random() < 0.5 else set()),
             files, in_flight=rng.randint(0, 2))
        for i in range(100)
    ]  # fmt: skip
    job = graph_job()
    for strategy in ("least_loaded", "model_aware"):
        router = Router(strategy)
        assert router.choose(job, nodes) is not None
        assert _median_ms(lambda r=router: r.choose(job, nodes)) < ROUTING_BUDGET_MS
    assert _median_ms(lambda: explain(job, nodes)) < ROUTING_BUDGET_MS


def test_a_graph_shape_is_its_class_types_hashed() -> None:
    one = shape(GRAPH_WORKFLOW, {"graph": GRAPH})
    seeded = {**GRAPH, "1": {**GRAPH["1"], "inputs": {"ckpt_name": "other.safetensors"}}}
    assert one.startswith("graph#") and one == shape(GRAPH_WORKFLOW, {"graph": seeded})
    fewer = {k: v for k, v in GRAPH.items() if k != "2"}
    assert shape(GRAPH_WORKFLOW, {"graph": fewer}) != one
    assert shape(GRAPH_WORKFLOW, {"graph": "junk"}) == "graph"
    assert shape("delay", {"seconds": 2, "seed": 5}) == "delay|seconds=2"


def queued_graph(db: Database, graph: Any, *, pinned: str | None = None) -> Any:
    def make(s: Any) -> Any:
        return create_job(s, workflow=GRAPH_WORKFLOW, capability=GRAPH_CAPABILITY,
                          params={"graph": graph}, owner=ensure_service_user(s),
                          pinned_node=pinned)  # fmt: skip

    return db.run(make)


async def test_the_dispatcher_places_graph_jobs_on_nodes_that_have_what_they_name(
    sqlite_db: Database, tmp_path: Path
) -> None:
    svc = service(sqlite_db, tmp_path, gpu(1), gpu(2), gpu(3))
    for n in (1, 2, 3):
        working(sqlite_db, f"gpu-{n}")
    svc.monitor.nodes["gpu-1"].inventory = Inventory(
        class_types=TYPES - {"TestOnlyHere"}, models={"checkpoints": FILES}
    )
    svc.monitor.nodes["gpu-2"].inventory = Inventory(
        class_types=TYPES | {"More"}, models={"checkpoints": FILES, "loras": frozenset({"l.pt"})}
    )  # gpu-3: not read yet
    d = Dispatcher(db=svc.db, router=svc.router, monitor=svc.monitor, catalog=svc.catalog)
    views, _ = d.snapshot(svc.nodes)
    by_id = {v.id: v for v in views}
    assert by_id["gpu-2"].model_files == FILES | {"l.pt"} and by_id["gpu-3"].class_types is None
    graph = queued_graph(sqlite_db, GRAPH)
    job = sqlite_db.run(lambda s: get_job(s, job_id=graph.id))
    view, error = d._job_view(_as_queued(job))
    assert error is None and view is not None
    assert view.class_types == TYPES and view.model_files == FILES
    catalog = queued(sqlite_db)  # a catalog job: any node with its capability
    assert await d.tick(svc.nodes) == 2
    [attempt] = sqlite_db.run(lambda s: list_attempts(s, job_id=graph.id))
    assert attempt.node == "gpu-2"
    assert sqlite_db.run(lambda s: get_job(s, job_id=catalog.id)).status == "dispatched"
    nowhere = queued_graph(sqlite_db, {**GRAPH, "4": {"class_type": "Nowhere", "inputs": {}}})
    assert await d.tick(svc.nodes) == 0  # waits (no node has it), it is not failed
    assert sqlite_db.run(lambda s: get_job(s, job_id=nowhere.id)).status == "queued"
    broken = queued_graph(sqlite_db, None)
    await d.tick(svc.nodes)
    assert sqlite_db.run(lambda s: get_job(s, job_id=broken.id)).status == "failed"


def _as_queued(job: Any) -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(
        id=job.id, workflow=job.workflow, capability=job.capability, params=job.params,
        pinned_node=job.pinned_node, faulted=[],
    )  # fmt: skip
