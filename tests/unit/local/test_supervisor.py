"""The supervisor: dead children are reported and restarted with backoff; stopping leaves no
process of a child's group behind, even one that ignores SIGTERM."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from comfyfleet.local.supervisor import Command, Supervisor


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def py(tmp_path: Path, name: str, code: str) -> Command:
    return Command(name, [sys.executable, "-c", code], log_path=tmp_path / f"{name}.log")


def wait_exit(command: Command, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while command.returncode() is None:
        assert time.monotonic() < deadline, f"{command} still runs"
        time.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_a_dead_child_is_reported_and_restarted_with_doubling_backoff(tmp_path: Path) -> None:
    clock = Clock()
    events: list[tuple[str, str]] = []
    sup = Supervisor(
        backoff_s=1.0, backoff_max_s=3.0, clock=clock,
        on_event=lambda event, message, child: events.append((event, message)),
    )  # fmt: skip
    child = py(tmp_path, "crasher", "import sys; print('boom', flush=True); sys.exit(3)")
    sup.start(child)
    delays = []
    for _ in range(4):
        wait_exit(child)
        sup.check()
        exited = events[-1]
        assert exited[0] == "exited" and "exit code 3" in exited[1], exited
        delays.append(float(exited[1].split("restarting in ")[1].split(" s")[0]))
        first_pid = child.pid
        sup.check()  # the delay is not over: nothing happens
        assert child.pid == first_pid
        clock.now += delays[-1]
        sup.check()
        assert events[-1][0] == "restarted" and child.pid != first_pid
    assert delays == [1.0, 2.0, 3.0, 3.0]
    assert sup.state()["crasher"]["restarts"] == 4
    assert (tmp_path / "crasher.log").read_text().count("boom") >= 4
    sup.stop_all()


def test_backoff_resets_once_a_child_stayed_up(tmp_path: Path) -> None:
    clock = Clock()
    events: list[str] = []
    sup = Supervisor(backoff_s=1.0, stable_s=60, clock=clock,
                     on_event=lambda e, m, c: events.append(m))  # fmt: skip
    child = py(tmp_path, "sleeper", "import time; time.sleep(60)")
    sup.start(child)
    for _ in range(2):  # two quick deaths: the delay grows to 4
        os.kill(child.pid, signal.SIGKILL)
        wait_exit(child)
        sup.check()
        clock.now += 10
        sup.check()
    assert "restarting in 2 s" in events[-2]
    clock.now += 61  # it stays up a while
    sup.check()
    os.kill(child.pid, signal.SIGKILL)
    wait_exit(child)
    sup.check()
    assert "killed by SIGKILL; restarting in 1 s" in events[-1]
    sup.stop_all()


def test_stop_kills_a_child_that_ignores_sigterm_and_its_grandchildren(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    code = (
        "import signal, subprocess, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"p = subprocess.Popen(['sleep', '300'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(300)\n"
    )
    sup = Supervisor(grace_s=0.5)
    child = py(tmp_path, "stubborn", code)
    sup.start(child)
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    started = time.monotonic()
    sup.stop_all()
    assert child.returncode() == -signal.SIGKILL
    assert time.monotonic() - started < 5
    deadline = time.monotonic() + 5  # killed at once; gone once its parent reaps it
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(grandchild)
    assert sup.names() == []


def test_a_child_gets_sigint_back_even_when_the_supervisor_ignores_it(tmp_path: Path) -> None:
    """A Prefect worker's first SIGTERM becomes a SIGINT to itself: it must not be ignored."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        child = py(tmp_path, "probe", "import signal; print(signal.getsignal(signal.SIGINT))")
        child.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    wait_exit(child)
    assert "default_int_handler" in (tmp_path / "probe.log").read_text()


def test_a_second_child_of_the_same_name_is_refused(tmp_path: Path) -> None:
    sup = Supervisor()
    sup.start(py(tmp_path, "one", "import time; time.sleep(30)"))
    with pytest.raises(ValueError, match="supervised already"):
        sup.start(py(tmp_path, "one", "pass"))
    sup.stop_all()
