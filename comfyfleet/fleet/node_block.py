"""`ComfyUINode`: one ComfyUI server of the fleet, as a Prefect block.

The block documents are the node registry: one document per node, named by the node id
(`gpu-1`), editable in the Prefect UI's Blocks page. Its fields are `NodeSpec`'s, the node schema
(`NodeConfig`) without the id, so the block accepts exactly what a node may be (a capacity the
config refuses, the block refuses too). `comfyfleet.yaml` nodes are applied to them at start
(comfyfleet.fleet.provision); the CLI, REST admin and self-join edit them
(comfyfleet.fleet.registry).
`prefect block register -m blocks` registers the type (blocks/ re-exports it).
"""

from __future__ import annotations

from prefect.blocks.core import Block

from comfyfleet.settings import NodeConfig, NodeSpec

NODE_BLOCK_TYPE = "comfyui-node"


class ComfyUINode(Block, NodeSpec):
    """A ComfyUI server that runs ComfyFleet jobs."""

    _block_type_name = "ComfyUI Node"
    _block_type_slug = NODE_BLOCK_TYPE
    _description = "One ComfyUI server of the fleet: where it is, what it runs and how much."

    @classmethod
    def of(cls, node: NodeConfig) -> ComfyUINode:
        """The block of a node (saved under the node's id)."""
        return cls(**node.model_dump(exclude={"id"}))
