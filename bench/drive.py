"""Driving ComfyFleet as a caller does: submit jobs, wait for them, read back what happened.

Jobs go in through `comfyfleet.jobs.submit` (the one entry point the gateway, the UI and the CLI
use), tagged with a `batch_id` per benchmark run. What happened comes from the job store (jobs,
attempts, `finished_at` = when outputs became visible to callers) joined with each node's ComfyUI
`/history` (prompt id = attempt id) for the execution timestamps. Also the process accounting
the reports use: CPU seconds per process and for the whole machine, RSS of process trees.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from bench.baselines import histories
from bench.fleet import ControlPlane
from bench.stats import Execution
from comfyfleet import jobs
from comfyfleet.jobs import JobRequest
from comfyfleet.store.models import Attempt, Job

TERMINAL = ("completed", "failed", "cancelled")


@dataclass
class FleetDriver:
    cp: ControlPlane
    db: Any = None
    principal: Any = None
    catalog: Any = None
    submitted_at: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.db = self.db or self.cp.database()
        self.principal = self.principal or self.cp.bench_principal(self.db)
        self.catalog = self.catalog or jobs.load_catalog(self.cp.settings)

    def submit(self, workflow: str, params: dict[str, Any], *, batch: str) -> str:
        request = JobRequest(workflow=workflow, params=params, batch_id=batch)
        t = time.time()
        job = jobs.submit(self.db, request, principal=self.principal, catalog=self.catalog)
        self.submitted_at[job.id] = t
        return job.id

    def counts(self, batch: str) -> dict[str, int]:
        stmt = select(Job.status, func.count()).where(Job.batch_id == batch).group_by(Job.status)
        return dict(self.db.run(lambda s: list(s.execute(stmt)), readonly=True))

    def wait_batch(self, batch: str, total: int, *, timeout: float, poll_s: float = 0.5) -> bool:
        """True when every job of the batch ended within `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = self.counts(batch)
            if sum(counts.get(s, 0) for s in TERMINAL) >= total:
                return True
            time.sleep(poll_s)
        return False

    def cancel_unfinished(self, batch: str) -> int:
        stmt = select(Job.id).where(Job.batch_id == batch, Job.status.not_in(TERMINAL))
        ids = self.db.run(lambda s: list(s.scalars(stmt)), readonly=True)
        for job_id in ids:
            try:
                jobs.cancel(self.db, job_id, principal=self.principal)
            except Exception:  # finished meanwhile
                pass
        return len(ids)

    def wait_idle(self, *, timeout: float = 90.0) -> bool:
        """No job queued, dispatched or running on the fleet (any batch)."""
        stmt = select(func.count()).select_from(Job).where(Job.status.not_in(TERMINAL))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.db.run(lambda s: s.scalar(stmt), readonly=True) == 0:
                return True
            time.sleep(0.5)
        return False

    def job_rows(self, batch: str) -> list[tuple[Job, list[Attempt]]]:
        return self._rows(Job.batch_id == batch)

    def job_rows_for(self, job_ids: list[str]) -> list[tuple[Job, list[Attempt]]]:
        return self._rows(Job.id.in_(job_ids))

    def _rows(self, where: Any) -> list[tuple[Job, list[Attempt]]]:
        def read(session: Any) -> list[tuple[Job, list[Attempt]]]:
            rows = list(session.scalars(select(Job).where(where)))
            ids = [j.id for j in rows]
            attempts: dict[str, list[Attempt]] = {i: [] for i in ids}
            for chunk in range(0, len(ids), 500):
                stmt = select(Attempt).where(Attempt.job_id.in_(ids[chunk : chunk + 500]))
                for a in session.scalars(stmt):
                    attempts[a.job_id].append(a)
            for j in rows:
                session.expunge(j)
            for lst in attempts.values():
                for a in lst:
                    session.expunge(a)
            return [(j, sorted(attempts[j.id], key=lambda a: a.number)) for j in rows]

        return self.db.run(read, readonly=True)

    def executions(self, batch: str, node_urls: dict[str, str]) -> list[Execution]:
        """One Execution per job: its completed attempt as ComfyUI ran it, visible = finished_at."""
        rows = self.job_rows(batch)
        wanted: dict[str, set[str]] = {n: set() for n in node_urls}
        for _, attempts in rows:
            for a in attempts:
                wanted.setdefault(a.node, set()).add(a.id)
        seen: dict[str, tuple[float, float, bool]] = {}
        with httpx.Client(timeout=60) as client:
            for node, ids in wanted.items():
                if ids and node in node_urls:
                    try:
                        seen.update(histories(client, node_urls[node], ids))
                    except httpx.HTTPError:
                        pass  # a killed node forgot its history
        out = []
        for job, attempts in rows:
            done = [a for a in attempts if a.status == "completed" and a.id in seen]
            if not done:
                continue
            a = done[-1]
            start, end, ok = seen[a.id]
            submitted = self.submitted_at.get(job.id, job.created_at.timestamp())
            visible = job.finished_at.timestamp() if job.finished_at else None
            out.append(Execution(job.id, a.node, a.id, submitted, start, end, ok, visible))
        return sorted(out, key=lambda e: e.start)

    def close(self) -> None:
        self.db.dispose()


# -- CPU accounting ----------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """utime + stime of one process (s), 0 when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy since boot (all cores)."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in parts]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / _TICK


@dataclass
class CpuMeter:
    """CPU used by named processes, by everything else on the machine, over one run."""

    pids: dict[str, Sequence[int]]
    _start: dict[str, float] = field(default_factory=dict)
    _machine: float = 0.0
    _t: float = 0.0

    def _now(self) -> dict[str, float]:
        return {name: sum(process_cpu_s(p) for p in ps) for name, ps in self.pids.items()}

    def __enter__(self) -> CpuMeter:
        self._start, self._machine, self._t = self._now(), machine_busy_s(), time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._now()
        self.wall_s = time.monotonic() - self._t
        self.used = {n: end[n] - self._start.get(n, 0.0) for n in end}
        self.machine_s = machine_busy_s() - self._machine
        self.other_s = max(0.0, self.machine_s - sum(self.used.values()))

    def summary(self) -> dict[str, Any]:
        cores = os.cpu_count() or 1
        return {
            "wall_s": self.wall_s,
            "cpu_s": self.used,
            "machine_busy_fraction": self.machine_s / (self.wall_s * cores) if self.wall_s else 0,
            "other_processes_cores": self.other_s / self.wall_s if self.wall_s else 0,
        }


# -- memory ----------------------------------------------------------------------------------


def _children_of() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def rss_bytes(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/statm").read_text().split()
    except OSError:
        return 0
    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")


def tree_rss(pids: dict[str, int]) -> dict[str, int]:
    """RSS of each named process plus all its descendants (bytes)."""
    tree = _children_of()
    out: dict[str, int] = {}
    for name, pid in pids.items():
        total, todo = 0, [pid]
        while todo:
            p = todo.pop()
            total += rss_bytes(p)
            todo.extend(tree.get(p, []))
        out[name] = total
    return out
