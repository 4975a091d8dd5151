"""Multi-host: the control plane on one host, ComfyUI nodes (and one node's worker) on others.

Three network namespaces play three GPU hosts (tests/support/netns.py): host i is `10.77.i.2`,
joined to the control plane (this test's own namespace, `10.77.i.1` on its side) by a veth pair,
and runs a real ComfyUI node on `10.77.i.2:8188`. The control plane, all in the root namespace:
a Prefect server of its own on PostgreSQL (through `prefect.database_url`), a fresh MariaDB job
store, the fleet service and one worker for the pools of hosts 1 and 2. Host 3 runs its own
worker inside its namespace, the remote-worker path: it reaches the Prefect API and MariaDB
only at `10.77.3.1` (the control plane listens there through a TCP forwarder, as a server
listens on its LAN address; both services bind 127.0.0.1 here), finds its ComfyUI at the URL
in the node's registry block (its own address), and writes outputs into the output store
directory, a filesystem the hosts share (namespaces share the disk, as NFS would).

The control plane is separate from the test session's fleet (its own Prefect server, store and
fleet service), so the session's nodes never receive these jobs and this fleet's health
settings (probes every 0.5 s, K = 2, cool-down 2 s) touch no other test.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from comfyfleet import jobs
from comfyfleet.auth import Principal, create_user
from comfyfleet.fleet.provision import pool_name
from comfyfleet.fleet.state import node_states
from comfyfleet.local.node import LocalComfyUI, ensure_comfyui_install, free_port
from comfyfleet.local.prefect_server import PrefectServer, prefect_env
from comfyfleet.settings import NodeConfig
from comfyfleet.store import Database, upgrade
from tests.fixtures.chaos import wait_for
from tests.fixtures.comfy import TEST_CUSTOM_NODES, VAR_DIR
from tests.fixtures.db import mysql_database
from tests.fixtures.prefect import SESSION_DIR, Child, postgres, prefect_client
from tests.integration.test_dispatch import delay, wait_all
from tests.support.netns import NetnsLab, TcpForwarder

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
PREFIX = "cfmh"
HOSTS = 3
REMOTE = 3  # the host whose worker runs inside its namespace
COMFY_PORT = 8188  # every host has its own port space
MYSQL_PORT = 3306


def node_id(i: int) -> str:
    return f"mh-{i}"


class NamespacedComfyUI(LocalComfyUI):
    """A local ComfyUI node started inside a network namespace (`ip netns exec` execs it, so
    the PID is the server's own)."""

    def __init__(self, *args: Any, netns: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.netns = netns

    def command(self) -> list[str]:
        return [*self.netns, *super().command()]


@dataclass
class MultiHost:
    lab: NetnsLab
    api_url: str
    db: Database
    alice: Principal
    root_dir: Path
    outputs_dir: Path
    service: Child
    local_worker: Child
    remote_worker: Child
    prefect_port: int

    def client(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """A Prefect client of this control plane (the test session has its own server)."""
        return prefect_client(self.api_url)

    def state(self, node: str) -> Any:
        states = node_states(path=self.root_dir / "fleet-nodes.json")
        return next((s for s in states if s.id == node), None)

    def healthy(self, node: str) -> bool:
        state = self.state(node)
        return state is not None and state.healthy and state.circuit == "closed"

    async def paused(self, node: str) -> bool:
        async with self.client() as client:
            return bool((await client.read_work_pool(pool_name(node))).is_paused)

    async def infrastructure_pid(self, flow_run_id: str) -> int:
        """The PID of the worker process that ran a flow run (`host:pid:run` as it reports)."""
        async with self.client() as client:
            run = await client.read_flow_run(flow_run_id)
        return int(str(run.infrastructure_pid).split(":")[1])


def _config(root: Path, *, store_url: str, api_url: str, prefect_db_url: str) -> Path:
    path = root / "comfyfleet.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "nodes": [],  # the registry is the blocks the test applies
                "health": {"probe_interval_s": 0.5, "failures_to_open": 2, "open_cooldown_s": 2},
                "store": {"outputs_dir": str(root / "outputs"), "inputs_dir": str(root / "inputs")},
                "database": {"url": store_url},
                "prefect": {"api_url": api_url, "database_url": prefect_db_url},
                "workflow_dirs": [str(REPO / "workflows"), str(REPO / "tests" / "workflows")],
            },
            sort_keys=False,
        )
    )
    return path


@pytest.fixture(scope="module")
def multihost() -> Iterator[MultiHost]:
    """Namespaces, nodes, the control plane and the workers; all torn down, even on failure."""
    if os.geteuid() != 0:
        pytest.fail("the multi-host test builds network namespaces: run it as root (CI does)")
    root = SESSION_DIR / "multihost"
    root.mkdir(parents=True, exist_ok=True)
    lab = NetnsLab(PREFIX, HOSTS)
    with contextlib.ExitStack() as stack:
        stack.callback(lab.destroy)  # runs last: after everything inside is stopped
        lab.create()
        # the control plane: Prefect on a fresh PostgreSQL database, a fresh MariaDB store
        pg_name = f"cf_mh_{secrets.token_hex(5)}"
        assert postgres(f'CREATE DATABASE "{pg_name}"'), "PostgreSQL on 127.0.0.1:5432 is down"
        stack.callback(postgres, f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
        store_url = stack.enter_context(mysql_database(prefix="cf_mh"))
        port = free_port()
        api_url = f"http://127.0.0.1:{port}/api"
        prefect_db_url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{pg_name}"
        config = _config(root, store_url=store_url, api_url=api_url, prefect_db_url=prefect_db_url)
        server = PrefectServer(
            home=root / "prefect-home", port=port, database_url=prefect_db_url,
            log_path=root / "prefect-server.log",
        )  # fmt: skip
        stack.callback(server.stop)
        server.start(timeout=240)
        gateway = lab.gateway_address(REMOTE)
        forwarder = TcpForwarder(
            [((gateway, port), ("127.0.0.1", port)), ((gateway, MYSQL_PORT), ("127.0.0.1", 3306))]
        ).start()
        stack.callback(forwarder.close)
        # one ComfyUI per host, on the host's own address
        install = ensure_comfyui_install(VAR_DIR)
        nodes = [
            NamespacedComfyUI(
                install, root / "nodes" / node_id(i), host=lab.host_address(i), port=COMFY_PORT,
                custom_nodes=[TEST_CUSTOM_NODES], netns=lab.exec_prefix(i),
            )
            for i in range(1, HOSTS + 1)
        ]  # fmt: skip
        for node in nodes:
            stack.callback(node.stop)
            node.start()
        for node in nodes:
            node.wait_ready(180)
        db = Database(store_url)
        stack.callback(db.dispose)
        upgrade(db)
        user = db.run(lambda s: create_user(s, username="alice", password="correct horse battery"))
        env = {
            **os.environ,
            **prefect_env(api_url=api_url, home=root / "prefect-home"),
            "COMFYFLEET_CONFIG": str(config),
        }
        mh = MultiHost(
            lab=lab, api_url=api_url, db=db, alice=Principal(user=user), root_dir=root,
            outputs_dir=root / "outputs", prefect_port=port,
            service=Child([sys.executable, "-m", "comfyfleet.fleet"], root / "fleet.log", env),
            local_worker=Child(
                [sys.executable, "-m", "comfyfleet.worker",
                 *(a for i in range(1, HOSTS + 1) if i != REMOTE
                   for a in ("--pool", pool_name(node_id(i))))],
                root / "worker-control-host.log", env,
            ),
            remote_worker=Child(
                [*lab.exec_prefix(REMOTE), sys.executable, "-m", "comfyfleet.worker",
                 "--pool", pool_name(node_id(REMOTE))],
                root / f"worker-{node_id(REMOTE)}.log",
                {
                    **env,
                    "PREFECT_API_URL": f"http://{gateway}:{port}/api",
                    "COMFYFLEET_PREFECT__API_URL": f"http://{gateway}:{port}/api",
                    "COMFYFLEET_DATABASE__URL": store_url.replace(
                        "127.0.0.1:3306", f"{gateway}:{MYSQL_PORT}"
                    ),
                },
            ),
        )  # fmt: skip
        asyncio.run(_register(mh))
        for child in (mh.service, mh.local_worker, mh.remote_worker):
            stack.callback(child.stop)
            child.start()
        yield mh


async def _register(mh: MultiHost) -> None:
    from deployments import apply_fleet

    nodes = [
        NodeConfig(id=node_id(i), url=f"http://{mh.lab.host_address(i)}:{COMFY_PORT}",
                   capacity=2, capabilities=["delay"])
        for i in range(1, HOSTS + 1)
    ]  # fmt: skip
    async with mh.client() as client:
        await apply_fleet(nodes, client=client)


async def all_healthy(mh: MultiHost) -> None:
    ids = [node_id(i) for i in range(1, HOSTS + 1)]
    await wait_for(lambda: all(mh.healthy(n) for n in ids), timeout=90, what="hosts healthy")


def reaches(lab: NetnsLab, host: int, address: str, port: int) -> bool:
    """Can a process on `host` open a TCP connection to address:port?"""
    probe = f"import socket; socket.create_connection(({address!r}, {port}), timeout=3)"
    proc = subprocess.run(
        [*lab.exec_prefix(host), sys.executable, "-c", probe], capture_output=True, timeout=30
    )
    return proc.returncode == 0


async def test_jobs_are_routed_across_hosts_and_the_remote_worker_runs_its_hosts_jobs(
    multihost: MultiHost,
) -> None:
    mh = multihost
    lab, port = mh.lab, mh.prefect_port
    # the remote host reaches the control plane at its link address only, not on its loopback
    assert reaches(lab, REMOTE, lab.gateway_address(REMOTE), port)
    assert reaches(lab, REMOTE, lab.gateway_address(REMOTE), MYSQL_PORT)
    assert not reaches(lab, REMOTE, "127.0.0.1", port)
    assert not reaches(lab, REMOTE, lab.host_address(1), COMFY_PORT)  # hosts do not see each other
    await all_healthy(mh)
    ids = [jobs.submit(mh.db, delay(1.5, seed=9100 + i), principal=mh.alice).id for i in range(6)]
    done = await wait_all(mh.db, ids, timeout=240)
    assert [j.status for j in done] == ["completed"] * 6, [(j.status, j.error) for j in done]
    placed = sorted(j.node for j in done)
    assert placed == sorted(node_id(i) for i in range(1, HOSTS + 1) for _ in range(2)), placed
    for job in done:
        [attempt] = job.attempts
        ran_in = await mh.infrastructure_pid(attempt.flow_run_id)
        expected = mh.remote_worker if job.node == node_id(REMOTE) else mh.local_worker
        assert ran_in == expected.pid, f"{job.node}'s run ran in pid {ran_in}"
        [out] = job.outputs
        data = Path(out.path).read_bytes()
        assert Path(out.path).is_relative_to(mh.outputs_dir)
        assert out.node == job.node and out.sha256 == hashlib.sha256(data).hexdigest()
    print(f"\n6 jobs over 3 namespaced hosts: {placed}; {node_id(REMOTE)} by its own worker")


async def test_a_cut_link_fails_its_job_over_opens_the_circuit_and_restoring_it_closes_it(
    multihost: MultiHost,
) -> None:
    mh = multihost
    await all_healthy(mh)
    ids = [
        jobs.submit(mh.db, delay(8, seed=9200 + i, steps=16), principal=mh.alice).id
        for i in range(3)
    ]
    local_hosts = {node_id(i): i for i in range(1, HOSTS + 1) if i != REMOTE}

    def running_on_a_local_host() -> Any:
        running = [jobs.get(mh.db, i) for i in ids]
        return next(
            (j for j in running if j.status == "running" and j.progress_value > 0
             and j.node in local_hosts),
            None,
        )  # fmt: skip

    job = await wait_for(running_on_a_local_host, timeout=120, what="a job running on host 1/2")
    victim = job.node
    mh.lab.cut(local_hosts[victim])
    cut_at = time.monotonic()
    try:
        await wait_for(
            lambda: (s := mh.state(victim)) is not None and s.circuit in ("open", "half_open"),
            timeout=30, what=f"{victim}'s circuit open",
        )  # fmt: skip
        opened_after = time.monotonic() - cut_at
        await wait_for(lambda: mh.paused(victim), timeout=30, what=f"{victim}'s pool paused")
        done = await wait_all(mh.db, ids, timeout=240)
        moved = jobs.get(mh.db, job.id)
        failed_over_after = time.monotonic() - cut_at
        assert not mh.healthy(victim)  # still cut: the circuit stays out of closed
    finally:
        mh.lab.restore(local_hosts[victim])
    restored_at = time.monotonic()
    assert [j.status for j in done] == ["completed"] * 3, [(j.status, j.error) for j in done]
    first, *_, last = moved.attempts
    assert (first.node, first.status) == (victim, "node_fault"), first
    assert last.node != victim and last.status == "completed"
    assert [o.node for o in moved.outputs] == [last.node]
    await wait_for(lambda: mh.healthy(victim), timeout=60, what=f"{victim} closed again")
    closed_after = time.monotonic() - restored_at
    await wait_for(lambda: _not(mh.paused(victim)), timeout=30, what=f"{victim}'s pool resumed")
    log = mh.service.log_path.read_text()
    assert f"node {victim}: circuit closed → open" in log
    assert f"node {victim}: circuit open → half_open" in log
    assert f"node {victim}: circuit half_open → closed" in log
    pinned = jobs.submit(
        mh.db, jobs.JobRequest(workflow="delay", params={"seconds": 0.3, "seed": 9300},
                               pinned_node=victim),
        principal=mh.alice,
    )  # fmt: skip
    [back] = await wait_all(mh.db, [pinned.id], timeout=120)
    assert (back.status, back.node) == ("completed", victim), back.error
    print(
        f"\nlink of {victim} cut mid-job: circuit open after {opened_after:.1f}s, job done on "
        f"{last.node} {failed_over_after:.1f}s after the cut; link restored → closed after "
        f"{closed_after:.1f}s"
    )


async def _not(awaitable: Any) -> bool:
    return not await awaitable
