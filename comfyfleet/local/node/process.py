"""One real ComfyUI server process on this machine (CPU), with its own working directory.

``LocalComfyUI`` starts ``main.py`` from a ``ComfyUIInstall`` with everything it writes under
one ``workdir`` (models/ custom_nodes/ input/ output/ temp/ user/, ``comfyui.log`` and the
generated ``extra_model_paths.yaml`` that points at the shared models folder and at any extra
custom node folders). It can be stopped, killed (SIGKILL, as a crash) and restarted on the same
port and folders, which is what failover tests need.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from comfyfleet.comfyui import ComfyUIError, probe_node
from comfyfleet.local.node.venv import ComfyUIInstall

logger = logging.getLogger(__name__)

DELAY_FACTOR_ENV = "COMFYFLEET_TEST_DELAY_FACTOR"
WORK_SUBDIRS = ("models", "custom_nodes", "input", "output", "temp", "user")
_PR_SET_PDEATHSIG = 1


class ComfyUIStartError(RuntimeError):
    """The ComfyUI process exited or did not answer in time; the message holds the log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to SIGTERM the child when the thread that started it goes away."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process. So
# children that should die with us are all started from this one worker thread, which lives
# until the interpreter exits, whichever thread (asyncio.to_thread, a pool) asks for a start.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="comfyui-spawner")


class LocalComfyUI:
    """One ComfyUI server process: ``start``, ``wait_ready``, ``stop``, ``kill``, ``restart``.

    ``speed`` scales the test delay node: it runs ``seconds / speed`` (the process gets
    ``COMFYFLEET_TEST_DELAY_FACTOR = 1 / speed``), so ``speed=0.5`` plays a node half as fast.
    With ``die_with_parent`` (Linux) the server gets SIGTERM when this Python process exits,
    even on SIGKILL, so a crashed test run leaves no ComfyUI behind.
    """

    def __init__(
        self,
        install: ComfyUIInstall,
        workdir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        custom_nodes: Sequence[Path] = (),
        speed: float = 1.0,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        die_with_parent: bool = True,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.install = install
        self.workdir = workdir.resolve()
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.custom_nodes = tuple(Path(p).resolve() for p in custom_nodes)
        self.speed = speed
        self.extra_args = tuple(extra_args)
        self.extra_env = dict(env or {})
        self.die_with_parent = die_with_parent and sys.platform.startswith("linux")
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0

    def __repr__(self) -> str:
        return f"LocalComfyUI(url={self.url!r}, pid={self.pid}, workdir={str(self.workdir)!r})"

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8188``."""
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID of the current process (None before the first start)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The current process (None before the first start); its group is its pid."""
        return self._proc

    @property
    def log_path(self) -> Path:
        """ComfyUI's stdout and stderr (appended across restarts)."""
        return self.workdir / "comfyui.log"

    @property
    def config_path(self) -> Path:
        """The generated extra_model_paths.yaml."""
        return self.workdir / "extra_model_paths.yaml"

    @property
    def output_dir(self) -> Path:
        return self.workdir / "output"

    @property
    def input_dir(self) -> Path:
        return self.workdir / "input"

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has ended (None while it runs or before a start)."""
        return self._proc.poll() if self._proc is not None else None

    def is_running(self) -> bool:
        """True while the process exists and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        """The command line ``start()`` runs."""
        return [
            str(self.install.python),
            str(self.install.main_py),
            "--cpu",
            "--listen",
            self.host,
            "--port",
            str(self.port),
            "--base-directory",
            str(self.workdir),
            "--extra-model-paths-config",
            str(self.config_path),
            "--disable-auto-launch",
            "--disable-api-nodes",
            "--front-end-root",
            str(self.install.web_root),
            "--preview-method",
            "latent2rgb",
            *self.extra_args,
        ]

    def start(self) -> None:
        """Prepare the folders and config, then launch (returns at once; see ``wait_ready``)."""
        if self.is_running():
            raise RuntimeError(f"{self!r} is already running")
        for name in WORK_SUBDIRS:
            (self.workdir / name).mkdir(parents=True, exist_ok=True)
        self._write_config()
        env = {**os.environ, **self.extra_env, DELAY_FACTOR_ENV: repr(1.0 / self.speed)}
        env.pop("PYTHONPATH", None)  # the project's paths must not leak into ComfyUI's venv
        with self.log_path.open("ab") as log:
            log.write(f"\n=== comfyfleet: starting {' '.join(self.command())}\n".encode())
            log.flush()
            kwargs: dict[str, Any] = {
                "cwd": self.workdir,
                "env": env,
                "stdin": subprocess.DEVNULL,
                "stdout": log,
                "stderr": subprocess.STDOUT,
                "start_new_session": True,  # a terminal's Ctrl-C reaches us, not the node
            }
            if self.die_with_parent:
                kwargs["preexec_fn"] = _die_with_parent
                future = _SPAWNER.submit(subprocess.Popen, self.command(), **kwargs)
                self._proc = future.result()
            else:
                self._proc = subprocess.Popen(self.command(), **kwargs)
        self._started_at = time.monotonic()
        logger.info("started ComfyUI pid %s on %s (log %s)", self.pid, self.url, self.log_path)

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        """Probe the node (``comfyfleet.comfyui.probe_node``) until it answers; return its
        ``/system_stats``.

        Raises ComfyUIStartError at once if the process exits, or after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            if not self.is_running():
                code = self._proc.returncode if self._proc is not None else None
                raise ComfyUIStartError(
                    f"ComfyUI on {self.url} exited (code {code}) before it was ready\n"
                    + self.log_tail()
                )
            try:
                stats = probe_node(self.url, timeout=2.0).system_stats
            except ComfyUIError:
                pass
            else:
                logger.info(
                    "ComfyUI pid %s ready on %s after %.1f s",
                    self.pid,
                    self.url,
                    time.monotonic() - self._started_at,
                )
                return stats
            if time.monotonic() > deadline:
                raise ComfyUIStartError(
                    f"ComfyUI on {self.url} not ready after {timeout:.0f} s\n" + self.log_tail()
                )
            time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; return the exit code (None: never run)."""
        return self._terminate(signal.SIGTERM, timeout)

    def kill(self) -> int | None:
        """SIGKILL (a crash: nothing is flushed) and wait. Returns the exit code."""
        return self._terminate(signal.SIGKILL, 10.0)

    def restart(self, timeout: float | None = 60.0) -> dict[str, Any] | None:
        """Stop if running, start on the same port and folders; wait unless timeout is None."""
        self.stop()
        self.start()
        return self.wait_ready(timeout) if timeout is not None else None

    def rss_bytes(self) -> int | None:
        """Resident memory of the process (from /proc; None when unknown)."""
        if not self.is_running():
            return None
        try:
            fields = Path(f"/proc/{self.pid}/statm").read_text().split()
        except OSError:
            return None
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of ``comfyui.log``."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last {lines} lines of {self.log_path} ---\n{tail}"

    def __enter__(self) -> LocalComfyUI:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _terminate(self, sig: signal.Signals, timeout: float) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            logger.info("sending %s to ComfyUI pid %s (%s)", sig.name, proc.pid, self.url)
            try:
                proc.send_signal(sig)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("ComfyUI pid %s ignored %s; killing it", proc.pid, sig.name)
                proc.kill()
                proc.wait()
            except ProcessLookupError:
                proc.wait()
        return proc.returncode

    def _write_config(self) -> None:
        """extra_model_paths.yaml: the shared models folder and the extra custom node folders."""
        entry: dict[str, str] = {
            "base_path": str(self.install.models_dir),
            "checkpoints": "checkpoints",
        }
        if self.custom_nodes:
            entry["custom_nodes"] = "\n".join(str(p) for p in self.custom_nodes)
        text = yaml.safe_dump({"comfyfleet": entry}, sort_keys=False)
        self.config_path.write_text(text)
