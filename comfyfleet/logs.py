"""Logging: levels from the settings, one file per component, one combined view.

Every ComfyFleet process calls `configure_logging()` at start: the root level is
`logging.level`, single loggers can differ (`logging.levels`, e.g. `{prefect: WARNING}`), and
records go to stderr. Under `comfyfleet up` each component's stdout and stderr go to its own file
in `logging.dir` (`var/logs/<component>.log`), and `CombinedLog` copies every line of every
component's file, prefixed with the component's name, into `fleet.log` beside them, where the
supervisor writes its own lines too. `comfyfleet logs [COMPONENT] [-f]` prints (or follows) one.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from comfyfleet.settings import Settings

COMBINED = "fleet"
"""The combined view: `<logging.dir>/fleet.log`."""
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUIET_BY_DEFAULT = {"httpx": "WARNING", "httpcore": "WARNING", "alembic": "WARNING"}


def configure_logging(settings: Settings | None = None) -> None:
    """Root level and per-logger levels from the settings; records to stderr."""
    if settings is None:
        from comfyfleet.settings import get_settings

        try:
            settings = get_settings()
        except Exception:  # a broken config is reported by whoever reads it next
            settings = None
    level = settings.logging.level if settings is not None else "INFO"
    levels = {**QUIET_BY_DEFAULT, **(settings.logging.levels if settings is not None else {})}
    logging.basicConfig(level=level, format=FORMAT, force=True)
    for name, name_level in levels.items():
        logging.getLogger(name).setLevel(name_level)


class CombinedLog:
    """Copies new lines of the component log files into one combined file, prefixed with the
    component's name (`[worker] …`). A thread polls the files; the supervisor adds a file when
    it starts a component and writes its own lines with `write()`."""

    def __init__(self, path: Path, *, interval_s: float = 0.25) -> None:
        self.path = path
        self.interval_s = interval_s
        self._sources: dict[str, tuple[Path, int]] = {}
        self._partial: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        self._out = path.open("ab")

    def follow(self, name: str, path: Path) -> None:
        """Copy what `path` gets from now on (what it holds already stays out)."""
        if path.resolve() == self.path.resolve():
            raise ValueError(f"{path} is the combined log itself")
        with self._lock:
            if name not in self._sources or self._sources[name][0] != path:
                offset = path.stat().st_size if path.exists() else 0
                self._sources[name] = (path, offset)

    def write(self, line: str) -> None:
        with self._lock:
            self._out.write(line.rstrip("\n").encode() + b"\n")
            self._out.flush()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="combined-log", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.poll()
        with self._lock:
            self._out.close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def poll(self) -> None:
        """Copy what is new in every followed file (complete lines only)."""
        with self._lock:
            if self._out.closed:
                return
            for name, (path, offset) in list(self._sources.items()):
                try:
                    size = path.stat().st_size
                except OSError:
                    continue
                if size < offset:  # truncated or replaced: start over
                    offset = 0
                if size == offset:
                    continue
                with path.open("rb") as fh:
                    fh.seek(offset)
                    data = self._partial.pop(name, b"") + fh.read(size - offset)
                self._sources[name] = (path, size)
                lines = data.split(b"\n")
                if lines[-1]:
                    self._partial[name] = lines[-1]
                prefix = f"[{name}] ".encode()
                self._out.writelines(prefix + line + b"\n" for line in lines[:-1])
            self._out.flush()


# -- `comfyfleet logs` ---------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "logs",
        help="print the embedded fleet's logs (combined, or one component's)",
        description="Print var/logs/fleet.log (every component, prefixed) or one component's "
        "file: prefect-server, comfyui-<node>, worker, fleet-service, web.",
    )
    parser.add_argument("component", nargs="?", default=COMBINED, help="default: all (fleet)")
    parser.add_argument("-n", "--lines", type=int, default=100, help="last N lines (0: all)")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    parser.set_defaults(func=cmd_logs)


def cmd_logs(args: argparse.Namespace) -> int:
    import sys

    from comfyfleet.cli import CliError, load_settings

    directory = load_settings().logging.dir
    path = directory / f"{args.component}.log"
    if not path.is_file():
        known = sorted(p.stem for p in directory.glob("*.log")) if directory.is_dir() else []
        raise CliError(f"no log {path} (components with logs: {', '.join(known) or 'none yet'})")
    if args.lines < 0:
        raise CliError("--lines must be 0 or more")
    print_tail(path, args.lines, sys.stdout)
    if args.follow:
        follow(path, sys.stdout)
    return 0


def print_tail(path: Path, lines: int, out: TextIO) -> None:
    text = path.read_text(errors="replace").splitlines()
    for line in text[-lines:] if lines else text:
        print(line, file=out)


def follow(path: Path, out: TextIO, *, interval_s: float = 0.25) -> None:
    """Print what the file gets from now on, until Ctrl-C."""
    offset = path.stat().st_size
    while True:
        size = path.stat().st_size
        if size < offset:
            offset = 0
        if size > offset:
            with path.open("rb") as fh:
                fh.seek(offset)
                out.write(fh.read(size - offset).decode(errors="replace"))
                out.flush()
            offset = size
        time.sleep(interval_s)
