"""Admin routes (every one: 401 without a token, 403 for non-admins): nodes, backlog, performance,
fleet stats, catalog reload, and the old service's cluster paths (`/nodes`, `/cluster/stats`,
which it served without authentication; here they are admin routes like the rest)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from comfyfleet.api.deps import AdminUser, GatewayDep
from comfyfleet.api.errors import ERROR_RESPONSES, ErrorBody
from comfyfleet.api.fleet import NodeInfo
from comfyfleet.api.schemas import (
    BacklogRow,
    Body,
    Int,
    Name,
    NodeCreate,
    NodePerformance,
    RollupOut,
    StatsOut,
    TaskPerformance,
)
from comfyfleet.jobs import load_catalog
from comfyfleet.settings import NodeConfig
from comfyfleet.store import (
    audit,
    backlog_counts,
    gpu_seconds_rollup,
    live_attempts_by_node,
    priority_name,
    utcnow,
)
from comfyfleet.store.stats import attempt_counts, job_status_counts, job_times

router = APIRouter(tags=["admin"], responses=ERROR_RESPONSES)
_CONFLICT = {409: {"model": ErrorBody, "description": "Exists already / still busy."}}
HoursQuery = Annotated[int, Query(ge=1, le=24 * 90, description="Look back this many hours.")]


# -- nodes ------------------------------------------------------------------------------------


@router.get("/api/v2/admin/nodes", response_model=list[NodeInfo])
async def list_nodes(gateway: GatewayDep, admin: AdminUser) -> list[NodeInfo]:
    """Every node: configuration, state, circuit, load, queue, models, last error."""
    return await gateway.fleet.list_nodes()


@router.post("/api/v2/admin/nodes", response_model=NodeInfo, status_code=201, responses=_CONFLICT)
async def add_node(body: NodeCreate, gateway: GatewayDep, admin: AdminUser) -> NodeInfo:
    """Add a node (it gets jobs once it answers probes)."""
    data = body.model_dump(exclude_none=True)
    return await gateway.fleet.add_node(NodeConfig(**data))


@router.get("/api/v2/admin/nodes/{node_id}", response_model=NodeInfo)
async def get_node(node_id: str, gateway: GatewayDep, admin: AdminUser) -> NodeInfo:
    return await gateway.fleet.get_node(node_id)


@router.delete("/api/v2/admin/nodes/{node_id}", status_code=204, responses=_CONFLICT)
async def remove_node(node_id: str, gateway: GatewayDep, admin: AdminUser) -> Response:
    """Remove a node (drain it first when it has jobs in flight: 409 says so)."""
    await gateway.fleet.remove_node(node_id)
    return Response(status_code=204)


@router.post("/api/v2/admin/nodes/{node_id}/disable", response_model=NodeInfo)
async def disable_node(node_id: str, gateway: GatewayDep, admin: AdminUser) -> NodeInfo:
    """No new jobs for this node (running ones finish)."""
    return await gateway.fleet.set_enabled(node_id, False)


@router.post("/api/v2/admin/nodes/{node_id}/enable", response_model=NodeInfo)
async def enable_node(node_id: str, gateway: GatewayDep, admin: AdminUser) -> NodeInfo:
    return await gateway.fleet.set_enabled(node_id, True)


@router.post("/api/v2/admin/nodes/{node_id}/drain", response_model=NodeInfo)
async def drain_node(node_id: str, gateway: GatewayDep, admin: AdminUser) -> NodeInfo:
    """Finish what runs there, start nothing new (then remove it)."""
    return await gateway.fleet.drain(node_id)


class RefreshOut(BaseModel):
    node: str
    requested_at: datetime = Field(description="The fleet service reads the node's inventory "
                                   "again unless it began a read after this.")  # fmt: skip


@router.post("/api/v2/admin/nodes/{node_id}/refresh", response_model=RefreshOut, status_code=202)
async def refresh_node(node_id: str, gateway: GatewayDep, admin: AdminUser) -> RefreshOut:
    """Read again what the node has installed (class types, models), e.g. after installing
    custom nodes on it. The fleet service does it after its next probe of the node."""
    await gateway.fleet.get_node(node_id)  # 404 for an unknown node

    def record(session: Any) -> datetime:
        entry = audit(
            session, actor=session.merge(admin.user, load=False), action="node.refresh",
            target=node_id,
        )  # fmt: skip
        return entry.at

    at = await asyncio.to_thread(gateway.db.run, record)
    return RefreshOut(node=node_id, requested_at=at)


# -- backlog, performance, stats --------------------------------------------------------------


@router.get("/api/v2/admin/backlog", response_model=list[BacklogRow])
def backlog(gateway: GatewayDep, admin: AdminUser) -> list[BacklogRow]:
    """Queued jobs by capability and priority."""
    rows = gateway.db.run(backlog_counts, readonly=True)
    return [BacklogRow(capability=c, priority=priority_name(p), queued=n) for c, p, n in rows]


def node_performance(session: Any) -> list[NodePerformance]:
    stats: dict[str, dict[str, Any]] = {}
    for node, status, count, seconds in attempt_counts(session):
        row = stats.setdefault(
            node,
            {
                "node": node,
                "attempts": 0,
                "completed": 0,
                "failed": 0,
                "node_faults": 0,
                "gpu_seconds": 0.0,
            },
        )
        row["attempts"] += count
        row["gpu_seconds"] += seconds
        key = {"completed": "completed", "failed": "failed", "node_fault": "node_faults"}.get(
            status
        )
        if key:
            row[key] += int(count)
    live = live_attempts_by_node(session)
    return [
        NodePerformance(**row, in_flight=live.get(node, 0)) for node, row in sorted(stats.items())
    ]


@router.get("/api/v2/admin/performance/nodes", response_model=list[NodePerformance])
def performance_nodes(gateway: GatewayDep, admin: AdminUser) -> list[NodePerformance]:
    """Per node: attempts by outcome, GPU-seconds, jobs in flight (the old service's path)."""
    return gateway.db.run(node_performance, readonly=True)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def task_performance(session: Any, hours: int) -> list[TaskPerformance]:
    since = utcnow() - timedelta(hours=hours)
    by_wf: dict[str, dict[str, Any]] = {}
    for _, workflow, status, created, dispatched, started, finished in job_times(
        session, created_since=since
    ):
        row = by_wf.setdefault(workflow, {"by_status": {}, "wait": [], "run": []})
        row["by_status"][status] = row["by_status"].get(status, 0) + 1
        if dispatched or started:
            row["wait"].append(((dispatched or started) - created).total_seconds())
        if started and finished:
            row["run"].append((finished - started).total_seconds())
    return [
        TaskPerformance(
            workflow=wf,
            total=sum(r["by_status"].values()),
            by_status=r["by_status"],
            avg_queue_wait_s=_mean(r["wait"]),
            avg_run_s=_mean(r["run"]),
            p95_run_s=_pct(r["run"], 0.95),
        )
        for wf, r in sorted(by_wf.items())
    ]


@router.get("/api/v2/admin/performance/tasks", response_model=list[TaskPerformance])
def performance_tasks(
    gateway: GatewayDep, admin: AdminUser, hours: HoursQuery = 24
) -> list[TaskPerformance]:
    """Per workflow over the last `hours`: jobs by status, queue wait, run time."""
    return gateway.db.run(lambda s: task_performance(s, hours), readonly=True)


def fleet_stats(session: Any, hours: int) -> StatsOut:
    since = utcnow() - timedelta(hours=hours)
    buckets: dict[str, dict[str, Any]] = {}
    waits: dict[str, list[float]] = {}
    for _, workflow, status, created, dispatched, _, _ in job_times(session, created_since=since):
        hour = created.replace(minute=0, second=0, microsecond=0).isoformat()
        row = buckets.setdefault(
            hour, {"hour": hour, "submitted": 0, "completed": 0, "failed": 0, "cancelled": 0}
        )
        row["submitted"] += 1
        if status in ("completed", "failed", "cancelled"):
            row[status] += 1
        if dispatched is not None:
            waits.setdefault(workflow, []).append((dispatched - created).total_seconds())

    def rollup(by: str) -> list[RollupOut]:
        rows = gpu_seconds_rollup(session, by=by, since=since)  # type: ignore[arg-type]
        return [
            RollupOut(key=r.key, gpu_seconds=r.gpu_seconds, attempts=r.attempts, jobs=r.jobs)
            for r in rows
        ]

    return StatsOut(
        jobs_per_hour=[buckets[k] for k in sorted(buckets)],
        gpu_seconds_by_node=rollup("node"),
        gpu_seconds_by_user=rollup("user"),
        queue_wait_by_workflow={wf: _mean(v) for wf, v in sorted(waits.items())},
    )


@router.get("/api/v2/admin/stats", response_model=StatsOut)
def stats(gateway: GatewayDep, admin: AdminUser, hours: HoursQuery = 24) -> StatsOut:
    """Fleet stats for charts: jobs per hour, GPU-seconds per node and user, queue wait."""
    return gateway.db.run(lambda s: fleet_stats(s, hours), readonly=True)


class ReloadOut(BaseModel):
    workflows: list[str]


@router.post("/api/v2/admin/workflows/reload", response_model=ReloadOut)
async def reload_workflows(gateway: GatewayDep, admin: AdminUser) -> ReloadOut:
    """Read the workflow directories again (new or changed workflows without a restart)."""
    gateway.catalog = await asyncio.to_thread(load_catalog, gateway.settings)
    return ReloadOut(workflows=sorted(gateway.catalog.ids()))


# -- the old service's cluster paths ----------------------------------------------------------


class LegacyNodeRegister(Body):
    """The old `POST /nodes/register` body."""

    model_config = ConfigDict(extra="forbid")

    node_id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    host: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.\-]+$")
    port: Int = Field(default=8188, ge=1, le=65535)
    max_concurrent: Int = Field(default=2, ge=1, le=64)
    capabilities: list[Name] | None = Field(default=None, max_length=32)
    metadata: dict[str, Any] = Field(default_factory=dict)


class ClusterStats(BaseModel):
    nodes: int
    nodes_up: int
    capacity: int
    in_flight: int
    queued: int
    running: int


@router.get("/nodes", response_model=list[NodeInfo], tags=["legacy"])
async def legacy_nodes(gateway: GatewayDep, admin: AdminUser) -> list[NodeInfo]:
    return await gateway.fleet.list_nodes()


@router.post(
    "/nodes/register",
    response_model=NodeInfo,
    status_code=201,
    tags=["legacy"],
    responses=_CONFLICT,
)
async def legacy_register(
    body: LegacyNodeRegister, gateway: GatewayDep, admin: AdminUser
) -> NodeInfo:
    config: dict[str, Any] = {
        "id": body.node_id,
        "url": f"http://{body.host}:{body.port}",
        "capacity": body.max_concurrent,
        "metadata": body.metadata,
    }
    if body.capabilities is not None:
        config["capabilities"] = body.capabilities
    return await gateway.fleet.add_node(NodeConfig(**config))


@router.get("/nodes/{node_id}/health", response_model=NodeInfo, tags=["legacy"])
async def legacy_node_health(node_id: str, gateway: GatewayDep, admin: AdminUser) -> NodeInfo:
    return await gateway.fleet.get_node(node_id)


@router.get("/cluster/stats", response_model=ClusterStats, tags=["legacy"])
async def cluster_stats(gateway: GatewayDep, admin: AdminUser) -> ClusterStats:
    nodes = await gateway.fleet.list_nodes()

    by_status = await asyncio.to_thread(gateway.db.run, job_status_counts, readonly=True)
    return ClusterStats(
        nodes=len(nodes),
        nodes_up=sum(1 for n in nodes if n.state in ("up", "draining")),
        capacity=sum(n.capacity for n in nodes),
        in_flight=sum(n.in_flight for n in nodes),
        queued=by_status.get("queued", 0),
        running=by_status.get("running", 0) + by_status.get("dispatched", 0),
    )
