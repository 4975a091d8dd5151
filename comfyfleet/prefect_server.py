"""Start and stop a local Prefect server (the embedded fleet and the test session use it).

Prefect is always used with `PREFECT_API_URL` set: its ephemeral mode starts a throwaway server
per script (5–12 s each, measured) and workers refuse it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

logger = logging.getLogger(__name__)


def prefect_env(*, api_url: str, home: Path) -> dict[str, str]:
    """Environment every ComfyFleet process that talks to Prefect runs with."""
    return {
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_UI_ENABLED": os.environ.get("PREFECT_UI_ENABLED", "true"),
        # Workers: answer a new run within a second, report liveness often.
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
        # Logs reach the UI within a fraction of a second instead of 2 s batches.
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
    }


@dataclass
class PrefectServer:
    """A `prefect server start` child process with its own PREFECT_HOME (SQLite inside it)."""

    home: Path
    port: int
    host: str = "127.0.0.1"
    log_path: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        return prefect_env(api_url=self.api_url, home=self.home)

    def start(self, *, timeout: float = 120.0) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path or self.home / "server.log"
        self.log_path = log_path
        env = {**os.environ, **self.env()}
        cmd = [
            sys.executable, "-m", "prefect", "server", "start",
            "--host", self.host, "--port", str(self.port),
        ]  # fmt: skip
        logger.info("starting Prefect server on %s (home %s)", self.ui_url, self.home)
        with log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.wait_ready(timeout=timeout)

    def wait_ready(self, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(
                    f"Prefect server exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"Prefect server not ready after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, *, timeout: float = 20.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
