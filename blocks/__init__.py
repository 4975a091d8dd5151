"""The Prefect block types of ComfyFleet, for `prefect block register -m blocks`: the node
registry's `ComfyUINode` (defined in the library, comfyfleet.fleet.node_block)."""

from comfyfleet.fleet.node_block import ComfyUINode

__all__ = ["ComfyUINode"]
