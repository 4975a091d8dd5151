"""Simulated ComfyUI 0.3.75 nodes for benchmarks: hundreds in one process, each on its own port,
speaking the HTTP routes and websocket messages the fleet uses, with a real queue, interrupts,
history and cache, but no model: work is timed sleeps and outputs are tiny files.

    async with SimFleet(count=300, seconds=2.0) as fleet:
        ... fleet.urls ...

`python -m bench.simnode --count 300 --base-port 20000` serves a fleet until Ctrl-C. Only for
benchmarks: tests/integration/test_simnode_contract.py holds it to what a real node does.
"""

from bench.simnode.fleet import SimFleet
from bench.simnode.node import SimNode, SimNodeConfig

__all__ = ["SimFleet", "SimNode", "SimNodeConfig"]
