"""Logging: levels from the settings, one file per component, one combined view.

Every ComfyFleet process calls `configure_logging()` at start: the root level is
`logging.level`, single loggers can differ (`logging.levels`, e.g. `{prefect: WARNING}`), and
records go to stderr. Under `comfyfleet up` each component's stdout and stderr go to its own file
in `logging.dir` (`var/logs/<component>.log`), and `CombinedLog` copies every line of every
component's file, prefixed with the component's name, into `fleet.log` beside them, where the
supervisor writes its own lines too (`comfyfleet logs [COMPONENT] [-f]` prints or follows one).
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from comfyfleet.settings import Settings

COMBINED = "fleet"
"""The combined view: `<logging.dir>/fleet.log`."""
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUIET_BY_DEFAULT = {"httpx": "WARNING", "httpcore": "WARNING", "alembic": "WARNING"}


_SECRETS = re.compile(
    r"(?P<key>(?:access_token|token|client_secret|password)=)[^&\s\"']+"
    r"|(?P<bearer>Bearer\s+)[^\s\"',]+"
    r"|\b(?P<prefix>cf[bjn]_)[A-Za-z0-9_\-]{8,}",
    re.IGNORECASE,
)
REDACTED = "***"
REDACTED_LOGGERS = ("uvicorn.access", "uvicorn.error", "httpx", "gradio")
"""Loggers whose lines may carry a URL or a header: `RedactSecrets` is on each."""


def redact(text: str) -> str:
    """`text` with bearer, join and node tokens, `access_token=` and the like masked."""

    def mask(match: re.Match[str]) -> str:
        lead = match.group("key") or match.group("bearer") or match.group("prefix")
        return f"{lead}{REDACTED}"

    return _SECRETS.sub(mask, text)


class RedactSecrets(logging.Filter):
    """Masks tokens in a record's message and arguments (the access log's request line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {
                k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()
            }
        return True


def redact_logs() -> None:
    """Put `RedactSecrets` on the `REDACTED_LOGGERS` (once; the gateway calls it)."""
    for name in REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())


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
