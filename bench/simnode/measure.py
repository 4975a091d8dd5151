"""What simulated nodes cost: `python -m bench.simnode.measure [--count 300] [--jobs 300]`.

Starts `python -m bench.simnode --count N` as a child process and reads its CPU time from /proc:
idle with no connection; idle with one websocket per node, pinged every 4 s as the project's
client pings; and per job while the project's `ComfyUIClient` runs jobs on the nodes (submit,
follow the websocket, download the outputs) for two graphs: the test delay node (4 progress
steps, then SaveImage) and the SD1.5 text-to-image workflow (20 sampler steps with preview
frames). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import websockets

from bench.drive import machine_busy_s, process_cpu_s
from comfyfleet.comfyui import ComfyUIClient
from comfyfleet.comfyui.hub import PING_INTERVAL_S
from comfyfleet.settings import REPO_ROOT

SD15_WORKFLOW = REPO_ROOT / "workflows" / "text_to_image" / "sd15-basic.json"


def delay_graph(seed: int) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "TestDelay",
            "inputs": {"seconds": 0.0, "seed": seed, "steps": 4, "width": 64, "height": 64},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "m"}},
    }


def sd15_graph(seed: int) -> dict[str, Any]:
    graph = json.loads(SD15_WORKFLOW.read_text())
    for node in graph.values():
        if node["class_type"] == "CheckpointLoaderSimple":
            node["inputs"]["ckpt_name"] = "tiny-sd15.ckpt"
        if node["class_type"] == "KSampler":
            node["inputs"]["seed"] = seed
    return graph


@contextlib.contextmanager
def fleet_process(count: int) -> Iterator[tuple[int, list[str]]]:
    """The simulator as a child (its own process group); its pid and URLs."""
    command = [sys.executable, "-m", "bench.simnode", "--count", str(count), "--seconds", "0"]
    proc = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        urls = [proc.stdout.readline().strip() for _ in range(count)]
        if not all(urls):
            raise RuntimeError("the simulator exited before printing its URLs")
        yield proc.pid, urls
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def rss_mib(pid: int) -> int:
    resident_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return round(resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20)


def idle_cpu(pid: int, seconds: float) -> dict[str, float]:
    """Share of one core the process and the rest of the machine used over ``seconds``."""
    own, machine, started = process_cpu_s(pid), machine_busy_s(), time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - started
    used = process_cpu_s(pid) - own
    return {
        "wall_s": round(wall, 1),
        "cpu_s": round(used, 3),
        "core_percent": round(100 * used / wall, 3),
        "other_processes_cores": round((machine_busy_s() - machine - used) / wall, 2),
    }


async def idle_with_sockets(pid: int, urls: list[str], seconds: float) -> dict[str, float]:
    """Idle CPU with one open websocket per node, pinged as the project's client pings."""
    sockets = [
        await websockets.connect(
            url.replace("http://", "ws://") + f"/ws?clientId=m{i}", ping_interval=PING_INTERVAL_S
        )
        for i, url in enumerate(urls)
    ]
    try:
        for sock in sockets:
            await sock.recv()
        return await asyncio.to_thread(idle_cpu, pid, seconds)
    finally:
        for sock in sockets:
            await sock.close()


async def per_job(
    pid: int, urls: list[str], jobs: int, concurrency: int, graph: Any
) -> dict[str, float]:
    """Run ``jobs`` jobs through the project's client; the simulator's CPU per job."""
    limit = asyncio.Semaphore(concurrency)
    with tempfile.TemporaryDirectory(prefix="simnode-measure-") as out:

        async def one(index: int, comfy: ComfyUIClient) -> None:
            async with limit:
                result = await comfy.run(graph(random.randrange(2**40)))
                for file in result.files:
                    await comfy.download(file, f"{out}/{index}-{file.filename}")

        clients = [ComfyUIClient(url) for url in urls]
        try:
            before, started = process_cpu_s(pid), time.monotonic()
            await asyncio.gather(*(one(i, clients[i % len(clients)]) for i in range(jobs)))
            wall, used = time.monotonic() - started, process_cpu_s(pid) - before
        finally:
            for client in clients:
                await client.aclose()
    return {
        "jobs": jobs,
        "wall_s": round(wall, 1),
        "cpu_s": round(used, 3),
        "cpu_ms_per_job": round(1000 * used / jobs, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.simnode.measure", description=__doc__)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--idle-s", type=float, default=30.0)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"nodes": args.count}
    with fleet_process(args.count) as (pid, urls):
        report["rss_mib"] = rss_mib(pid)
        report["idle"] = idle_cpu(pid, args.idle_s)
        report["idle_with_sockets"] = asyncio.run(idle_with_sockets(pid, urls, args.idle_s))
        for name, graph in (("delay_job", delay_graph), ("sd15_job", sd15_graph)):
            if args.jobs > 0:
                report[name] = asyncio.run(per_job(pid, urls, args.jobs, args.concurrency, graph))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
