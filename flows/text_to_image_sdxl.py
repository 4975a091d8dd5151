"""text-to-image-sdxl: an SDXL text-to-image job on one ComfyUI node.

The text-to-image flow under its own name: the same parameters, `sdxl-basic` as its default
workflow (SDXL size conditioning comes from the workflow contract).

    prefect deployment run 'text-to-image-sdxl/gpu-1' -p prompt="a red fox, studio light"
"""

from __future__ import annotations

from flows._tasks import run_name
from flows.text_to_image import text_to_image

text_to_image_sdxl = text_to_image.with_options(
    name="text-to-image-sdxl",
    flow_run_name=run_name("sdxl"),
    description="Generate images from a text prompt with an SDXL workflow on one ComfyUI node.",
)
