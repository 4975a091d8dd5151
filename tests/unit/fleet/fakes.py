"""Fakes for the fleet's tests: a clock, ComfyUI nodes and Prefect clients that nothing needs to
run, and a fleet service over them."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import httpx
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.responses import SetStateStatus

from comfyfleet.fleet.monitor import Monitor
from comfyfleet.fleet.recovery import Recovery
from comfyfleet.fleet.service import FleetService
from comfyfleet.settings import HealthSettings, NodeConfig, Settings
from comfyfleet.store import (
    Database,
    FleetFacts,
    claim_job,
    create_attempt,
    create_job,
    fleet_facts,
    mark_attempt_running,
    utcnow,
)
from comfyfleet.store.users import ensure_service_user

REPO = Path(__file__).resolve().parents[3]


HEALTH = HealthSettings(
    probe_interval_s=1, failures_to_open=3, open_cooldown_s=10, quarantine_faults_per_hour=2
)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeNode:
    """/system_stats, /queue and /models/checkpoints of one node that can go down."""

    def __init__(self) -> None:
        self.up = True
        self.running = 0
        self.pending = 0
        self.ours: list[str] = []  # attempt ids (this fleet's prompts) queued too
        self.checkpoints = ["tiny-sd15.ckpt"]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/system_stats":
            return httpx.Response(200, json={"system": {}, "devices": []})
        if request.url.path == "/queue":
            return httpx.Response(200, json={
                "queue_running": [[0, f"r{i}"] for i in range(self.running)],
                "queue_pending": [[1, f"p{i}"] for i in range(self.pending)]
                + [[2, prompt] for prompt in self.ours],
            })  # fmt: skip
        if request.url.path == "/models/checkpoints":
            return httpx.Response(200, json=self.checkpoints)
        return httpx.Response(404)


def monitor(node: FakeNode, clock: Clock, **kw: Any) -> Monitor:
    mon = Monitor(HEALTH, transport=httpx.MockTransport(node), clock=clock, **kw)
    mon.track("gpu-1", "http://gpu-1:8188/")
    return mon


async def probes(mon: Monitor, clock: Clock, n: int, step: float = 1.0) -> None:
    for _ in range(n):
        await mon.probe_all()
        clock.now += step


class FakePrefect:
    """The few Prefect client calls the fleet service makes, in memory."""

    def __init__(self) -> None:
        self.pools: dict[str, bool] = {}
        self.runs: dict[str, SimpleNamespace] = {}
        self.states: list[tuple[str, str, bool]] = []

    def run(self, kind: StateType, *, started_ago: float | None = None) -> str:
        run_id = uuid4()
        now = utcnow()
        since = now - timedelta(seconds=started_ago) if started_ago is not None else None
        self.runs[str(run_id)] = SimpleNamespace(
            id=run_id, state_type=kind, start_time=since,
            state=SimpleNamespace(timestamp=since or now, message=""),
        )  # fmt: skip
        return str(run_id)

    async def read_work_pools(self, work_pool_filter: Any = None) -> list[Any]:
        wanted = work_pool_filter.name.any_
        return [SimpleNamespace(name=n, is_paused=p) for n, p in self.pools.items() if n in wanted]

    async def update_work_pool(self, name: str, update: Any) -> None:
        self.pools[name] = update.is_paused

    async def read_flow_runs(self, *, flow_run_filter: Any, limit: int | None = None) -> list:
        ids = {str(i) for i in flow_run_filter.id.any_}
        return [r for key, r in self.runs.items() if key in ids]

    async def set_flow_run_state(self, run_id: Any, state: Any, force: bool = False) -> Any:
        run = self.runs.get(str(run_id))
        self.states.append((str(run_id), state.type.value, force))
        if run is None:
            return SimpleNamespace(status=SetStateStatus.ABORT)
        if not force and run.state_type not in (StateType.SCHEDULED, StateType.PENDING):
            return SimpleNamespace(status=SetStateStatus.REJECT)
        run.state_type = state.type
        run.state.message = state.message
        return SimpleNamespace(status=SetStateStatus.ACCEPT)


def service(db: Database, tmp_path: Path, *nodes: NodeConfig) -> FleetService:
    settings = Settings(
        database={"url": str(db.url)}, health=HEALTH.model_dump(),
        workflow_dirs=[REPO / "workflows", REPO / "tests" / "workflows"],
    )  # fmt: skip
    svc = FleetService(settings, db=db)
    svc.state_file = tmp_path / "fleet-nodes.json"
    svc.nodes = list(nodes)
    for node in nodes:
        health = svc.monitor.track(node.id, node.url)
        health.last_seen = time.time()
    return svc


def dispatched_attempt(db: Database, node: str, *, running: bool = False) -> Any:
    def make(s: Any) -> Any:
        job = create_job(s, workflow="delay", capability="delay", params={"seconds": 1},
                         owner=ensure_service_user(s))  # fmt: skip
        claim_job(s, job_id=job.id)
        attempt = create_attempt(s, job_id=job.id, node=node)
        if running:
            mark_attempt_running(s, attempt_id=attempt.id, lease_s=10)
        return attempt

    return db.run(make)


def read_facts(session: Any) -> FleetFacts:
    """The store's facts as the fleet service reads them (faults of the last hour)."""
    return fleet_facts(session, since=utcnow() - timedelta(hours=1))


def gpu(n: int, **kw: Any) -> NodeConfig:
    return NodeConfig(id=f"gpu-{n}", url=f"http://gpu-{n}:8188", capabilities=["delay"], **kw)


class FakeDeployments:
    """A Prefect client with a deployment for every `<flow>/<node>`: records the runs created,
    answers for the runs it knows (`runs`: id → state type), and the states it was asked for."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.runs: dict[str, StateType] = {}
        self.started: dict[str, Any] = {}  # id → start_time, for runs that started
        self.states: list[tuple[str, str]] = []
        self.deleted: list[str] = []

    async def read_deployment_by_name(self, name: str) -> Any:
        return SimpleNamespace(id=uuid4(), name=name, parameter_openapi_schema={"properties": {}})

    async def create_flow_run_from_deployment(self, deployment_id: Any, **kw: Any) -> Any:
        self.created.append(kw)
        run_id = uuid4()
        self.runs[str(run_id)] = StateType.SCHEDULED
        return SimpleNamespace(id=run_id, name=f"run-{len(self.created)}")

    async def read_flow_run(self, run_id: Any) -> Any:
        from prefect.exceptions import ObjectNotFound

        if str(run_id) not in self.runs:
            raise ObjectNotFound(httpx.HTTPStatusError("404", request=None, response=None))  # type: ignore[arg-type]
        return SimpleNamespace(id=run_id, state_type=self.runs[str(run_id)],
                               start_time=self.started.get(str(run_id)))  # fmt: skip

    async def set_flow_run_state(self, run_id: Any, state: Any, force: bool = False) -> Any:
        self.states.append((str(run_id), state.type.value))
        self.runs[str(run_id)] = state.type
        return SimpleNamespace(status=SetStateStatus.ACCEPT)

    async def delete_flow_run(self, run_id: Any) -> None:
        self.deleted.append(str(run_id))
        self.runs.pop(str(run_id), None)


def recovery(svc: FleetService) -> Recovery:
    """The fleet service's recovery."""
    return Recovery(db=svc.db, fleet=svc, queue_timeout_s=3600)
