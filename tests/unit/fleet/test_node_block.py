"""One node schema: the registry block, the live state and the REST view derive from NodeConfig,
so they accept the same nodes (a capacity the config refuses, the block refuses too)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from comfyfleet.api.fleet import NodeInfo
from comfyfleet.fleet.node_block import ComfyUINode
from comfyfleet.fleet.state import NodeState
from comfyfleet.settings import NodeConfig, NodeSpec


def test_the_block_holds_a_nodes_fields_but_its_id() -> None:
    assert list(ComfyUINode.model_fields) == list(NodeSpec.model_fields)
    assert list(NodeConfig.model_fields) == ["id", *NodeSpec.model_fields]
    node = NodeConfig(id="gpu-1", url="http://10.0.0.5:8188", capacity=4, metadata={"gpu": "L4"})
    block = ComfyUINode.of(node)
    assert NodeConfig(id="gpu-1", **block.model_dump(include=set(NodeSpec.model_fields))) == node


def test_a_capacity_the_config_refuses_the_block_refuses_too() -> None:
    with pytest.raises(ValidationError):
        NodeConfig(id="gpu-1", url="http://a:8188", capacity=100)
    with pytest.raises(ValidationError):
        ComfyUINode(url="http://a:8188", capacity=100)  # once skipped silently by the registry
    schema = ComfyUINode.model_json_schema()["properties"]["capacity"]
    assert (schema["minimum"], schema["maximum"]) == (1, 64)  # what the Prefect UI's form checks


def test_the_live_state_and_the_rest_view_extend_the_node() -> None:
    assert set(NodeConfig.model_fields) <= set(NodeState.model_fields)
    assert set(NodeState.model_fields) <= set(NodeInfo.model_fields)
    state = NodeState(id="gpu-1", url="http://a:8188", state="up", in_flight=1)
    info = NodeInfo.model_validate(state)
    assert info.model_dump(exclude={"joined"}) == state.model_dump() and info.joined is None


def test_blocks_offers_the_library_type_to_prefect_block_register() -> None:
    """`prefect block register -m blocks` registers every block class among the module's
    members: the library's ComfyUINode, re-exported."""
    import inspect

    from prefect.blocks.core import Block

    import blocks

    found = [cls for _, cls in inspect.getmembers(blocks) if Block.is_block_class(cls)]
    assert found == [ComfyUINode]
