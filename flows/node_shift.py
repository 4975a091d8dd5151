"""node-shift: the flow run that works one node (deployment `node-shift/<node>` in the node's pool).

The fleet service starts one per node in rotation and starts another when a shift is gone (its
worker killed, its run cancelled). The run takes every attempt the dispatcher gives its node and
runs each as a `job` task run (flows/_tasks.py) — named `t2i-<job>`, tagged with node and
workflow — concurrently, so the node's ComfyUI always has the next prompt queued. How attempts
pass to it exactly once, and what happens when it is lost: comfyfleet.jobs.shift and
comfyfleet.store.shifts.

Cancelling a shift in the Prefect UI does not cancel jobs: the attempts it holds go back to the
node's next shift, which follows their prompts. Cancel a job through ComfyFleet (Gradio, REST,
`comfyfleet cancel`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Cancelled

from comfyfleet.jobs import attempts
from comfyfleet.jobs.shift import NodeShift
from comfyfleet.settings import get_settings
from comfyfleet.store import Work
from flows._tasks import resolve_node, run_work


@flow(name="node-shift", flow_run_name="shift-{node}", persist_result=False)
async def node_shift(node: str) -> Any:
    """Run the jobs the fleet gives one ComfyUI node, each as a task run."""
    block = await resolve_node(node)
    db = attempts.database(get_settings().database.url)

    async def work_on(work: Work) -> Any:
        return await run_work(work, block.url)

    shift = NodeShift(db, node=node, shift_id=str(flow_run.id), run=work_on)
    try:
        why = await shift.run()
    except asyncio.CancelledError:  # cancelled in the Prefect UI: its attempts were handed back
        current = asyncio.current_task()
        if current is None or current.uncancel() > 0:
            raise
        return Cancelled(message=f"Cancelled; {node}'s next shift takes over its jobs.")
    get_run_logger().info("shift on %s ended after %d job(s): %s", node, shift.done, why)
    return why
