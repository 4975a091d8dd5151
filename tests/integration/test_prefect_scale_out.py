"""Prefect scaled out: a server with two API processes (`prefect.api_workers: 2`) on PostgreSQL
and Redis, its loop services in a process of their own, and two ComfyFleet workers serving the
same node pools. One API process is killed with SIGKILL while jobs run; uvicorn's supervisor
starts another, the clients' retries carry the requests that failed, and every job completes
exactly once: one completed attempt, one output, one executed prompt on the nodes, one completed
task run in Prefect.

The control plane is the test's own (Prefect server, SQLite job store, fleet service, workers,
two real ComfyUI nodes), so the session's fleet never sees these jobs. Redis: database 7 of
127.0.0.1:6379, emptied before and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from comfyfleet import jobs
from comfyfleet.auth import Principal, create_user
from comfyfleet.local.node import LocalComfyUI, ensure_comfyui_install, free_port
from comfyfleet.local.prefect_server import PrefectServer, prefect_env
from comfyfleet.settings import NodeConfig
from comfyfleet.store import Database, upgrade
from tests.fixtures.chaos import wait_for
from tests.fixtures.comfy import TEST_CUSTOM_NODES, VAR_DIR
from tests.fixtures.prefect import SESSION_DIR, Child, postgres, prefect_client
from tests.integration.test_dispatch import delay, wait_all

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/7"
NODES = ("so-1", "so-2")
JOBS = 16


@dataclass
class ScaledOut:
    server: PrefectServer
    db: Database
    alice: Principal
    nodes: dict[str, LocalComfyUI]
    workers: list[Child]

    def client(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """A Prefect client of this server (the test session has its own)."""
        return prefect_client(self.server.api_url)


def _flush_redis() -> None:
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()


@pytest.fixture(scope="module")
def scaled_out() -> Iterator[ScaledOut]:
    root = SESSION_DIR / "scale-out"
    root.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        pg_name = f"cf_so_{secrets.token_hex(5)}"
        assert postgres(f'CREATE DATABASE "{pg_name}"'), "PostgreSQL on 127.0.0.1:5432 is down"
        stack.callback(postgres, f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
        _flush_redis()
        stack.callback(_flush_redis)
        server = PrefectServer(
            home=root / "prefect-home", port=free_port(), log_path=root / "prefect-server.log",
            database_url=f"postgresql+asyncpg://postgres@127.0.0.1:5432/{pg_name}",
            api_workers=2, redis_url=REDIS_URL,
        )  # fmt: skip
        stack.callback(server.stop)
        server.start(timeout=240)
        install = ensure_comfyui_install(VAR_DIR)
        nodes = {
            n: LocalComfyUI(install, root / "nodes" / n, custom_nodes=[TEST_CUSTOM_NODES])
            for n in NODES
        }
        for node in nodes.values():
            stack.callback(node.stop)
            node.start()
        for node in nodes.values():
            node.wait_ready(180)
        store = root / "comfyfleet.db"
        store.unlink(missing_ok=True)
        config = root / "comfyfleet.yaml"
        config.write_text(yaml.safe_dump({
            "nodes": [],  # the registry is the blocks the test applies
            "store": {"outputs_dir": str(root / "outputs"), "inputs_dir": str(root / "inputs")},
            "database": {"url": f"sqlite:///{store}"},
            "prefect": {"api_url": server.api_url},
            "workflow_dirs": [str(REPO / "workflows"), str(REPO / "tests" / "workflows")],
        }, sort_keys=False))  # fmt: skip
        db = Database(f"sqlite:///{store}")
        stack.callback(db.dispose)
        upgrade(db)
        user = db.run(lambda s: create_user(s, username="alice", password="correct horse battery"))
        env = {
            **os.environ,
            **prefect_env(api_url=server.api_url, home=root / "prefect-home"),
            "COMFYFLEET_CONFIG": str(config),
        }
        env.pop("PREFECT_API_AUTH_STRING", None)  # this server has no auth string
        workers = [
            Child([sys.executable, "-m", "comfyfleet.worker", "--pools-matching", "comfyui-*",
                   "--name", f"so-worker-{n}"], root / f"worker-{n}.log", env)
            for n in (1, 2)
        ]  # fmt: skip
        so = ScaledOut(server=server, db=db, alice=Principal(user=user), nodes=nodes,
                       workers=workers)  # fmt: skip
        asyncio.run(_register(so))
        service = Child([sys.executable, "-m", "comfyfleet.fleet"], root / "fleet.log", env)
        for child in (service, *workers):
            stack.callback(child.stop)
            child.start()
        yield so


async def _register(so: ScaledOut) -> None:
    from deployments import apply_fleet

    configs = [NodeConfig(id=n, url=node.url, capacity=2, capabilities=["delay"])
               for n, node in so.nodes.items()]  # fmt: skip
    async with so.client() as client:
        await apply_fleet(configs, client=client)


def _executed_prompts(node: LocalComfyUI) -> list[str]:
    history = httpx.get(f"{node.url}/history", params={"max_items": 1000}, timeout=10).json()
    return [pid for pid, item in history.items() if item.get("status", {}).get("completed")]


async def test_killing_one_of_two_api_processes_mid_run_loses_and_repeats_no_job(
    scaled_out: ScaledOut,
) -> None:
    so = scaled_out
    api = so.server.api_pids()
    assert len(api) == 2, f"expected two API processes under uvicorn's supervisor, got {api}"
    ids = [jobs.submit(so.db, delay(1.0, seed=9400 + i), principal=so.alice).id
           for i in range(JOBS)]  # fmt: skip

    def some_done_some_left() -> bool:
        states = Counter(jobs.get(so.db, i).status for i in ids)
        return states["completed"] >= 2 and states["queued"] >= 4

    await wait_for(some_done_some_left, timeout=240, what="jobs running with a backlog left")
    victim = api[0]
    os.kill(victim, signal.SIGKILL)
    replaced = await wait_for(
        lambda: len(pids := so.server.api_pids()) == 2 and victim not in pids and pids,
        timeout=120, what="uvicorn's supervisor replacing the killed API process",
    )  # fmt: skip
    done = await wait_all(so.db, ids, timeout=300)
    assert [j.status for j in done] == ["completed"] * JOBS, [(j.status, j.error) for j in done]
    executed = Counter(
        pid.rsplit("-", 1)[0] for node in so.nodes.values() for pid in _executed_prompts(node)
    )
    for job in done:
        assert [a.status for a in job.attempts if a.status == "completed"] == ["completed"]
        assert len(job.outputs) == 1 and job.outputs[0].node == job.node
        assert executed[job.id] == 1, f"{job.id} executed {executed[job.id]} times on the nodes"
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    async def task_run_states() -> dict[str, list[str]]:
        """Each job's task runs' states in Prefect (recorded from the runs' events)."""
        async with so.client() as client:
            runs = await client.read_task_runs(
                task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="-")), limit=200
            )
        states: dict[str, list[str]] = {i: [] for i in ids}
        for run in runs:
            job_id = next((i for i in ids if run.name.endswith(i)), None)
            if job_id is not None:
                states[job_id].append(run.state.name if run.state is not None else "none")
        return states

    async def each_one_completed_task_run() -> bool:
        return all(names == ["Completed"] for names in (await task_run_states()).values())

    try:
        await wait_for(each_one_completed_task_run, timeout=60, what="task runs recorded")
    except TimeoutError:
        states = await task_run_states()
        raise AssertionError({i: s for i, s in states.items() if s != ["Completed"]}) from None
    for worker in so.workers:
        assert worker.proc is not None and worker.proc.poll() is None, "a worker died"
    print(
        f"\n{JOBS} jobs on 2 API processes + 2 workers; API pid {victim} killed mid-run, "
        f"replaced by {sorted(set(replaced) - set(api))}; every job completed exactly once"
    )
