"""Requests against a contract: the priority of values, random seeds, every request error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from comfyfleet.catalog import Catalog, ParamError, Workflow
from tests.unit.catalog.test_catalog import small_contract, small_graph, write_workflow


def small(tmp_path: Path, **kwargs: Any) -> Workflow:
    write_workflow(tmp_path)
    return Catalog.load([tmp_path], **kwargs).get("small")


def param_error(workflow: Workflow, params: dict[str, Any]) -> ParamError:
    with pytest.raises(ParamError) as info:
        workflow.validate(params)
    return info.value


# -- priority: request > fleet default > contract default > graph value --------------------


def test_request_beats_fleet_default(tmp_path: Path) -> None:
    workflow = small(tmp_path, fleet_defaults={"small": {"width": 64}})
    assert workflow.validate({"width": 128})["width"] == 128


def test_fleet_default_beats_contract_default(tmp_path: Path) -> None:
    workflow = small(tmp_path, fleet_defaults={"small": {"width": 64, "steps": 2}})
    resolved = workflow.validate({})
    assert resolved["width"] == 64  # the contract says 256
    assert resolved["steps"] == 2  # the contract says 10


def test_contract_default_beats_graph_value(tmp_path: Path) -> None:
    resolved = small(tmp_path).validate({})
    assert resolved["width"] == 256  # the graph says 512
    assert resolved["prompt"] == "contract prompt"


def test_graph_value_applies_when_nothing_else_does(tmp_path: Path) -> None:
    workflow = small(tmp_path)
    resolved = workflow.validate({})
    assert resolved["height"] == 512
    assert resolved["cfg"] == 7.5
    assert workflow.render({}).graph["5"]["inputs"]["height"] == 512


def test_fleet_default_fills_a_parameter_without_contract_default(tmp_path: Path) -> None:
    workflow = small(tmp_path, fleet_defaults={"small": {"height": 72}})
    assert workflow.validate({})["height"] == 72
    assert workflow.json_schema()["properties"]["height"]["default"] == 72


def test_null_in_a_request_means_the_default(tmp_path: Path) -> None:
    assert small(tmp_path).validate({"width": None})["width"] == 256


# -- seeds -------------------------------------------------------------------------------------


def test_seed_minus_one_is_random_and_recorded(tmp_path: Path) -> None:
    workflow = small(tmp_path)
    first = workflow.render({"seed": -1})
    second = workflow.render({"seed": -1})
    assert first.params["seed"] != second.params["seed"]
    for rendered in (first, second):
        assert 0 <= rendered.params["seed"] < 2**53
        assert rendered.graph["3"]["inputs"]["seed"] == rendered.params["seed"]


def test_absent_seed_is_random_not_the_graph_seed(tmp_path: Path) -> None:
    workflow = small(tmp_path)  # the graph's seed is 7
    seeds = {workflow.validate({})["seed"] for _ in range(5)}
    assert len(seeds) == 5 and 7 not in seeds
    assert workflow.default("seed") == -1


def test_explicit_seed_is_kept(tmp_path: Path) -> None:
    rendered = small(tmp_path).render({"seed": 12345})
    assert rendered.params["seed"] == 12345
    assert rendered.graph["3"]["inputs"]["seed"] == 12345


def test_random_seed_respects_a_contract_max(tmp_path: Path) -> None:
    contract = small_contract()
    contract["parameters"]["seed"]["max"] = 3
    write_workflow(tmp_path, contract=contract)
    workflow = Catalog.load([tmp_path]).get("small")
    assert {workflow.validate({})["seed"] for _ in range(40)} <= {0, 1, 2, 3}


def test_a_fleet_default_seed_fixes_it(tmp_path: Path) -> None:
    workflow = small(tmp_path, fleet_defaults={"small": {"seed": 42}})
    assert workflow.validate({})["seed"] == 42


def test_seed_below_minus_one_is_rejected(tmp_path: Path) -> None:
    error = param_error(small(tmp_path), {"seed": -2})
    assert error.param == "seed" and "-1 = random" in error.message


# -- every request error -------------------------------------------------------------------------


def test_unknown_parameter_is_rejected_with_the_known_ones(tmp_path: Path) -> None:
    error = param_error(small(tmp_path), {"widht": 64})
    assert error.param == "widht"
    assert "unknown parameter for workflow 'small'" in error.message
    assert "width" in error.message and "prompt" in error.message
    assert error.workflow == "small"


def test_wrong_type_names_parameter_value_and_type(tmp_path: Path) -> None:
    workflow = small(tmp_path)
    error = param_error(workflow, {"steps": "ten"})
    assert error.param == "steps"
    assert str(error) == "steps: 'ten' (str) is not an integer in 1..50"
    assert param_error(workflow, {"steps": True}).param == "steps"  # a bool is not an int
    assert param_error(workflow, {"steps": 2.5}).param == "steps"
    assert param_error(workflow, {"prompt": 5}).param == "prompt"
    assert param_error(workflow, {"cfg": "high"}).param == "cfg"


def test_integral_numbers_convert(tmp_path: Path) -> None:
    resolved = small(tmp_path).validate({"steps": 12.0, "cfg": 8})
    assert resolved["steps"] == 12 and isinstance(resolved["steps"], int)
    assert resolved["cfg"] == 8.0 and isinstance(resolved["cfg"], float)


def test_out_of_bounds_names_the_allowed_range(tmp_path: Path) -> None:
    workflow = small(tmp_path)
    error = param_error(workflow, {"width": 4096})
    assert error.param == "width"
    assert error.message == (
        "4096 is above the maximum 1024 (allowed: an integer in 64..1024, a multiple of 8)"
    )
    error = param_error(workflow, {"steps": 0})
    assert error.message == "0 is below the minimum 1 (allowed: an integer in 1..50)"


def test_multiple_of_is_enforced(tmp_path: Path) -> None:
    error = param_error(small(tmp_path), {"width": 100})
    assert error.param == "width" and "not a multiple of 8" in error.message


def test_bad_choice_lists_the_choices(tmp_path: Path) -> None:
    error = param_error(small(tmp_path), {"sampler": "heun"})
    assert error.param == "sampler"
    assert error.message == "'heun' is not one of 'euler', 'dpmpp_2m'"


def test_parameters_must_be_an_object(tmp_path: Path) -> None:
    error = param_error(small(tmp_path), ["width", 64])  # type: ignore[arg-type]
    assert error.param is None and "must be an object" in error.message


def test_image_parameter_is_required_and_must_be_a_plain_name(tmp_path: Path) -> None:
    graph = small_graph()
    graph["10"] = {
        "inputs": {"image": "example.png"},
        "class_type": "LoadImage",
        "_meta": {"title": "Input image"},
    }
    contract = small_contract()
    contract["parameters"]["image"] = {"type": "image", "node": "Input image", "input": "image"}
    write_workflow(tmp_path, graph=graph, contract=contract)
    workflow = Catalog.load([tmp_path]).get("small")
    error = param_error(workflow, {})
    assert error.param == "image" and error.message.startswith("required")
    assert param_error(workflow, {"image": "../../etc/passwd"}).param == "image"
    assert param_error(workflow, {"image": "/abs/x.png"}).param == "image"
    rendered = workflow.render({"image": "jobs/ab12cd.png"})
    assert rendered.images == {"image": "jobs/ab12cd.png"}
    assert rendered.graph["10"]["inputs"]["image"] == "jobs/ab12cd.png"
    assert "image" in workflow.json_schema()["required"]


# -- render ------------------------------------------------------------------------------------


def test_render_writes_every_parameter_into_a_copy(tmp_path: Path) -> None:
    workflow = small(tmp_path, model_map={"sd15": "v1-5.safetensors"})
    rendered = workflow.render({"prompt": "a red fox", "width": 64, "steps": 3})
    inputs = {n: node["inputs"] for n, node in rendered.graph.items()}
    assert inputs["6"]["text"] == "a red fox"
    assert inputs["5"]["width"] == 64
    assert inputs["3"]["steps"] == 3
    assert inputs["4"]["ckpt_name"] == "v1-5.safetensors"
    assert rendered.params["checkpoint"] == "v1-5.safetensors"
    assert rendered.models == {"checkpoints": ["v1-5.safetensors"]}
    assert rendered.output_nodes == ["9"]
    assert workflow.graph["6"]["inputs"]["text"] == "graph prompt"  # the catalog's copy is intact
    rendered.graph["5"]["inputs"]["width"] = 1
    assert workflow.render({}).graph["5"]["inputs"]["width"] == 256


def test_request_model_names_go_through_the_map_too(tmp_path: Path) -> None:
    workflow = small(tmp_path, model_map={"sd15": "a.ckpt", "other": "b.ckpt"})
    assert workflow.validate({"checkpoint": "other"})["checkpoint"] == "b.ckpt"
    assert workflow.validate({"checkpoint": "plain.ckpt"})["checkpoint"] == "plain.ckpt"
    assert workflow.required_models == {"checkpoints": ["a.ckpt"]}


def test_render_can_set_the_output_filename_prefix(tmp_path: Path) -> None:
    rendered = small(tmp_path).render({}, filename_prefix="comfyfleet/job-1")
    assert rendered.graph["9"]["inputs"]["filename_prefix"] == "comfyfleet/job-1"


def test_parse_params_reads_command_line_strings(tmp_path: Path) -> None:
    workflow = small(tmp_path)
    parsed = workflow.parse_params({"width": "64", "cfg": "6.5", "prompt": "a cat", "seed": "-1"})
    assert parsed == {"width": 64, "cfg": 6.5, "prompt": "a cat", "seed": -1}
    assert workflow.validate(parsed)["width"] == 64
    with pytest.raises(ParamError, match="width: 'wide'"):
        workflow.validate(workflow.parse_params({"width": "wide"}))


def test_json_schema_describes_the_parameters(tmp_path: Path) -> None:
    schema = small(tmp_path, fleet_defaults={"small": {"width": 64}}).json_schema()
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    width = schema["properties"]["width"]
    assert width == {
        "type": "integer",
        "title": "width",
        "default": 64,
        "minimum": 64,
        "maximum": 1024,
        "multipleOf": 8,
    }
    assert schema["properties"]["sampler"]["enum"] == ["euler", "dpmpp_2m"]
    assert schema["properties"]["seed"]["default"] == -1
    assert schema["properties"]["seed"]["x-comfyfleet-type"] == "seed"
    assert schema["properties"]["cfg"]["type"] == "number"
    assert "required" not in schema
