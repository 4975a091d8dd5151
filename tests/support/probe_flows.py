"""A trivial async flow that records when it ran: the worker's latency and concurrency probe."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from prefect import flow


@flow(name="probe-sleep")
async def probe_sleep(tag: str, out_dir: str, seconds: float = 2.0) -> None:
    started = time.time()
    await asyncio.sleep(seconds)
    Path(out_dir, f"{tag}.json").write_text(json.dumps({"start": started, "end": time.time()}))
