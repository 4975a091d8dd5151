"""The CPU meter of the benchmarks (bench/cpu.py) on a fake /proc."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bench.cpu import (
    CLK_TCK,
    CpuMeter,
    CpuTally,
    ProcStat,
    context_switches,
    descendants,
    idle_cpu_per_s,
    parse_stat,
    read_procs,
)


def stat_line(pid: int, ppid: int, utime: int, stime: int, start: int, comm: str = "python") -> str:
    # fields 3..22 of proc(5): state ppid pgrp session tty tpgid flags minflt cminflt majflt
    # cmajflt utime stime cutime cstime priority nice threads itrealvalue starttime
    rest = ["S", ppid, pid, pid, 0, -1, 0, 0, 0, 0, 0, utime, stime, 999, 999, 20, 0, 4, 0, start]
    return f"{pid} ({comm}) " + " ".join(str(v) for v in rest) + " 1234 5678\n"


class FakeProc:
    """A /proc with `stat` files for chosen processes, `uptime` and the machine's `stat`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(exist_ok=True)
        self.set_uptime(1000.0)
        self.set_busy(0)

    def set_uptime(self, seconds: float) -> None:
        (self.root / "uptime").write_text(f"{seconds:.2f} 1.00\n")

    def set_busy(self, ticks: int) -> None:
        (self.root / "stat").write_text(f"cpu  {ticks} 0 0 5000 0 0 0 0 0 0\n")

    def put(self, pid: int, ppid: int, cpu: int, *, start: int = 10) -> None:
        folder = self.root / str(pid)
        folder.mkdir(exist_ok=True)
        (folder / "stat").write_text(stat_line(pid, ppid, cpu, 0, start))

    def remove(self, pid: int) -> None:
        folder = self.root / str(pid)
        (folder / "stat").unlink()
        folder.rmdir()


def test_parse_stat_reads_a_command_name_with_spaces_and_parentheses() -> None:
    stat = parse_stat(stat_line(42, 7, utime=150, stime=25, start=9000, comm="py (x) y)"))
    assert stat == ProcStat(pid=42, ppid=7, cpu_ticks=175, start_ticks=9000)


def test_parse_stat_reads_this_process() -> None:
    stat = parse_stat(Path(f"/proc/{os.getpid()}/stat").read_text())
    assert stat.pid == os.getpid() and stat.ppid == os.getppid()


def test_descendants_are_the_whole_tree_and_nothing_else() -> None:
    procs = {
        pid: ProcStat(pid, ppid, 0, 0)
        for pid, ppid in [(1, 0), (10, 1), (11, 10), (12, 10), (13, 12), (20, 1), (21, 20)]
    }
    assert descendants([10], procs) == [10, 11, 12, 13]
    assert descendants([10, 21, 99], procs) == [10, 21, 11, 12, 13]  # 99 does not exist
    assert descendants([], procs) == []


def test_tally_counts_existing_processes_from_their_first_sample() -> None:
    tally = CpuTally(started=1000)
    tally.observe("worker", ProcStat(5, 1, 300, start_ticks=10), first_round=True)
    tally.observe("worker", ProcStat(5, 1, 450, start_ticks=10), first_round=False)
    assert tally.ticks() == {"worker": 150}


def test_tally_counts_a_child_born_later_from_zero_and_after_it_exits() -> None:
    tally = CpuTally(started=1000)
    tally.observe("web", ProcStat(5, 1, 100, 10), first_round=True)
    tally.observe("web", ProcStat(6, 5, 40, start_ticks=1100), first_round=False)  # born since
    tally.observe("web", ProcStat(6, 5, 70, start_ticks=1100), first_round=False)
    tally.observe("web", ProcStat(5, 1, 130, 10), first_round=False)  # 6 exited: last sample 70
    assert tally.ticks() == {"web": 30 + 70}
    assert tally.processes() == {"web": 2}


def test_tally_treats_a_reused_pid_as_a_new_process() -> None:
    tally = CpuTally(started=1000)
    tally.observe("w", ProcStat(6, 5, 500, start_ticks=900), first_round=True)
    tally.observe("w", ProcStat(6, 5, 520, start_ticks=900), first_round=False)
    tally.observe("w", ProcStat(6, 5, 15, start_ticks=1200), first_round=False)
    assert tally.ticks() == {"w": 20 + 15}


def test_tally_counts_a_process_that_joined_the_tree_late_only_from_then() -> None:
    tally = CpuTally(started=1000)
    tally.observe("w", ProcStat(8, 5, 900, start_ticks=500), first_round=False)
    tally.observe("w", ProcStat(8, 5, 960, start_ticks=500), first_round=False)
    assert tally.ticks() == {"w": 60}


def test_meter_sums_each_tree_and_keeps_exited_children(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path / "proc")
    proc.put(100, 1, 1000)  # server
    proc.put(200, 1, 500)  # worker
    proc.put(201, 200, 50)  # worker's child
    proc.put(300, 1, 7000)  # something else
    meter = CpuMeter({"server": 100, "worker": [200]}, interval=0, proc=proc.root)
    meter.start()
    proc.put(100, 1, 1000 + 2 * CLK_TCK)
    proc.put(201, 200, 50 + CLK_TCK)
    proc.put(202, 201, CLK_TCK // 2, start=1000 * CLK_TCK + 50)  # grandchild born since
    proc.put(300, 1, 9000)
    meter.sample()
    proc.remove(202)
    proc.remove(201)
    proc.put(200, 1, 500 + CLK_TCK)
    meter.stop()
    assert meter.cpu_s() == pytest.approx({"server": 2.0, "worker": 1.0 + 1.0 + 0.5})
    assert meter.processes() == {"server": 1, "worker": 3}


def test_meter_reports_a_component_whose_root_is_gone_as_zero(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path / "proc")
    proc.put(100, 1, 10)
    with CpuMeter({"server": 100, "gone": 4242}, interval=0, proc=proc.root) as meter:
        pass
    assert meter.cpu_s() == {"server": 0.0, "gone": 0.0}


def test_meter_samples_in_the_background(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path / "proc")
    proc.put(100, 1, 0)
    with CpuMeter({"server": 100}, interval=0.01, proc=proc.root) as meter:
        proc.put(101, 100, CLK_TCK, start=1000 * CLK_TCK + 10)
        for _ in range(500):
            if meter.processes()["server"] == 2:
                break
            time.sleep(0.01)
        proc.remove(101)
    assert meter.cpu_s() == pytest.approx({"server": 1.0})


def test_meter_measures_the_machine_and_the_wall_clock(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path / "proc")
    times = iter([10.0, 14.0])
    with CpuMeter({}, interval=0, proc=proc.root, clock=lambda: next(times)) as meter:
        proc.set_busy(3 * CLK_TCK)
    assert meter.wall_s == 4.0
    assert meter.machine_busy_s() == pytest.approx(3.0)


def test_idle_cpu_per_s_divides_by_the_measured_wall_time(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path / "proc")
    proc.put(100, 1, 0)
    proc.put(200, 1, 0)
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds
        proc.put(100, 1, 5 * CLK_TCK)

    rates = idle_cpu_per_s(
        {"server": 100, "worker": 200}, 10, interval=0, proc=proc.root, sleep=sleep,
        clock=lambda: now[0],
    )  # fmt: skip
    assert rates == pytest.approx({"server": 0.5, "worker": 0.0})


def test_read_procs_sees_this_process() -> None:
    assert os.getpid() in read_procs()


def test_context_switches_sum_the_voluntary_switches_of_every_thread(tmp_path: Path) -> None:
    for tid, switches in ((100, 7), (101, 5)):
        task = tmp_path / "100" / "task" / str(tid)
        task.mkdir(parents=True)
        (task / "status").write_text(
            f"Name:\tpython\nvoluntary_ctxt_switches:\t{switches}\nnonvoluntary_ctxt_switches:\t9\n"
        )
    assert context_switches(100, proc=tmp_path) == 12
    assert context_switches(4242, proc=tmp_path) == 0
