"""text-to-image: an SD1.5 text-to-image job on one ComfyUI node (and, with the same
parameters, text-to-image-sdxl: flows/text_to_image_sdxl.py).

Deployments `text-to-image/<node>` pin the run to a node (their `node` parameter). Parameters are
flat so the Prefect CLI works as is:

    prefect deployment run 'text-to-image/gpu-1' -p prompt="a red fox"

A parameter left out takes the fleet default (`defaults.<workflow>.<param>` in comfyfleet.yaml),
then the workflow contract's default.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow
from prefect.runtime import flow_run

from comfyfleet.fleet.generation import generation_flow
from flows._tasks import run_job, run_name


@flow(name="text-to-image", flow_run_name=run_name("t2i"))
async def text_to_image(
    prompt: str,
    node: str | None = None,
    negative_prompt: str | None = None,
    width: int | None = None,
    height: int | None = None,
    steps: int | None = None,
    cfg: float | None = None,
    seed: int | None = None,
    sampler: str | None = None,
    scheduler: str | None = None,
    batch_size: int | None = None,
    checkpoint: str | None = None,
    workflow: str | None = None,
    priority: Literal["high", "normal", "low"] = "normal",
) -> dict[str, Any]:
    """Generate images from a text prompt on one ComfyUI node (workflow: sd15-basic unless
    given; sdxl-basic in text-to-image-sdxl)."""
    request = dict(
        prompt=prompt, negative_prompt=negative_prompt, width=width, height=height, steps=steps,
        cfg=cfg, seed=seed, sampler=sampler, scheduler=scheduler, batch_size=batch_size,
        checkpoint=checkpoint,
    )  # fmt: skip
    return await run_job(
        workflow=workflow or generation_flow(flow_run.flow_name).default_workflow,
        request=request,
        node=node,
        priority=priority,
    )
