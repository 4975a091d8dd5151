"""Child processes kept alive: started, restarted with backoff when they die, stopped for good.

`Supervisor` owns `Child`ren. Each child runs in a session of its own (its process group is its
pid), so a terminal's Ctrl-C reaches only the supervisor, and stopping a child signals its whole
group: SIGTERM, a grace period, then SIGKILL for whatever is left, grandchildren included. A
child also gets SIGTERM when the supervisor dies (Linux `PR_SET_PDEATHSIG`), and starts with
SIGINT at its default action: a Prefect worker turns its first SIGTERM into a SIGINT to itself,
which a process started in the background would otherwise ignore (prefect-mechanics §11.1).

`check()` is called from the supervisor's loop: a child that exited is reported (log line) and
started again after a delay that doubles from `backoff_s` up to `backoff_max_s`, and resets once
the child has stayed up for `stable_s`. `state()` says what runs (pid, restarts, log) for
`comfyfleet up`'s state file.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _child_setup() -> None:  # pragma: no cover - runs in the child before exec
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_process_group(proc: subprocess.Popen[bytes], *, grace_s: float) -> int | None:
    """SIGTERM the child's process group, wait `grace_s`, SIGTERM once more (a Prefect worker
    takes the second as 'kill'), then SIGKILL the group; returns the exit code."""
    pgid = proc.pid
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGTERM, min(2.0, grace_s))):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
    if proc.poll() is None:
        logger.warning("pid %d ignored SIGTERM for %.0f s; killing it", proc.pid, grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)  # stragglers of the group, even if the leader is gone
    return proc.wait()


class Child(Protocol):
    """What the supervisor needs of a component."""

    name: str
    log_path: Path

    @property
    def pid(self) -> int | None: ...

    def start(self) -> None: ...

    def returncode(self) -> int | None:
        """None while it runs."""
        ...

    def stop(self, *, grace_s: float) -> None: ...


class Command:
    """A child process from a command line; stdout and stderr appended to `log_path`."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name, self.argv, self.log_path = name, list(argv), log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"Command({self.name!r}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_child_setup,
            )  # fmt: skip

    def returncode(self) -> int | None:
        if self._proc is None:
            return -1
        return self._proc.poll()

    def stop(self, *, grace_s: float) -> None:
        if self._proc is not None:
            stop_process_group(self._proc, grace_s=grace_s)


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class _Entry:
    child: Child
    started_at: float = 0.0
    restarts: int = 0
    delay: float = 0.0
    restart_at: float | None = None


@dataclass
class Supervisor:
    """Starts children, restarts the ones that die, stops them all (last started, first)."""

    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    stable_s: float = 60.0
    grace_s: float = 10.0
    on_event: Callable[[str, str, Child], None] | None = None
    """Called with (event, message, child): event is `exited` or `restarted`."""
    clock: Callable[[], float] = time.monotonic
    _entries: dict[str, _Entry] = field(default_factory=dict)

    def start(self, child: Child) -> None:
        if child.name in self._entries:
            raise ValueError(f"a child named {child.name!r} is supervised already")
        child.start()
        self._entries[child.name] = _Entry(child, started_at=self.clock(), delay=self.backoff_s)
        logger.info("%s started (pid %s, log %s)", child.name, child.pid, child.log_path)

    def child(self, name: str) -> Child | None:
        entry = self._entries.get(name)
        return entry.child if entry is not None else None

    def names(self) -> list[str]:
        return list(self._entries)

    def check(self) -> None:
        """Report children that exited, restart the ones whose delay is over."""
        now = self.clock()
        for entry in list(self._entries.values()):
            child = entry.child
            if entry.restart_at is not None:
                if now >= entry.restart_at:
                    self._restart(entry, now)
                continue
            code = child.returncode()
            if code is None:
                if now - entry.started_at >= self.stable_s:
                    entry.delay = self.backoff_s
                continue
            entry.restart_at = now + entry.delay
            message = (
                f"{child.name} (pid {child.pid}) exited: {describe_exit(code)}; restarting in "
                f"{entry.delay:.0f} s (restart {entry.restarts + 1}; log {child.log_path})"
            )
            logger.error("%s", message)
            if self.on_event is not None:
                self.on_event("exited", message, child)
            entry.delay = min(entry.delay * 2, self.backoff_max_s)

    def _restart(self, entry: _Entry, now: float) -> None:
        entry.restart_at = None
        entry.restarts += 1
        entry.started_at = now
        try:
            entry.child.start()
        except Exception as exc:  # a start that fails counts as an exit: retried after backoff
            logger.error("%s could not be restarted: %s", entry.child.name, exc)
            entry.restart_at = now + entry.delay
            entry.delay = min(entry.delay * 2, self.backoff_max_s)
            return
        message = f"{entry.child.name} restarted (pid {entry.child.pid}, restart {entry.restarts})"
        logger.warning("%s", message)
        if self.on_event is not None:
            self.on_event("restarted", message, entry.child)

    def stop(self, name: str) -> None:
        """Stop one child for good."""
        entry = self._entries.pop(name)
        entry.child.stop(grace_s=self.grace_s)
        logger.info("%s stopped", name)

    def stop_all(self) -> None:
        """Stop every child, the last started first."""
        for name in reversed(list(self._entries)):
            try:
                self.stop(name)
            except Exception:  # one child must not keep the others running
                logger.exception("stopping %s failed", name)

    def state(self) -> dict[str, dict[str, Any]]:
        """Per child: pid, running, restarts, log."""
        return {
            name: {
                "pid": e.child.pid,
                "running": e.restart_at is None and e.child.returncode() is None,
                "restarts": e.restarts,
                "log": str(e.child.log_path),
            }
            for name, e in self._entries.items()
        }
