"""image-to-video: a Stable Video Diffusion job on one ComfyUI node.

`image` is a stored input (`input:<sha256>.png`, as the gateway stores uploads) or, for operators
running it from Prefect on the control host, a local file path. The node receives it once, under
its content-hash name.

    prefect deployment run 'image-to-video/gpu-1' -p image=/path/to/still.png -p frames=14
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow

from flows._tasks import run_job, run_name


@flow(name="image-to-video", flow_run_name=run_name("i2v"))
async def image_to_video(
    image: str,
    node: str | None = None,
    frames: int | None = None,
    fps: int | None = None,
    motion_bucket_id: int | None = None,
    augmentation_level: float | None = None,
    width: int | None = None,
    height: int | None = None,
    steps: int | None = None,
    cfg: float | None = None,
    seed: int | None = None,
    checkpoint: str | None = None,
    workflow: str = "svd-basic",
    priority: Literal["high", "normal", "low"] = "normal",
) -> dict[str, Any]:
    """Animate a still image with an SVD workflow on one ComfyUI node."""
    request = dict(
        image=image, frames=frames, fps=fps, motion_bucket_id=motion_bucket_id,
        augmentation_level=augmentation_level, width=width, height=height, steps=steps, cfg=cfg,
        seed=seed, checkpoint=checkpoint,
    )  # fmt: skip
    return await run_job(
        workflow=workflow,
        request=request,
        node=node,
        priority=priority,
    )
