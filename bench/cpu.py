"""CPU time of named components, each a whole process tree, read from /proc.

    with CpuMeter({"prefect-server": 1234, "worker": 1240}) as meter:
        ...  # the work
    meter.cpu_s()   # {"prefect-server": 48.2, "worker": 25.1}  (user + sys seconds)
    idle_cpu_per_s({"worker": 1240}, 10)   # {"worker": 0.03}  (CPU-s per second, idle)

A component is one or more root pids plus all their descendants. The meter samples
`/proc/<pid>/stat` (utime + stime) of every process in each tree every `interval` seconds, in a
thread, and once more on exit. Every process seen counts from its value at the first sample that
saw it (0 when it was born after the meter started) to its last sample: a child that exits is
counted up to its last sample (what it used after that, at most one interval, is lost), and a
pid reused by a new process is a new process (processes are keyed by pid and start time).
Children are counted by their own samples, never through the parent's cutime/cstime, so nothing
is counted twice.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    """What the meter needs of one `/proc/<pid>/stat` line."""

    pid: int
    ppid: int
    cpu_ticks: int  # utime + stime, clock ticks
    start_ticks: int  # start time, clock ticks after boot


def parse_stat(text: str) -> ProcStat:
    """Parse a `/proc/<pid>/stat` line (the command name may hold spaces and parentheses)."""
    head, _, rest = text.rpartition(")")
    fields = rest.split()  # fields[0] is field 3 (state) of proc(5)
    return ProcStat(
        pid=int(head.split("(", 1)[0]),
        ppid=int(fields[1]),
        cpu_ticks=int(fields[11]) + int(fields[12]),
        start_ticks=int(fields[19]),
    )


def read_procs(proc: Path = PROC) -> dict[int, ProcStat]:
    """Every process now, by pid (processes that vanish while being read are left out)."""
    out: dict[int, ProcStat] = {}
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            out[int(entry.name)] = parse_stat(Path(entry.path, "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue
    return out


def descendants(roots: Iterable[int], procs: Mapping[int, ProcStat]) -> list[int]:
    """The roots that exist and all their descendants, parents before children."""
    children: dict[int, list[int]] = {}
    for stat in procs.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    out: list[int] = []
    seen: set[int] = set()
    todo = [r for r in roots if r in procs]
    while todo:
        pid = todo.pop(0)
        if pid in seen:
            continue
        seen.add(pid)
        out.append(pid)
        todo.extend(sorted(children.get(pid, ())))
    return out


def uptime_ticks(proc: Path = PROC) -> int:
    """Clock ticks since boot (the unit of a process's start time)."""
    return int(float((proc / "uptime").read_text().split()[0]) * CLK_TCK)


def machine_busy_ticks(proc: Path = PROC) -> int:
    """Clock ticks the whole machine spent busy since boot, all cores (not idle, not iowait)."""
    values = [int(v) for v in (proc / "stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values[:8]) - idle


def context_switches(pid: int, proc: Path = PROC) -> int:
    """Voluntary context switches of all threads of a process so far (each one a wait that
    ended: a poll loop's tick, a socket read, a lock), 0 when it is gone."""
    total = 0
    try:
        tasks = list(os.scandir(proc / str(pid) / "task"))
    except OSError:
        return 0
    for task in tasks:
        try:
            text = Path(task.path, "status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


class CpuTally:
    """Per component, the CPU ticks its processes used since `started` (ticks after boot)."""

    def __init__(self, started: int) -> None:
        self.started = started
        self._base: dict[tuple[int, int], int] = {}
        self._last: dict[tuple[int, int], int] = {}
        self._owner: dict[tuple[int, int], str] = {}

    def observe(self, component: str, stat: ProcStat, *, first_round: bool) -> None:
        key = (stat.pid, stat.start_ticks)
        if key not in self._base:
            born_since = not first_round and stat.start_ticks > self.started
            self._base[key] = 0 if born_since else stat.cpu_ticks
            self._owner[key] = component
        self._last[key] = stat.cpu_ticks

    def ticks(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for key, owner in self._owner.items():
            out[owner] = out.get(owner, 0) + max(self._last[key] - self._base[key], 0)
        return out

    def processes(self) -> dict[str, int]:
        """How many processes each component has had (seen by a sample)."""
        out: dict[str, int] = {}
        for owner in self._owner.values():
            out[owner] = out.get(owner, 0) + 1
        return out


class CpuMeter:
    """CPU seconds of named components (root pids and their process trees) over a block."""

    def __init__(
        self,
        components: Mapping[str, int | Sequence[int]],
        *,
        interval: float = 0.5,
        proc: Path = PROC,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.roots = {
            name: [pids] if isinstance(pids, int) else list(pids)
            for name, pids in components.items()
        }
        self.interval, self.proc, self.clock = interval, proc, clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tally: CpuTally | None = None
        self._t0 = self._t1 = 0.0
        self._busy0 = self._busy1 = 0

    def __enter__(self) -> CpuMeter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._tally = CpuTally(uptime_ticks(self.proc))
        self._busy0 = machine_busy_ticks(self.proc)
        self._t0 = self.clock()
        self.sample(first_round=True)
        if self.interval > 0:
            self._thread = threading.Thread(target=self._loop, name="cpu-meter", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.sample()
        self._t1 = self.clock()
        self._busy1 = machine_busy_ticks(self.proc)

    def sample(self, *, first_round: bool = False) -> None:
        """Read every component's tree now (the thread does this every `interval`)."""
        procs = read_procs(self.proc)
        with self._lock:
            assert self._tally is not None, "start() the meter first"
            for name, roots in self.roots.items():
                for pid in descendants(roots, procs):
                    self._tally.observe(name, procs[pid], first_round=first_round)

    @property
    def wall_s(self) -> float:
        return (self._t1 or self.clock()) - self._t0

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds per component, as of the last sample (every component named, 0 if gone)."""
        with self._lock:
            ticks = self._tally.ticks() if self._tally is not None else {}
        return {name: ticks.get(name, 0) / CLK_TCK for name in self.roots}

    def processes(self) -> dict[str, int]:
        with self._lock:
            seen = self._tally.processes() if self._tally is not None else {}
        return {name: seen.get(name, 0) for name in self.roots}

    def machine_busy_s(self) -> float:
        """CPU seconds the whole machine was busy between start and stop (all cores)."""
        return (self._busy1 - self._busy0) / CLK_TCK


def idle_cpu_per_s(
    components: Mapping[str, int | Sequence[int]],
    seconds: float,
    *,
    interval: float = 0.5,
    proc: Path = PROC,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, float]:
    """CPU seconds per wall second of each component over `seconds` (call it while idle)."""
    with CpuMeter(components, interval=interval, proc=proc, clock=clock) as meter:
        sleep(seconds)
    wall = meter.wall_s
    return {name: used / wall if wall > 0 else 0.0 for name, used in meter.cpu_s().items()}
