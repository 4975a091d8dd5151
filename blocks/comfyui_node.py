"""`ComfyUINode`: one ComfyUI server of the fleet, as a Prefect block.

The block documents are the node registry: one document per node, named by the node id
(`gpu-1`), editable in the Prefect UI's Blocks page. `comfyfleet.yaml` nodes are applied to them
at start (deployments/), and the CLI and REST admin edit them.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect.blocks.core import Block
from pydantic import Field


class ComfyUINode(Block):
    """A ComfyUI server that runs ComfyFleet jobs."""

    _block_type_name = "ComfyUI Node"
    _block_type_slug = "comfyui-node"
    _description = "One ComfyUI server of the fleet: where it is, what it runs and how much."

    url: str = Field(description="Base URL of the ComfyUI server, e.g. http://10.0.0.5:8188")
    capacity: int = Field(default=2, ge=1, description="Jobs in flight at once (pool limit).")
    capabilities: list[str] = Field(
        default_factory=lambda: [
            "text_to_image",
            "text_to_image_sdxl",
            "image_to_video",
            "image_to_image",
        ],
        description="Generation types this node serves.",
    )
    weight: float = Field(default=1.0, gt=0, description="Share under the weighted strategy.")
    priority: int = Field(default=0, description="Group under the priority_based strategy.")
    enabled: bool = Field(default=True, description="Disabled nodes get no new jobs.")
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Free-form facts: gpu model, location, …"
    )
    pool_type: Literal["comfyfleet", "docker"] = Field(
        default="comfyfleet",
        description="Who runs the node's flows: the in-process ComfyFleet worker, or a Prefect "
        "Docker worker (one container per flow run).",
    )
