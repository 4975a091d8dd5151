"""Raw graphs: shape checks, what a graph needs, ceilings, denied class types, and the refusal
when no node has what it needs — each in ComfyUI's own 400 shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.catalog.raw import (
    GraphError,
    Inventory,
    check_ceilings,
    check_denied,
    check_runnable,
    class_types,
    input_refs,
    model_files,
    normalize_inputs,
    output_node_ids,
    parse_graph,
)

REPO = Path(__file__).resolve().parents[3]
SHA = "a" * 64


def sd15() -> dict[str, Any]:
    return json.loads((REPO / "workflows/text_to_image/sd15-basic.json").read_text())


def delay_graph(extra: str | None = None) -> dict[str, Any]:
    graph: dict[str, Any] = {
        "1": {"class_type": "TestDelay", "inputs": {"seconds": 0.1, "width": 8, "height": 8}},
    }
    if extra:
        graph["2"] = {"class_type": extra, "inputs": {"image": ["1", 0]}}
        graph["3"] = {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}}
    return graph


LEAN = Inventory(
    class_types=frozenset(
        {
            "TestDelay",
            "SaveImage",
            "CheckpointLoaderSimple",
            "CLIPTextEncode",
            "EmptyLatentImage",
            "KSampler",
            "VAEDecode",
        }
    ),
    output_class_types=frozenset({"TestDelay", "SaveImage"}),
    models={"checkpoints": frozenset({"tiny-sd15.ckpt"})},
)
WITH_EXTRA = Inventory(
    class_types=LEAN.class_types | {"TestOnlyHere"},
    output_class_types=LEAN.output_class_types,
    models=LEAN.models,
)


def test_an_exported_graph_reads_its_class_types_and_model_files() -> None:
    graph = parse_graph(sd15())
    assert {"CheckpointLoaderSimple", "KSampler", "SaveImage"} <= class_types(graph)
    assert model_files(graph) == {"v1-5-pruned-emaonly.safetensors"}


@pytest.mark.parametrize(
    ("graph", "error_type", "says"),
    [
        ({}, "invalid_prompt", "non-empty object"),
        ([1, 2], "invalid_prompt", "non-empty object"),
        ({"1": {"inputs": {}}}, "invalid_prompt", "class_type"),
        ({"1": {"class_type": "X", "inputs": []}}, "invalid_prompt", "inputs must be an object"),
        (
            {"1": {"class_type": "X", "inputs": {"a": ["9", 0]}}},
            "prompt_outputs_failed_validation",
            "not in the prompt",
        ),
    ],
)
def test_a_malformed_graph_is_refused_in_comfyuis_shape(
    graph: Any, error_type: str, says: str
) -> None:
    with pytest.raises(GraphError) as caught:
        parse_graph(graph)
    body = caught.value.body
    assert body["error"]["type"] == error_type
    assert set(body) == {"error", "node_errors"}
    assert says in json.dumps(body)


def test_a_graph_needing_a_class_type_no_node_has_names_it() -> None:
    graph = parse_graph(delay_graph("NoSuchNode"))
    with pytest.raises(GraphError) as caught:
        check_runnable(graph, {"gpu-1": LEAN, "gpu-2": WITH_EXTRA})
    body = caught.value.body
    assert body["error"]["type"] == "missing_node_type"
    assert "NoSuchNode" in body["error"]["message"]
    assert body["node_errors"]["2"]["class_type"] == "NoSuchNode"


def test_a_graph_runs_where_every_class_type_is() -> None:
    graph = parse_graph(delay_graph("TestOnlyHere"))
    assert check_runnable(graph, {"gpu-1": LEAN, "gpu-2": WITH_EXTRA}) == "gpu-2"
    with pytest.raises(GraphError) as caught:
        check_runnable(graph, {"gpu-1": LEAN})
    assert "TestOnlyHere" in caught.value.body["error"]["message"]


def test_a_missing_model_is_named_on_its_node() -> None:
    graph = parse_graph(sd15())
    with pytest.raises(GraphError) as caught:
        check_runnable(graph, {"gpu-1": LEAN})
    body = caught.value.body
    assert body["node_errors"]["4"]["errors"][0]["type"] == "value_not_in_list"
    assert "v1-5-pruned-emaonly.safetensors" in json.dumps(body)
    graph["4"]["inputs"]["ckpt_name"] = "tiny-sd15.ckpt"
    assert check_runnable(graph, {"gpu-1": LEAN}) == "gpu-1"


def test_no_node_has_everything_though_each_thing_is_somewhere() -> None:
    split = {
        "a": Inventory(class_types=LEAN.class_types | {"TestOnlyHere"}),
        "b": Inventory(class_types=LEAN.class_types, models={"checkpoints": frozenset({"x.ckpt"})}),
    }
    graph = parse_graph(
        {
            **delay_graph("TestOnlyHere"),
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.ckpt"}},
        }
    )
    with pytest.raises(GraphError) as caught:
        check_runnable(graph, split)
    assert caught.value.body["error"]["type"] == "no_capable_node"


def test_no_node_known_is_a_refusal_and_no_output_node_too() -> None:
    with pytest.raises(GraphError, match="reported"):
        check_runnable(parse_graph(delay_graph()), {})
    graph = parse_graph({"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "x"}}})
    with pytest.raises(GraphError) as caught:
        check_runnable(graph, {"gpu-1": LEAN})
    assert caught.value.body["error"]["type"] == "prompt_no_outputs"


def test_ceilings_bound_the_same_inputs_as_contracts() -> None:
    graph = parse_graph(sd15())
    ceilings = {
        "width": 2048,
        "height": 2048,
        "steps": 10,
        "batch_size": 8,
        "output_pixels": 16 << 20,
    }
    with pytest.raises(GraphError) as caught:
        check_ceilings(graph, ceilings)
    error = caught.value.body["node_errors"]["3"]["errors"][0]
    assert error["type"] == "value_bigger_than_max"
    assert error["extra_info"]["input_name"] == "steps"
    graph["3"]["inputs"]["steps"] = 10
    check_ceilings(graph, ceilings)
    graph["5"]["inputs"].update(width=2048, height=2048)
    with pytest.raises(GraphError, match="max_output_pixels"):
        check_ceilings(graph, {**ceilings, "output_pixels": 1 << 20})


def test_denied_class_types_are_refused_by_node() -> None:
    graph = parse_graph(delay_graph("TestOnlyHere"))
    check_denied(graph, ["LoadImageFromPath"])
    with pytest.raises(GraphError) as caught:
        check_denied(graph, ["TestOnlyHere"])
    assert caught.value.body["error"]["type"] == "denied_class_type"
    assert list(caught.value.body["node_errors"]) == ["2"]


def test_uploaded_inputs_become_refs_only_when_stored() -> None:
    graph = parse_graph(
        {
            "1": {"class_type": "LoadImage", "inputs": {"image": f"{SHA}.png"}},
            "2": {"class_type": "LoadImage", "inputs": {"image": f"{'b' * 64}.png"}},
            "3": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        }
    )
    normal = normalize_inputs(graph, lambda name: name == f"{SHA}.png")
    assert normal["1"]["inputs"]["image"] == f"comfyfleet/{SHA}.png"
    assert normal["2"]["inputs"]["image"] == f"{'b' * 64}.png"
    assert input_refs(normal) == [f"comfyfleet/{SHA}.png"]


def test_output_nodes_in_graph_order() -> None:
    graph = parse_graph(delay_graph("TestOnlyHere"))
    assert output_node_ids(graph, LEAN.output_class_types) == ["1", "3"]
