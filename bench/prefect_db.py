"""The Prefect server's database under concurrent workers: SQLite against PostgreSQL.

`python -m bench.prefect_db [--workers 8 16 32] [--runs 4]` starts a Prefect server on each
database in turn (SQLite in a fresh home; a fresh PostgreSQL database on 127.0.0.1:5432 through
`prefect.database_url`'s switch) and plays W workers at once, each taking R flow runs through
the transitions a worker and its flow make (create → Pending → Running → Completed). It prints,
per database and W: the wall time, the latency of one state change (median, p95, max), and
the requests the server answered with a retryable 503 because SQLite was locked ("database is
locked"; Prefect's client retries them after 2, 4, 8, 16, 32 s, which is where the long tail
comes from).
Server homes and logs stay under var/bench/prefect-db-<UTC>/.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import time
from pathlib import Path

import asyncpg

from comfyfleet.local.node import free_port
from comfyfleet.local.prefect_server import PrefectServer
from comfyfleet.settings import REPO_ROOT


def _probe_flow() -> object:
    from prefect import flow

    @flow(name="db-burst")
    def db_burst() -> None:
        """Never executed: only its runs' states move."""

    return db_burst


async def _worker(api_url: str, probe: object, runs: int, latencies: list[float]) -> None:
    from prefect.client.orchestration import PrefectClient
    from prefect.states import Completed, Pending, Running

    async with PrefectClient(api_url) as client:
        for _ in range(runs):
            started = time.perf_counter()
            run = await client.create_flow_run(probe)  # type: ignore[arg-type]
            latencies.append(time.perf_counter() - started)
            for state in (Pending(), Running(), Completed()):
                started = time.perf_counter()
                await client.set_flow_run_state(run.id, state)
                latencies.append(time.perf_counter() - started)


async def _burst(api_url: str, workers: int, runs: int) -> tuple[float, list[float]]:
    probe = _probe_flow()
    latencies: list[float] = []
    started = time.perf_counter()
    await asyncio.gather(*(_worker(api_url, probe, runs, latencies) for _ in range(workers)))
    return time.perf_counter() - started, latencies


async def _postgres(sql: str) -> None:
    conn = await asyncpg.connect(host="127.0.0.1", port=5432, user="postgres", timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def measure(database: str, workers: list[int], runs: int, root: Path) -> None:
    pg = f"cfbench_pfdb_{secrets.token_hex(4)}" if database == "postgres" else None
    if pg:
        asyncio.run(_postgres(f'CREATE DATABASE "{pg}"'))
    server = PrefectServer(
        home=root / database, port=free_port(),
        database_url=f"postgresql+asyncpg://postgres@127.0.0.1:5432/{pg}" if pg else None,
    )  # fmt: skip
    try:
        server.start(timeout=240)
        for w in workers:
            before = _locked(server)
            wall, lat = asyncio.run(_burst(server.api_url, w, runs))
            lat.sort()
            print(
                f"{database:8} workers={w:3} runs={w * runs:4} wall={wall:6.1f}s "
                f"state change median={statistics.median(lat) * 1000:6.0f}ms "
                f"p95={lat[int(0.95 * (len(lat) - 1))] * 1000:6.0f}ms max={lat[-1] * 1000:6.0f}ms "
                f"'database is locked' 503s={_locked(server) - before}",
                flush=True,
            )
    finally:
        server.stop()
        if pg:
            asyncio.run(_postgres(f'DROP DATABASE IF EXISTS "{pg}" WITH (FORCE)'))


def _locked(server: PrefectServer) -> int:
    """Requests the server answered 503 for a busy SQLite ("database is locked")."""
    if server.log_path is None or not server.log_path.exists():
        return 0
    text = server.log_path.read_text(errors="replace")
    return text.count("Encountered retryable exception in request")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--runs", type=int, default=4, help="flow runs per worker")
    parser.add_argument("--databases", nargs="+", default=["sqlite", "postgres"])
    args = parser.parse_args()
    # Prefect 3.9 answers SQLite's lock errors with a retryable 503 and keeps them out of its
    # log unless asked: ask, so the log shows them.
    os.environ["PREFECT_SERVER_LOG_RETRYABLE_ERRORS"] = "true"
    root = (
        REPO_ROOT / "var" / "bench" / f"prefect-db-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    )
    print(f"server homes and logs under {root}")
    for database in args.databases:
        measure(database, args.workers, args.runs, root)


if __name__ == "__main__":
    main()
