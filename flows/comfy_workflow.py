"""comfy-workflow: any catalog workflow on one ComfyUI node (user-added ones, the test `delay`).

    prefect deployment run 'comfy-workflow/gpu-1' -p workflow=sd15-img2img \
        --params '{"params": {"image": "input:….png", "prompt": "oil painting"}}'
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow

from flows._tasks import run_job, run_name


@flow(name="comfy-workflow", flow_run_name=run_name("wf"))
async def comfy_workflow(
    workflow: str,
    node: str | None = None,
    params: dict[str, Any] | None = None,
    priority: Literal["high", "normal", "low"] = "normal",
) -> dict[str, Any]:
    """Run a catalog workflow with its parameters on one ComfyUI node."""
    return await run_job(
        workflow=workflow,
        request=params or {},
        node=node,
        priority=priority,
    )
