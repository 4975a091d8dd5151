"""Live validation logic (`Workflow.check_against`) on /object_info shapes of ComfyUI 0.3.75.

The object_info entries below are trimmed copies of what the real server returns (tooltips
dropped); the live test (tests/integration/test_catalog_live.py) runs the same checks on a node.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.catalog import Catalog, Workflow, input_info
from tests.unit.catalog.test_catalog import small_contract, small_graph, write_workflow

SAMPLERS = ["euler", "euler_ancestral", "heun", "dpmpp_2m", "ddim"]
SCHEDULERS = ["normal", "karras", "exponential", "simple"]
CHECKPOINTS = ["tiny-sd15.ckpt", "tiny-sdxl.ckpt", "tiny-svd.ckpt"]

OBJECT_INFO: dict[str, Any] = {
    "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [CHECKPOINTS, {}]}}},
    "CLIPTextEncode": {
        "input": {
            "required": {
                "text": ["STRING", {"multiline": True, "dynamicPrompts": True}],
                "clip": ["CLIP", {}],
            }
        }
    },
    "EmptyLatentImage": {
        "input": {
            "required": {
                "width": ["INT", {"default": 512, "min": 16, "max": 16384, "step": 8}],
                "height": ["INT", {"default": 512, "min": 16, "max": 16384, "step": 8}],
                "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}],
            }
        }
    },
    "KSampler": {
        "input": {
            "required": {
                "model": ["MODEL", {}],
                "seed": ["INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}],
                "steps": ["INT", {"default": 20, "min": 1, "max": 10000}],
                "cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1}],
                "sampler_name": [SAMPLERS, {}],
                "scheduler": [SCHEDULERS, {}],
                "positive": ["CONDITIONING", {}],
                "negative": ["CONDITIONING", {}],
                "latent_image": ["LATENT", {}],
                "denoise": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}],
            }
        }
    },
    "VAEDecode": {"input": {"required": {"samples": ["LATENT", {}], "vae": ["VAE", {}]}}},
    "SaveImage": {
        "input": {
            "required": {"images": ["IMAGE", {}], "filename_prefix": ["STRING", {}]},
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }
    },
}
MODELS = {"checkpoints": CHECKPOINTS}


def small(tmp_path: Path, contract: dict[str, Any] | None = None, **kwargs: Any) -> Workflow:
    write_workflow(tmp_path, contract=contract)
    kwargs.setdefault("model_map", {"sd15": "tiny-sd15.ckpt"})
    return Catalog.load([tmp_path], **kwargs).get("small")


def test_a_node_that_has_everything_passes(tmp_path: Path) -> None:
    assert small(tmp_path).check_against(OBJECT_INFO, MODELS) == []


def test_unknown_class_type_is_reported_with_the_node(tmp_path: Path) -> None:
    info = {k: v for k, v in OBJECT_INFO.items() if k != "VAEDecode"}
    problems = small(tmp_path).check_against(info, MODELS)
    assert problems == [
        "node 8 'VAE decode' (VAEDecode): class_type 'VAEDecode' is not installed on this node"
    ]


def test_missing_model_is_reported(tmp_path: Path) -> None:
    workflow = small(tmp_path, model_map={"sd15": "v1-5-pruned.safetensors"})
    problems = workflow.check_against(OBJECT_INFO, MODELS)
    assert len(problems) == 1
    assert problems[0].startswith("model checkpoints/v1-5-pruned.safetensors is missing")
    assert "tiny-sd15.ckpt" in problems[0]


def test_without_model_lists_the_loader_choices_decide(tmp_path: Path) -> None:
    assert small(tmp_path).check_against(OBJECT_INFO, {}) == []
    workflow = small(tmp_path, model_map={"sd15": "absent.ckpt"})
    assert "model checkpoints/absent.ckpt is missing" in workflow.check_against(OBJECT_INFO, {})[0]


def test_contract_bounds_wider_than_the_node_are_reported(tmp_path: Path) -> None:
    contract = small_contract()
    contract["parameters"]["width"]["min"] = 8
    contract["parameters"]["steps"]["max"] = 20000
    contract["parameters"]["steps"]["default"] = 10
    problems = small(tmp_path, contract).check_against(OBJECT_INFO, MODELS)
    assert sorted(problems) == [
        "parameter 'steps' -> node 3 (KSampler).steps: "
        "the contract allows 20000 but this node's maximum is 10000",
        "parameter 'width' -> node 5 'Empty latent' (EmptyLatentImage).width: "
        "the contract allows 8 but this node's minimum is 16",
    ]


def test_a_choice_the_node_lacks_is_reported(tmp_path: Path) -> None:
    contract = small_contract()
    contract["parameters"]["sampler"]["choices"] = ["euler", "my_sampler"]
    problems = small(tmp_path, contract).check_against(OBJECT_INFO, MODELS)
    assert problems == [
        "parameter 'sampler' -> node 3 (KSampler).sampler_name: "
        "choices ['my_sampler'] are not offered by this node"
    ]


def test_a_parameter_type_that_does_not_fit_is_reported(tmp_path: Path) -> None:
    contract = small_contract()
    contract["parameters"]["cfg"]["type"] = "string"
    del contract["parameters"]["cfg"]["min"], contract["parameters"]["cfg"]["max"]
    contract["parameters"]["cfg"]["default"] = "7"
    problems = small(tmp_path, contract).check_against(OBJECT_INFO, MODELS)
    assert problems == [
        "parameter 'cfg' -> node 3 (KSampler).cfg: type string does not fit ComfyUI's FLOAT input"
    ]


def test_unmapped_graph_values_are_checked_like_comfyui_does(tmp_path: Path) -> None:
    graph = small_graph()
    graph["3"]["inputs"]["denoise"] = 1.5
    graph["3"]["inputs"]["scheduler"] = "mine"  # mapped? no: the contract maps sampler only
    del graph["8"]["inputs"]["vae"]
    write_workflow(tmp_path, graph=graph)
    problems = (
        Catalog.load([tmp_path], model_map={"sd15": "tiny-sd15.ckpt"})
        .get("small")
        .check_against(OBJECT_INFO, MODELS)
    )
    assert "node 3 (KSampler): input 'denoise': 1.5 is above this node's maximum 1.0" in problems
    assert any("input 'scheduler': 'mine' is not among this node's choices" in p for p in problems)
    assert "node 8 'VAE decode' (VAEDecode): required input 'vae' is missing from the graph" in (
        problems
    )


def test_a_seed_node_with_a_small_maximum_asks_for_a_max(tmp_path: Path) -> None:
    info = copy.deepcopy(OBJECT_INFO)
    info["KSampler"]["input"]["required"]["seed"][1]["max"] = 2**32 - 1
    problems = small(tmp_path).check_against(info, MODELS)
    assert problems == [
        "parameter 'seed' -> node 3 (KSampler).seed: "
        "random seeds go above this node's maximum 4294967295: set max"
    ]


@pytest.mark.parametrize(
    ("entry", "kind", "choices"),
    [
        ([["a", "b"], {"tooltip": "x"}], "COMBO", ["a", "b"]),
        (["COMBO", {"multiselect": False, "options": ["x", "y"]}], "COMBO", ["x", "y"]),
        (["COMBO", {"image_upload": True, "remote": {"route": "/x"}}], "COMBO", None),
        (["INT", {"min": 1}], "INT", None),
        (["IMAGE"], "IMAGE", None),
    ],
)
def test_input_info_reads_old_and_v3_shapes(entry: list[Any], kind: str, choices: Any) -> None:
    info = input_info({"input": {"optional": {"x": entry}}}, "x")
    assert info is not None
    assert (info.kind, info.choices, info.required) == (kind, choices, False)
