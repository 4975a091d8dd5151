"""text-to-image-sdxl: an SDXL text-to-image job on one ComfyUI node.

prefect deployment run 'text-to-image-sdxl/gpu-1' -p prompt="a red fox, studio light"
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow

from flows._tasks import run_job, run_name


@flow(name="text-to-image-sdxl", flow_run_name=run_name("sdxl"))
async def text_to_image_sdxl(
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
    workflow: str = "sdxl-basic",
    job_id: str | None = None,
    attempt_id: str | None = None,
    priority: Literal["high", "normal", "low"] = "normal",
) -> dict[str, Any]:
    """Generate images from a text prompt with an SDXL workflow on one ComfyUI node."""
    request = dict(
        prompt=prompt, negative_prompt=negative_prompt, width=width, height=height, steps=steps,
        cfg=cfg, seed=seed, sampler=sampler, scheduler=scheduler, batch_size=batch_size,
        checkpoint=checkpoint,
    )  # fmt: skip
    return await run_job(
        workflow=workflow,
        request=request,
        node=node,
        job_id=job_id,
        attempt_id=attempt_id,
        priority=priority,
    )
