"""The fleet monitor (circuit breaker, quarantine), the node-state snapshot, and the fleet
service's decisions (pools follow nodes, attempts that have not started move, lost ones are
found), against fake nodes and a fake Prefect client: nothing needs to run."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import httpx
import pytest
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.responses import SetStateStatus

from comfyfleet.fleet import registry
from comfyfleet.fleet.monitor import Monitor
from comfyfleet.fleet.registry import NodeState, merge_state, node_states, node_status
from comfyfleet.fleet.service import PRESTART_BUDGET_S, FleetService, read_facts
from comfyfleet.settings import HealthSettings, NodeConfig, Settings
from comfyfleet.store import (
    Database,
    audit,
    claim_job,
    create_attempt,
    create_job,
    get_job,
    list_attempts,
    mark_attempt_running,
    requeue_job_after_node_fault,
    set_attempt_flow_run,
    utcnow,
)
from comfyfleet.store.users import ensure_service_user

REPO = Path(__file__).resolve().parents[2]
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
        self.checkpoints = ["tiny-sd15.ckpt"]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/system_stats":
            return httpx.Response(200, json={"system": {}, "devices": []})
        if request.url.path == "/queue":
            return httpx.Response(200, json={
                "queue_running": [[0, f"r{i}"] for i in range(self.running)],
                "queue_pending": [[1, f"p{i}"] for i in range(self.pending)],
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


# -- circuit breaker ---------------------------------------------------------------------------


async def test_a_node_is_healthy_only_after_it_answered_a_probe() -> None:
    node, clock = FakeNode(), Clock()
    mon = monitor(node, clock)
    assert not mon.nodes["gpu-1"].healthy  # never probed: no attempts yet
    node.running, node.pending = 1, 2
    await probes(mon, clock, 1)
    health = mon.nodes["gpu-1"]
    assert health.healthy and health.state == "closed"
    assert health.queue_depth == 3
    assert health.models == {"checkpoints": frozenset({"tiny-sd15.ckpt"})}
    assert health.url == "http://gpu-1:8188"


async def test_k_failures_open_the_circuit_and_a_half_open_probe_closes_it() -> None:
    node, clock = FakeNode(), Clock()
    mon = monitor(node, clock)
    await probes(mon, clock, 1)
    node.up = False
    await probes(mon, clock, 2)
    health = mon.nodes["gpu-1"]
    assert health.state == "closed" and health.failures == 2  # K = 3: not yet
    await probes(mon, clock, 1)
    assert health.state == "open" and not health.healthy
    assert "ConnectError" in (health.last_error or "")
    node.up = True
    await probes(mon, clock, 5)  # within the cool-down the node is not even asked
    assert health.state == "open"
    clock.now = health.opened_at + HEALTH.open_cooldown_s
    await mon.probe(health)  # the trial probe: half-open, then closed on success
    assert health.state == "closed" and health.healthy and health.last_error is None


async def test_a_failed_trial_probe_opens_the_circuit_again_without_counting_a_new_fault() -> None:
    node, clock = FakeNode(), Clock()
    mon = monitor(node, clock)
    await probes(mon, clock, 1)
    node.up = False
    await probes(mon, clock, 3)
    health = mon.nodes["gpu-1"]
    first_open = health.opened_at
    clock.now = first_open + HEALTH.open_cooldown_s
    await mon.probe(health)
    assert health.state == "open" and health.opened_at > first_open
    assert len(health.openings) == 1  # a node that stays down is one fault, not one per trial
    assert not health.quarantined


# -- quarantine --------------------------------------------------------------------------------


async def flap(mon: Monitor, node: FakeNode, clock: Clock) -> None:
    """One flap: down until the circuit opens, back up through the half-open probe."""
    health = mon.nodes["gpu-1"]
    node.up = False
    while health.state != "open":
        await probes(mon, clock, 1)
    node.up = True
    clock.now = health.opened_at + HEALTH.open_cooldown_s
    await mon.probe(health)


async def test_a_flapping_node_is_quarantined_and_an_admin_releases_it() -> None:
    node, clock = FakeNode(), Clock()
    mon = monitor(node, clock)
    await probes(mon, clock, 1)
    health = mon.nodes["gpu-1"]
    for _ in range(2):
        await flap(mon, node, clock)
    assert health.healthy  # N = 2 faults: not more than N yet
    await flap(mon, node, clock)
    assert health.quarantined and not health.healthy
    assert health.state == "closed"  # it answers, but stays out of rotation
    await probes(mon, clock, 10)
    assert health.quarantined
    mon.release("gpu-1")
    assert health.healthy and health.fault_times(clock.now) == []
    await flap(mon, node, clock)
    assert health.healthy  # the faults before the release are forgiven


async def test_attempt_faults_from_the_store_count_and_an_older_release_does_not_free_it() -> None:
    node, clock = FakeNode(), Clock()
    mon = monitor(node, clock)
    await probes(mon, clock, 1)
    health = mon.nodes["gpu-1"]
    hour_ago = clock.now - 4000
    mon.record_attempt_faults("gpu-1", [hour_ago, clock.now - 30, clock.now - 20])
    assert health.healthy  # the first one is older than an hour: 2 faults
    mon.record_attempt_faults("gpu-1", [clock.now - 30, clock.now - 20, clock.now - 10])
    assert health.quarantined
    mon.record_attempt_faults("gpu-1", [clock.now - 10], released_at=clock.now - 100)
    assert health.quarantined  # the admin released it before it was quarantined
    mon.record_attempt_faults("gpu-1", [clock.now - 10], released_at=clock.now)
    assert health.healthy


async def test_a_clean_probe_window_releases_a_quarantined_node() -> None:
    node, clock = FakeNode(), Clock()
    mon = monitor(node, clock, clean_window_s=60)
    await probes(mon, clock, 1)
    health = mon.nodes["gpu-1"]
    for _ in range(3):
        await flap(mon, node, clock)
    assert health.quarantined
    await probes(mon, clock, 30, step=1.0)
    assert health.quarantined  # 30 s of clean probes: not enough
    node.up = False
    await probes(mon, clock, 1)  # one failure restarts the window
    node.up = True
    await probes(mon, clock, 50, step=1.0)
    assert health.quarantined
    await probes(mon, clock, 15, step=1.0)
    assert health.healthy and health.fault_times(clock.now) == []


# -- the node-state snapshot -------------------------------------------------------------------


def test_node_status_words() -> None:
    assert node_status(enabled=True, in_flight=0, answers=True) == "up"
    assert node_status(enabled=True, in_flight=3, answers=False) == "down"
    assert node_status(enabled=True, in_flight=0, answers=None) == "unknown"
    assert node_status(enabled=False, in_flight=2, answers=True) == "draining"
    assert node_status(enabled=False, in_flight=0, answers=True) == "disabled"


def test_the_snapshot_round_trips_and_reads_unknown_once_stale(tmp_path: Path) -> None:
    path = tmp_path / "fleet-nodes.json"
    assert node_states(path=path) == []  # no fleet service yet
    state = NodeState(
        id="gpu-1", url="http://gpu-1:8188", state="up", circuit="closed", healthy=True,
        reachable=True, in_flight=1, queue_depth=2, models={"checkpoints": ["a.ckpt"]},
    )  # fmt: skip
    registry.write_snapshot(path, [state], probe_interval_s=2.0)
    assert [p.name for p in tmp_path.iterdir()] == ["fleet-nodes.json"]  # no temp file left
    [read] = node_states(path=path)
    assert read == state
    written = json.loads(path.read_text())["written_at"]
    [old] = node_states(path=path, now=written + registry.STALE_AFTER_S + 1)
    assert old.stale and old.state == "unknown" and not old.healthy


def test_merge_state_takes_the_registry_over_the_snapshot() -> None:
    known = NodeState(id="gpu-1", url="http://old:8188", state="up", healthy=True, reachable=True,
                      queue_depth=1)  # fmt: skip
    config = NodeConfig(id="gpu-1", url="http://new:8188", capacity=4, enabled=False)
    merged = merge_state(config, known, in_flight=2)
    assert merged.url == "http://new:8188" and merged.capacity == 4
    assert merged.state == "draining" and merged.draining and not merged.healthy
    assert merged.load == 0.5
    fresh = merge_state(NodeConfig(id="gpu-9", url="http://x:1"), None, in_flight=0)
    assert fresh.state == "unknown"


def test_state_path_is_beside_the_sqlite_database(tmp_path: Path) -> None:
    settings = Settings(database={"url": f"sqlite:///{tmp_path / 'x' / 'cf.db'}"})
    assert registry.state_path(settings) == tmp_path / "x" / "fleet-nodes.json"
    mysql = Settings(database={"url": "mysql+pymysql://u:p@db/comfyfleet"})
    assert registry.state_path(mysql).name == "fleet-nodes.json"


# -- the fleet service's decisions -------------------------------------------------------------


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


def gpu(n: int, **kw: Any) -> NodeConfig:
    return NodeConfig(id=f"gpu-{n}", url=f"http://gpu-{n}:8188", capabilities=["delay"], **kw)


async def test_pools_follow_the_nodes_and_the_snapshot_says_why(
    sqlite_db: Database, tmp_path: Path
) -> None:
    svc = service(sqlite_db, tmp_path, gpu(1), gpu(2), gpu(3, enabled=False))
    prefect = FakePrefect()
    prefect.pools = {"comfyui-gpu-1": True, "comfyui-gpu-2": False, "comfyui-gpu-3": False}
    svc.monitor.nodes["gpu-2"].state = "open"
    await svc.sync_pools(prefect)
    assert prefect.pools == {"comfyui-gpu-1": False, "comfyui-gpu-2": True, "comfyui-gpu-3": True}
    svc.write_snapshot()
    states = {s.id: s for s in node_states(path=svc.state_file)}
    assert states["gpu-1"].healthy and states["gpu-1"].paused is False
    assert states["gpu-2"].circuit == "open" and not states["gpu-2"].healthy
    assert states["gpu-3"].state == "disabled" and states["gpu-3"].paused


async def test_attempts_that_have_not_started_move_off_a_node_out_of_rotation(
    sqlite_db: Database, tmp_path: Path
) -> None:
    prefect = FakePrefect()
    waiting = dispatched_attempt(sqlite_db, "gpu-1")
    taken = dispatched_attempt(sqlite_db, "gpu-1")
    running = dispatched_attempt(sqlite_db, "gpu-1", running=True)
    for attempt, kind in ((waiting, StateType.SCHEDULED), (taken, StateType.RUNNING),
                          (running, StateType.RUNNING)):  # fmt: skip
        run_id = prefect.run(kind)
        sqlite_db.run(lambda s, a=attempt, r=run_id: set_attempt_flow_run(
            s, attempt_id=a.id, flow_run_id=r))  # fmt: skip
    waiting_run = next(k for k, r in prefect.runs.items() if r.state_type == StateType.SCHEDULED)
    moved = await registry.move_pending(prefect, sqlite_db, "gpu-1", why="circuit open")
    assert moved == 1  # only the Scheduled run: the others have a worker already
    job = sqlite_db.run(lambda s: get_job(s, job_id=waiting.job_id, with_details=True))
    assert job.status == "queued" and job.node_faults == 1
    [attempt] = job.attempts
    assert attempt.status == "node_fault" and registry.MOVED in attempt.reason
    assert prefect.states == [(waiting_run, "CANCELLED", False)]  # not forced: check-then-move
    assert sqlite_db.run(lambda s: get_job(s, job_id=running.job_id)).status == "running"


class FakeDispatcher:
    def __init__(self) -> None:
        self.started: list[tuple[str, str]] = []

    async def start_flow_run(self, job: Any, *, node: str, attempt_id: str,
                             idempotency_key: str, tags: list[str]) -> Any:  # fmt: skip
        self.started.append((attempt_id, idempotency_key))
        return SimpleNamespace(id=uuid4(), name=f"run-{len(self.started)}")


async def test_runs_lost_before_they_started_get_a_new_run_for_the_same_attempt(
    sqlite_db: Database, tmp_path: Path
) -> None:
    svc = service(sqlite_db, tmp_path, gpu(1), gpu(2))
    svc.dispatcher = FakeDispatcher()
    prefect = FakePrefect()
    fresh = dispatched_attempt(sqlite_db, "gpu-1")
    alive = dispatched_attempt(sqlite_db, "gpu-1")
    dead = dispatched_attempt(sqlite_db, "gpu-1")
    stuck = dispatched_attempt(sqlite_db, "gpu-1")
    crashed = dispatched_attempt(sqlite_db, "gpu-1")
    cancelled = dispatched_attempt(sqlite_db, "gpu-1")
    moved = dispatched_attempt(sqlite_db, "gpu-1")  # cancelled to move it; requeue not done
    node_out = dispatched_attempt(sqlite_db, "gpu-2")
    gone_pid = 2**22 + 12345  # above pid_max: no such process
    here = __import__("socket").gethostname()
    runs = {
        fresh.id: prefect.run(StateType.RUNNING, started_ago=2),
        alive.id: prefect.run(StateType.RUNNING, started_ago=PRESTART_BUDGET_S + 5),
        dead.id: prefect.run(StateType.RUNNING, started_ago=1),
        stuck.id: prefect.run(StateType.PENDING, started_ago=PRESTART_BUDGET_S + 5),
        crashed.id: prefect.run(StateType.CRASHED),
        cancelled.id: prefect.run(StateType.CANCELLED),
        moved.id: prefect.run(StateType.CANCELLED),
        node_out.id: prefect.run(StateType.CRASHED),
    }
    prefect.runs[runs[moved.id]].state.message = f"{registry.MOVED}: circuit open"
    prefect.runs[runs[alive.id]].infrastructure_pid = f"{here}:{__import__('os').getpid()}:x"
    prefect.runs[runs[dead.id]].infrastructure_pid = f"{here}:{gone_pid}:x"
    for attempt_id, run_id in runs.items():
        sqlite_db.run(lambda s, a=attempt_id, r=run_id: set_attempt_flow_run(
            s, attempt_id=a, flow_run_id=r))  # fmt: skip
    from sqlalchemy import update

    from comfyfleet.store import Attempt

    old = utcnow() - timedelta(seconds=10)
    sqlite_db.run(lambda s: s.execute(update(Attempt).values(created_at=old)))
    svc.monitor.nodes["gpu-2"].state = "open"
    svc.monitor.nodes["gpu-2"].url = "http://127.0.0.1:9"  # nothing answers: the prompt is gone
    await svc.watch_pending(prefect)

    def status(attempt: Any) -> tuple[str, list[str]]:
        job = sqlite_db.run(lambda s: get_job(s, job_id=attempt.job_id, with_details=True))
        return job.status, [a.status for a in job.attempts]

    rerun = {attempt_id for attempt_id, _ in svc.dispatcher.started}
    assert rerun == {dead.id, stuck.id, crashed.id}  # same attempt, new flow run
    for attempt in (fresh, alive, dead, stuck, crashed):
        assert status(attempt) == ("dispatched", ["pending"])
    assert status(cancelled) == ("cancelled", ["cancelled"])  # cancelled in Prefect: by a person
    assert status(node_out) == ("queued", ["node_fault"])  # its node is out: another node
    assert status(moved) == ("queued", ["node_fault"])
    stopped = {run_id: (st, force) for run_id, st, force in prefect.states}
    assert stopped[runs[stuck.id]] == ("CANCELLING", True)  # it may live: told to stop
    assert stopped[runs[dead.id]] == ("CRASHED", True)
    assert runs[alive.id] not in stopped and runs[fresh.id] not in stopped


async def test_store_facts_feed_quarantine_release_and_last_checkpoint(
    sqlite_db: Database, tmp_path: Path
) -> None:
    svc = service(sqlite_db, tmp_path, gpu(1), gpu(2))
    for _ in range(3):
        attempt = dispatched_attempt(sqlite_db, "gpu-1", running=True)
        sqlite_db.run(lambda s, a=attempt: requeue_job_after_node_fault(
            s, job_id=a.job_id, attempt_id=a.id, reason="gone", max_node_faults=9))  # fmt: skip
    unstarted = dispatched_attempt(sqlite_db, "gpu-2")
    sqlite_db.run(lambda s: requeue_job_after_node_fault(
        s, job_id=unstarted.job_id, attempt_id=unstarted.id, reason="moved"))  # fmt: skip

    def t2i(s: Any) -> None:
        job = create_job(s, workflow="sd15-basic", capability="text_to_image",
                         params={"prompt": "x", "checkpoint": "sd15"},
                         owner=ensure_service_user(s))  # fmt: skip
        claim_job(s, job_id=job.id)
        attempt = create_attempt(s, job_id=job.id, node="gpu-2")
        mark_attempt_running(s, attempt_id=attempt.id, lease_s=10)

    sqlite_db.run(t2i)
    facts = sqlite_db.run(read_facts, readonly=True)
    assert len(facts.faults["gpu-1"]) == 3 and "gpu-2" not in facts.faults
    assert facts.in_flight == {"gpu-2": 1}
    svc.facts = facts
    for node_id in ("gpu-1", "gpu-2"):
        svc.monitor.record_attempt_faults(node_id, facts.faults.get(node_id, ()))
    assert svc.monitor.nodes["gpu-1"].quarantined  # 3 > N = 2
    assert svc.out_of_rotation(svc.nodes[0]) == "node quarantined"
    assert svc._checkpoint("gpu-2") == "sd15"
    sqlite_db.run(lambda s: audit(s, actor="test", action="node.enable", target="gpu-1"))
    facts = sqlite_db.run(read_facts, readonly=True)
    svc.monitor.record_attempt_faults(
        "gpu-1", facts.faults["gpu-1"], released_at=facts.releases["gpu-1"]
    )
    assert svc.monitor.nodes["gpu-1"].healthy
    assert [a.status for a in sqlite_db.run(lambda s: list_attempts(s, job_id=unstarted.job_id))
            ] == ["node_fault"]  # fmt: skip


@pytest.mark.parametrize("enabled", [True, False])
async def test_set_enabled_writes_the_block_audits_and_pauses_on_disable(
    sqlite_db: Database, enabled: bool
) -> None:
    prefect = FakePrefect()
    prefect.pools = {"comfyui-gpu-1": False}
    updates: list[dict[str, Any]] = []

    async def read_block(name: str, block_type_slug: str) -> Any:
        assert block_type_slug == "comfyui-node"
        return SimpleNamespace(id=uuid4(), name=name, data={"url": "http://x"})

    async def update_block(block_id: Any, update: Any) -> None:
        updates.append(update.data)

    prefect.read_block_document_by_name = read_block  # type: ignore[attr-defined]
    prefect.update_block_document = update_block  # type: ignore[attr-defined]
    await registry.set_enabled(prefect, "gpu-1", enabled, db=sqlite_db, actor="test")
    assert updates == [{"enabled": enabled}]
    assert prefect.pools["comfyui-gpu-1"] is (not enabled)
    from comfyfleet.store import list_audit

    [entry] = sqlite_db.run(list_audit, readonly=True)
    assert entry.action == f"node.{'enable' if enabled else 'disable'}" and entry.target == "gpu-1"
