"""Doorbells between the processes of one host: "look now" instead of "look at the next poll".

Every loop that waits for work in the job store (the dispatcher for queued jobs, each worker's
shifts for attempts given to their nodes) polls it at a modest interval, and listens on a bell: a
Unix datagram socket in a directory shared by the fleet's processes on this host. Whoever writes
the work rings the bell after its commit (a job submitted → `DISPATCH`; jobs bound to nodes, a
cancel → `WORK`; an attempt ended, a slot freed → `DISPATCH`). A ring is one datagram to every
listener of that kind; it carries no data and can be lost without harm (the poll covers it, and
covers processes on other hosts).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import tempfile
from pathlib import Path

DISPATCH = "dispatch"
"""The fleet service's dispatcher: a job was queued or a slot freed."""
WORK = "work"
"""The workers' shifts: attempts were given to nodes, or a job asks to be cancelled."""


def bell_dir(database_url: str) -> Path:
    """The bells of the fleet whose job store is `database_url` (what its processes share). A
    socket path is at most 107 bytes, so the directory sits in the temp directory, named by a
    hash of the URL."""
    digest = hashlib.sha256(database_url.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"comfyfleet-bells-{digest}"


def ring(directory: Path, kind: str) -> None:
    """Wake every listener of `kind` (best effort; never raises)."""
    try:
        names = [p for p in directory.iterdir() if p.name.startswith(f"{kind}-")]
    except OSError:
        return
    if not names:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for path in names:
            try:
                sock.sendto(b"!", str(path))
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(OSError):  # its process is gone
                    path.unlink()
            except OSError:  # full (rung already) or anything else: the poll covers it
                pass


class Bell:
    """A listener: `await bell.wait(timeout)` returns when rung or after `timeout` seconds."""

    def __init__(self, directory: Path, kind: str) -> None:
        self.directory, self.kind = directory, kind
        self.path = directory / f"{kind}-{os.getpid()}-{id(self):x}.sock"
        self._sock: socket.socket | None = None
        self._event = asyncio.Event()

    def open(self) -> Bell:
        """Start listening (needs a running event loop); a bell that cannot open just polls."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.bind(str(self.path))
        except OSError:
            return self
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._drain)
        return self

    def _drain(self) -> None:
        assert self._sock is not None
        with contextlib.suppress(OSError):
            while self._sock.recv(64):
                pass
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        """True when rung (since the last wait), False on timeout."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)
        rung = self._event.is_set()
        self._event.clear()
        return rung

    def close(self) -> None:
        if self._sock is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None
        with contextlib.suppress(OSError):
            self.path.unlink()
