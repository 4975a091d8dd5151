"""Catalog loading and the static checks: bundled workflows, addressing, every load error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from comfyfleet.catalog import Catalog, CatalogError, UnknownWorkflowError

REPO = Path(__file__).resolve().parents[3]
BUNDLED = REPO / "workflows"
TEST_WORKFLOWS = REPO / "tests" / "workflows"
TINY_MODELS = {"sd15": "tiny-sd15.ckpt", "sdxl": "tiny-sdxl.ckpt", "svd": "tiny-svd.ckpt"}


def small_graph() -> dict[str, Any]:
    """A titled SD1.5-shaped graph, enough for contract tests."""

    def node(cls: str, title: str, **inputs: Any) -> dict[str, Any]:
        return {"inputs": inputs, "class_type": cls, "_meta": {"title": title}}

    return {
        "4": node("CheckpointLoaderSimple", "Load checkpoint", ckpt_name="graph.ckpt"),
        "6": node("CLIPTextEncode", "Positive prompt", text="graph prompt", clip=["4", 1]),
        "5": node("EmptyLatentImage", "Empty latent", width=512, height=512, batch_size=1),
        "3": node(
            "KSampler",
            "KSampler",
            seed=7,
            steps=20,
            cfg=7.5,
            sampler_name="euler",
            scheduler="normal",
            denoise=1.0,
            model=["4", 0],
            positive=["6", 0],
            negative=["6", 0],
            latent_image=["5", 0],
        ),
        "8": node("VAEDecode", "VAE decode", samples=["3", 0], vae=["4", 2]),
        "9": node("SaveImage", "Save image", filename_prefix="test", images=["8", 0]),
    }


def small_contract() -> dict[str, Any]:
    return {
        "title": "Small",
        "parameters": {
            "prompt": {
                "type": "string",
                "default": "contract prompt",
                "node": "Positive prompt",
                "input": "text",
            },
            "width": {
                "type": "int",
                "default": 256,
                "min": 64,
                "max": 1024,
                "multiple_of": 8,
                "node": "Empty latent",
                "input": "width",
            },
            "height": {
                "type": "int",
                "min": 64,
                "max": 1024,
                "node": "Empty latent",
                "input": "height",
            },
            "steps": {
                "type": "int",
                "default": 10,
                "min": 1,
                "max": 50,
                "node": "KSampler",
                "input": "steps",
            },
            "cfg": {"type": "float", "min": 0, "max": 20, "node": "KSampler", "input": "cfg"},
            "sampler": {
                "type": "string",
                "default": "euler",
                "choices": ["euler", "dpmpp_2m"],
                "node": "KSampler",
                "input": "sampler_name",
            },
            "seed": {"type": "seed", "node": "KSampler", "input": "seed"},
            "checkpoint": {
                "type": "model",
                "folder": "checkpoints",
                "default": "sd15",
                "node": "Load checkpoint",
                "input": "ckpt_name",
            },
        },
    }


def write_workflow(
    root: Path,
    workflow_id: str = "small",
    *,
    graph: dict[str, Any] | None = None,
    contract: dict[str, Any] | str | None = None,
    capability: str = "text_to_image",
) -> Path:
    """Write `<root>/<capability>/<id>.json + .yaml`; returns the YAML path."""
    folder = root / capability
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{workflow_id}.json").write_text(json.dumps(graph or small_graph()))
    text = contract if isinstance(contract, str) else yaml.safe_dump(contract or small_contract())
    path = folder / f"{workflow_id}.yaml"
    path.write_text(text)
    return path


def load_errors(root: Path, **kwargs: Any) -> str:
    with pytest.raises(CatalogError) as info:
        Catalog.load([root], **kwargs)
    return str(info.value)


def bundled_catalog() -> Catalog:
    return Catalog.load([BUNDLED, TEST_WORKFLOWS], model_map=TINY_MODELS)


# -- the bundled workflows ----------------------------------------------------------------------


def test_bundled_workflows_load_with_their_capabilities() -> None:
    catalog = bundled_catalog()
    assert {w.id: w.capability for w in catalog} == {
        "sd15-basic": "text_to_image",
        "sdxl-basic": "text_to_image_sdxl",
        "svd-basic": "image_to_video",
        "sd15-img2img": "image_to_image",
        "sd15-upscale": "image_to_image",
        "delay": "delay",
        "fail": "delay",
    }
    assert [w.id for w in catalog.by_capability("text_to_image")] == ["sd15-basic"]


def test_bundled_workflows_expose_the_issue_parameters() -> None:
    catalog = bundled_catalog()
    t2i = {
        "prompt",
        "negative_prompt",
        "width",
        "height",
        "steps",
        "cfg",
        "sampler",
        "scheduler",
        "seed",
        "batch_size",
        "checkpoint",
    }
    assert t2i <= set(catalog.get("sd15-basic").parameters)
    assert t2i <= set(catalog.get("sdxl-basic").parameters)
    svd = {
        "image",
        "frames",
        "fps",
        "motion_bucket_id",
        "augmentation_level",
        "steps",
        "cfg",
        "seed",
        "width",
        "height",
    }
    assert svd <= set(catalog.get("svd-basic").parameters)
    assert catalog.get("svd-basic").parameters["image"].type == "image"
    assert catalog.get("sd15-img2img").parameters["image"].type == "image"


def test_bundled_required_models_go_through_the_model_map() -> None:
    catalog = bundled_catalog()
    assert catalog.get("sd15-basic").required_models == {"checkpoints": ["tiny-sd15.ckpt"]}
    assert catalog.get("sdxl-basic").required_models == {"checkpoints": ["tiny-sdxl.ckpt"]}
    assert catalog.get("svd-basic").required_models == {"checkpoints": ["tiny-svd.ckpt"]}
    unmapped = Catalog.load([BUNDLED])
    assert unmapped.get("sd15-basic").required_models == {"checkpoints": ["sd15"]}


def test_bundled_output_nodes_are_the_save_nodes() -> None:
    catalog = bundled_catalog()
    assert catalog.get("sd15-basic").output_nodes == ["9"]
    svd = catalog.get("svd-basic")
    assert [svd.graph[n]["class_type"] for n in svd.output_nodes] == ["SaveAnimatedWEBP"]
    assert catalog.get("fail").output_nodes == ["2"]


def test_sdxl_size_goes_to_the_latent_and_the_size_conditioning() -> None:
    rendered = bundled_catalog().get("sdxl-basic").render({"width": 96, "height": 64})
    assert rendered.graph["5"]["inputs"]["width"] == 96
    assert rendered.graph["6"]["inputs"]["width"] == 96
    assert rendered.graph["6"]["inputs"]["height"] == 64
    assert rendered.graph["6"]["inputs"]["text_g"] == rendered.graph["6"]["inputs"]["text_l"]


# -- addressing --------------------------------------------------------------------------------


def test_nodes_are_addressed_by_meta_title(tmp_path: Path) -> None:
    write_workflow(tmp_path)
    workflow = Catalog.load([tmp_path]).get("small")
    target = workflow.parameters["width"].targets[0]
    assert (target.node, target.input, target.ref) == ("5", "width", "Empty latent")


def test_nodes_are_addressed_by_id_without_titles(tmp_path: Path) -> None:
    graph = small_graph()
    for node in graph.values():
        del node["_meta"]
    contract = {"parameters": {"steps": {"type": "int", "node": 3, "input": "steps"}}}
    write_workflow(tmp_path, graph=graph, contract=contract)
    workflow = Catalog.load([tmp_path]).get("small")
    assert workflow.parameters["steps"].targets[0].node == "3"
    assert workflow.default("steps") == 20  # the graph's value


def test_a_title_shared_by_two_nodes_is_an_error(tmp_path: Path) -> None:
    graph = small_graph()
    graph["8"]["_meta"]["title"] = "KSampler"
    write_workflow(tmp_path, graph=graph)
    message = load_errors(tmp_path)
    assert "'steps'" in message and "shared by nodes 3, 8" in message


def test_id_and_capability_default_to_file_and_folder(tmp_path: Path) -> None:
    write_workflow(tmp_path, "my-flow", capability="my_capability")
    workflow = Catalog.load([tmp_path]).get("my-flow")
    assert (workflow.id, workflow.capability, workflow.title) == (
        "my-flow",
        "my_capability",
        "Small",
    )


# -- every static error --------------------------------------------------------------------------


def test_dangling_link_names_file_node_and_input(tmp_path: Path) -> None:
    graph = small_graph()
    graph["8"]["inputs"]["samples"] = ["99", 0]
    path = write_workflow(tmp_path, graph=graph)
    message = load_errors(tmp_path)
    assert str(path.with_suffix(".json")) in message
    assert "node 8 'VAE decode' (VAEDecode), input 'samples'" in message
    assert "dangling link to node '99'" in message


def test_mapped_node_missing_names_file_and_parameter(tmp_path: Path) -> None:
    contract = small_contract()
    contract["parameters"]["width"]["node"] = "Latent"
    path = write_workflow(tmp_path, contract=contract)
    message = load_errors(tmp_path)
    assert str(path) in message
    assert "parameter 'width'" in message
    assert "no node with title or id 'Latent'" in message
    assert "'Empty latent'" in message  # the titles are listed as a hint


def test_mapped_input_missing_names_the_node(tmp_path: Path) -> None:
    contract = small_contract()
    contract["parameters"]["steps"]["input"] = "step"
    write_workflow(tmp_path, contract=contract)
    message = load_errors(tmp_path)
    assert "parameter 'steps'" in message
    assert "node 3 (KSampler)" in message
    assert "has no input 'step'" in message and "steps" in message


def test_mapping_onto_a_link_is_an_error(tmp_path: Path) -> None:
    contract = small_contract()
    contract["parameters"]["steps"]["input"] = "model"
    write_workflow(tmp_path, contract=contract)
    assert "input 'model' is a link from another node" in load_errors(tmp_path)


def test_default_of_the_wrong_type_names_parameter_and_node(tmp_path: Path) -> None:
    contract = small_contract()
    contract["parameters"]["steps"]["default"] = "ten"
    path = write_workflow(tmp_path, contract=contract)
    message = load_errors(tmp_path)
    assert str(path) in message and "parameter 'steps'" in message
    assert "node 3 (KSampler)" in message
    assert "'ten' (str) is not an integer" in message


def test_default_out_of_bounds_is_an_error(tmp_path: Path) -> None:
    contract = small_contract()
    contract["parameters"]["width"]["default"] = 2048
    write_workflow(tmp_path, contract=contract)
    assert "2048 is above the maximum 1024" in load_errors(tmp_path)


def test_default_not_among_the_choices_is_an_error(tmp_path: Path) -> None:
    contract = small_contract()
    contract["parameters"]["sampler"]["default"] = "heun"
    write_workflow(tmp_path, contract=contract)
    assert "'heun' is not one of 'euler', 'dpmpp_2m'" in load_errors(tmp_path)


def test_graph_value_used_as_default_must_fit(tmp_path: Path) -> None:
    graph = small_graph()
    graph["5"]["inputs"]["height"] = 4096  # no contract default: the graph's value is the default
    write_workflow(tmp_path, graph=graph)
    message = load_errors(tmp_path)
    assert "parameter 'height'" in message and "the graph's value (used as the default)" in message


def test_unknown_contract_key_is_an_error(tmp_path: Path) -> None:
    contract = small_contract()
    contract["parameters"]["width"]["maximum"] = 5
    write_workflow(tmp_path, contract=contract)
    assert "parameters.width.maximum: Extra inputs are not permitted" in load_errors(tmp_path)


def test_unknown_type_and_min_above_max_are_errors(tmp_path: Path) -> None:
    contract = small_contract()
    contract["parameters"]["steps"]["type"] = "integer"
    contract["parameters"]["width"]["min"] = 2000
    write_workflow(tmp_path, contract=contract)
    message = load_errors(tmp_path)
    assert "unknown type 'integer'" in message
    assert "min 2000 is above max 1024" in message


def test_two_parameters_on_one_input_is_an_error(tmp_path: Path) -> None:
    contract = small_contract()
    contract["parameters"]["height"]["input"] = "width"
    write_workflow(tmp_path, contract=contract)
    message = load_errors(tmp_path)
    assert "node 5 'Empty latent' (EmptyLatentImage): input 'width' is also set by" in message
    assert "'height'" in message


def test_ui_format_json_is_explained(tmp_path: Path) -> None:
    path = write_workflow(tmp_path)
    path.with_suffix(".json").write_text(json.dumps({"nodes": [], "links": [], "version": 0.4}))
    assert 'export the graph with "Save (API)"' in load_errors(tmp_path)


def test_missing_graph_file_is_an_error(tmp_path: Path) -> None:
    path = write_workflow(tmp_path)
    path.with_suffix(".json").unlink()
    assert "small.json: graph file not found" in load_errors(tmp_path)


def test_node_without_class_type_is_an_error(tmp_path: Path) -> None:
    graph = small_graph()
    del graph["8"]["class_type"]
    write_workflow(tmp_path, graph=graph)
    assert "node 8: has no class_type" in load_errors(tmp_path)


def test_bad_output_reference_is_an_error(tmp_path: Path) -> None:
    contract = small_contract()
    contract["outputs"] = ["Save images"]
    write_workflow(tmp_path, contract=contract)
    assert "outputs: no node with title or id 'Save images'" in load_errors(tmp_path)


def test_duplicate_workflow_ids_across_directories(tmp_path: Path) -> None:
    write_workflow(tmp_path / "a")
    write_workflow(tmp_path / "b")
    with pytest.raises(CatalogError, match="already defined by"):
        Catalog.load([tmp_path / "a", tmp_path / "b"])


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    bad = small_contract()
    bad["parameters"]["steps"]["default"] = "ten"
    write_workflow(tmp_path, "one", contract=bad)
    write_workflow(tmp_path, "two", contract="parameters: [not, a, mapping]\n")
    with pytest.raises(CatalogError) as info:
        Catalog.load([tmp_path])
    assert len(info.value.problems) == 2


def test_fleet_default_errors_name_the_setting(tmp_path: Path) -> None:
    write_workflow(tmp_path)
    message = load_errors(tmp_path, fleet_defaults={"small": {"widht": 64, "steps": "few"}})
    assert "defaults.small.widht: unknown parameter" in message
    assert "defaults.small.steps: fleet default: 'few' (str) is not an integer" in message


def test_fleet_defaults_for_an_unknown_workflow_are_a_warning(tmp_path: Path) -> None:
    write_workflow(tmp_path)
    catalog = Catalog.load([tmp_path], fleet_defaults={"gone": {"width": 64}})
    assert catalog.warnings == ["defaults.gone: fleet defaults for an unknown workflow"]


# -- lookups and reload ------------------------------------------------------------------------


def test_unknown_workflow_names_the_id_and_the_known_ids(tmp_path: Path) -> None:
    write_workflow(tmp_path)
    catalog = Catalog.load([tmp_path])
    with pytest.raises(UnknownWorkflowError) as info:
        catalog.get("sd15")
    assert "unknown workflow 'sd15' (known workflows: small)" in str(info.value)
    assert isinstance(info.value, CatalogError)


def test_reload_picks_up_a_dropped_in_pair(tmp_path: Path) -> None:
    write_workflow(tmp_path)
    catalog = Catalog.load([tmp_path])
    write_workflow(tmp_path, "second", capability="other")
    assert "second" not in catalog
    assert catalog.reload() == ["second", "small"]
    assert catalog.get("second").capability == "other"


def test_reload_with_a_broken_file_keeps_the_old_catalog(tmp_path: Path) -> None:
    write_workflow(tmp_path)
    catalog = Catalog.load([tmp_path])
    write_workflow(tmp_path, "broken", contract="parameters: {x: {type: int}}\n")
    with pytest.raises(CatalogError, match="parameter 'x': no target"):
        catalog.reload()
    assert catalog.ids() == ["small"]


def test_graph_property_is_a_copy(tmp_path: Path) -> None:
    write_workflow(tmp_path)
    workflow = Catalog.load([tmp_path]).get("small")
    workflow.graph["5"]["inputs"]["width"] = 1
    assert workflow.graph["5"]["inputs"]["width"] == 512
