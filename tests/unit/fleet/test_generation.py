"""The one table of generation flows per capability."""

from __future__ import annotations

from comfyfleet.fleet.generation import GENERIC_FLOW, flow_for, generation_flow
from comfyfleet.jobs import DEFAULT_WORKFLOWS


def test_a_capability_runs_in_its_typed_flow_or_else_the_generic_one() -> None:
    assert flow_for("text_to_image") == "text-to-image"
    assert flow_for("text_to_image_sdxl") == "text-to-image-sdxl"
    assert flow_for("image_to_video") == "image-to-video"
    assert flow_for("image_to_image") == GENERIC_FLOW == "comfy-workflow"
    assert flow_for("delay") == GENERIC_FLOW


def test_a_typed_flow_defaults_to_its_capabilitys_workflow() -> None:
    assert generation_flow("text-to-image").default_workflow == "sd15-basic"
    assert generation_flow("text-to-image-sdxl").default_workflow == "sdxl-basic"
    assert generation_flow("image-to-video").default_workflow == DEFAULT_WORKFLOWS["image_to_video"]
    assert generation_flow(GENERIC_FLOW).default_workflow is None


def test_a_node_gets_the_flows_of_its_capabilities_and_the_generic_one() -> None:
    served = ["text_to_image", "delay"]
    assert [g for g in ("text-to-image", "text-to-image-sdxl", "image-to-video", GENERIC_FLOW)
            if generation_flow(g).serves(served)] == ["text-to-image", GENERIC_FLOW]  # fmt: skip
