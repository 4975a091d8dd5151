"""Leadership: exactly one fleet service is active. The lock is the database's (a named
MySQL/MariaDB lock, comfyfleet.store.locks; for SQLite, a file lock beside the database, which
is single-host anyway). A second fleet service waits as standby until the leader is gone."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from comfyfleet.store import Database
from comfyfleet.store.locks import get_lock, release_lock

logger = logging.getLogger(__name__)

LEADER_LOCK = "comfyfleet-leader"


@contextlib.contextmanager
def leadership(db: Database) -> Iterator[Any]:
    """Hold the leader lock for the life of the block (blocks until acquired)."""
    if db.is_mysql:
        with db.engine.connect() as conn:
            while not get_lock(conn, name=LEADER_LOCK, wait_s=5):
                logger.info("another fleet service leads; standing by")
            try:
                yield conn
            finally:
                release_lock(conn, name=LEADER_LOCK)
        return
    path = Path(str(db.url.database or "comfyfleet")).with_suffix(".leader")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(str(os.getpid()))
        fh.flush()
        yield fh
