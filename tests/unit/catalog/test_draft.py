"""Drafting a contract from a raw graph (comfyfleet.catalog.draft): every draft loads with the
catalog loader and renders back to the graph it came from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from comfyfleet.catalog import Workflow
from comfyfleet.catalog.contract import load_contract
from comfyfleet.catalog.draft import (
    GraphFileError,
    draft_contract,
    guess_capability,
    read_graph,
)
from tests.unit.catalog.test_catalog import BUNDLED

BUNDLED_GRAPHS = sorted(BUNDLED.glob("*/*.json"))


def load_draft(tmp_path: Path, graph: dict[str, Any], workflow_id: str, **kw: Any) -> Workflow:
    """Draft a contract for `graph` and load the pair as the catalog would."""
    text = draft_contract(graph, workflow_id=workflow_id, **kw)
    capability = yaml.safe_load(text)["capability"]
    folder = tmp_path / capability
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{workflow_id}.json").write_text(json.dumps(graph))
    (folder / f"{workflow_id}.yaml").write_text(text)
    problems: list[str] = []
    workflow = load_contract(folder / f"{workflow_id}.yaml", problems)
    assert workflow is not None, problems
    return workflow


def node(cls: str, title: str | None = None, **inputs: Any) -> dict[str, Any]:
    made: dict[str, Any] = {"inputs": inputs, "class_type": cls}
    if title is not None:
        made["_meta"] = {"title": title}
    return made


@pytest.mark.parametrize("path", BUNDLED_GRAPHS, ids=lambda p: p.stem)
def test_a_bundled_graph_drafts_a_valid_contract(tmp_path: Path, path: Path) -> None:
    graph = json.loads(path.read_text())
    text = draft_contract(graph, workflow_id=path.stem)
    assert text.startswith("# DRAFT")
    workflow = load_draft(tmp_path, graph, path.stem)
    assert workflow.capability == path.parent.name  # the guess agrees with the bundled folder
    assert workflow.output_nodes == bundled_outputs(path)
    params = workflow.parameters
    classes = {n["class_type"] for n in graph.values()}
    assert params["seed"].type == "seed" and workflow.default("seed") == -1
    assert params["steps"].type == "int" and params["steps"].minimum == 1
    assert params["checkpoint"].type == "model" and params["checkpoint"].folder == "checkpoints"
    if "CLIPTextEncode" in classes:
        assert params["prompt"].type == "string" and params["negative_prompt"].type == "string"
    if "EmptyLatentImage" in classes or "ImageScale" in classes:
        assert {"width", "height"} <= set(params)
        assert params["width"].multiple_of == 8
    if "LoadImage" in classes:
        assert params["image"].type == "image" and workflow.default("image") is None
    # with the defaults (and an image), the draft renders the graph it came from
    given = {"image": "in.png"} if "image" in params else {}
    rendered = workflow.render({**given, "seed": 0}).graph
    for node_id, original in graph.items():
        for name, value in original["inputs"].items():
            loads = original["class_type"] == "LoadImage" and name == "image"
            expected = "in.png" if loads else value
            assert rendered[node_id]["inputs"][name] == expected, (node_id, name)


def bundled_outputs(path: Path) -> list[str]:
    """The output node ids of the bundled contract beside `path`."""
    problems: list[str] = []
    bundled = load_contract(path.with_suffix(".yaml"), problems)
    assert bundled is not None, problems
    return bundled.output_nodes


def test_sdxl_draft_shares_prompt_and_size_across_the_encoder(tmp_path: Path) -> None:
    graph = json.loads((BUNDLED / "text_to_image_sdxl" / "sdxl-basic.json").read_text())
    params = load_draft(tmp_path, graph, "x").parameters
    assert {(t.node, t.input) for t in params["prompt"].targets} == {
        ("6", "text_g"),
        ("6", "text_l"),
    }
    assert {(t.node, t.input) for t in params["width"].targets} == {("5", "width"), ("6", "width")}
    assert params["width"].maximum == 4096
    assert "target_width" in params  # a titled node's other inputs


def test_svd_draft_sends_fps_to_the_model_and_the_video(tmp_path: Path) -> None:
    graph = json.loads((BUNDLED / "image_to_video" / "svd-basic.json").read_text())
    params = load_draft(tmp_path, graph, "x").parameters
    assert [(t.node, t.input) for t in params["fps"].targets] == [("3", "fps"), ("7", "fps")]
    assert params["frames"].targets[0].input == "video_frames"


def test_titled_nodes_expose_their_inputs_untitled_nodes_go_by_id(tmp_path: Path) -> None:
    encode = "CLIP Text Encode (Prompt)"  # ComfyUI's own title, twice: not a name to use
    graph = {
        "1": node("CheckpointLoaderSimple", "Load Checkpoint", ckpt_name="dream.safetensors"),
        "2": node(
            "LoraLoader",
            "Style LoRA",
            lora_name="ink.safetensors",
            strength_model=0.8,
            strength_clip=1.0,
            model=["1", 0],
            clip=["1", 1],
        ),
        "3": node("CLIPTextEncode", encode, text="a cat", clip=["2", 1]),
        "4": node("CLIPTextEncode", encode, text="ugly", clip=["2", 1]),
        "5": node("EmptyLatentImage", "Empty Latent Image", width=768, height=512, batch_size=2),
        "6": node(
            "ControlNetApplyAdvanced",
            "Apply ControlNet",
            positive=["3", 0],
            negative=["4", 0],
            strength=0.5,
            start_percent=0.0,
            end_percent=1.0,
        ),
        "7": node(
            "KSampler",
            "KSampler",
            seed=42,
            steps=30,
            cfg=6,
            sampler_name="euler",
            scheduler="karras",
            denoise=1.0,
            model=["2", 0],
            positive=["6", 0],
            negative=["6", 1],
            latent_image=["5", 0],
        ),
        "8": node("VAEDecode", "VAE Decode", samples=["7", 0], vae=["1", 2]),
        "9": node("PreviewImage", "Preview Image", images=["8", 0]),
        "10": node("SaveImage", "Keep", filename_prefix="x", images=["8", 0]),
    }
    text = draft_contract(graph, workflow_id="titled")
    doc = yaml.safe_load(text)
    assert doc["outputs"] == ["Keep"]  # the saving node, not the preview
    assert doc["parameters"]["prompt"]["node"] == "3"  # through the ControlNet, by id
    assert doc["parameters"]["negative_prompt"]["node"] == "4"
    assert doc["parameters"]["lora"] == {
        "type": "model", "folder": "loras", "default": "ink.safetensors",
        "description": doc["parameters"]["lora"]["description"],
        "node": "Style LoRA", "input": "lora_name",
    }  # fmt: skip
    assert doc["parameters"]["strength_model"]["node"] == "Style LoRA"
    assert "strength" not in doc["parameters"]  # a default title: not the user's choice
    workflow = load_draft(tmp_path, graph, "titled")
    params = workflow.parameters
    assert params["cfg"].type == "float" and params["cfg"].default == 6.0  # an int in the graph
    assert params["width"].default == 768 and params["batch_size"].default == 2
    assert params["strength_model"].type == "float" and params["strength_clip"].default == 1.0
    assert workflow.output_nodes == ["10"]


def test_an_untitled_graph_and_a_given_capability(tmp_path: Path) -> None:
    graph = {
        "1": {"class_type": "TestDelay", "inputs": {"seconds": 1.0, "seed": 3, "steps": 4}},
    }
    doc = yaml.safe_load(draft_contract(graph, workflow_id="d", capability="testing"))
    assert doc["capability"] == "testing"
    assert set(doc["parameters"]) == {"seed", "steps"} and doc["outputs"] == ["1"]
    assert load_draft(tmp_path, graph, "d", capability="testing").capability == "testing"


def test_same_input_with_different_values_gets_two_parameters(tmp_path: Path) -> None:
    graph = {
        "1": node("KSampler", "Base", steps=20, seed=1),
        "2": node("KSampler", "Refiner", steps=10, seed=1),
        "3": node("SaveImage", "Save", images=["2", 0]),
    }
    params = load_draft(tmp_path, graph, "two").parameters
    assert params["steps"].default == 20 and params["steps_refiner"].default == 10
    assert [t.node for t in params["seed"].targets] == ["1", "2"]


@pytest.mark.parametrize(
    ("nodes", "capability"),
    [
        ({"LoadImage": {"image": "a.png"}, "SaveAnimatedWEBP": {}}, "image_to_video"),
        (
            {"CheckpointLoaderSimple": {"ckpt_name": "juggernautXL.safetensors"}},
            "text_to_image_sdxl",
        ),
        ({"EmptyLatentImage": {"width": 1024, "height": 768}}, "text_to_image_sdxl"),
        ({"LoadImage": {"image": "a.png"}, "SaveImage": {}}, "image_to_image"),
        ({"CheckpointLoaderSimple": {"ckpt_name": "pixelart.safetensors"}}, "text_to_image"),
    ],
)
def test_guess_capability(nodes: dict[str, dict[str, Any]], capability: str) -> None:
    graph = {str(i): node(cls, **inputs) for i, (cls, inputs) in enumerate(nodes.items())}
    assert guess_capability(graph) == capability


def test_ui_format_and_bad_json_are_refused_clearly() -> None:
    ui = {"last_node_id": 9, "nodes": [{"id": 1, "type": "KSampler"}], "links": []}
    with pytest.raises(GraphFileError, match=r"Save \(API\)"):
        draft_contract(ui, workflow_id="x")
    with pytest.raises(GraphFileError, match=r"^flow\.json: .*UI.*Save \(API\)"):
        read_graph(json.dumps(ui), "flow.json")
    with pytest.raises(GraphFileError, match=r"^bad\.json: not valid JSON: line 3, column"):
        read_graph('{"1": {"class_type": "A",\n"inputs": {}},\n oops}', "bad.json")
    with pytest.raises(GraphFileError, match="node 1 has no class_type"):
        read_graph('{"1": {"inputs": {}}}', "g.json")
    with pytest.raises(ValueError, match="bad workflow id"):
        draft_contract({"1": node("SaveImage")}, workflow_id="../x")
