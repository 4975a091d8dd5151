"""Prefect block types of ComfyFleet: the node registry and database credentials."""

from blocks.comfyui_node import ComfyUINode

__all__ = ["ComfyUINode"]
