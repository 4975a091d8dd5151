"""The old service's workflow form: loaded directly, and converted by `config import-legacy`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from comfyfleet.catalog import Catalog, CatalogError, import_legacy
from comfyfleet.cli import main
from comfyfleet.settings import Settings
from tests.unit.catalog.test_catalog import small_graph

MAPPING = {
    "prompt": {"node_id": "6", "input_name": "text", "default_value": ""},
    "width": {"node_id": "5", "input_name": "width", "default_value": 768},
    "steps": {"node_id": 3, "input_name": "steps"},
    "seed": {"node_id": "3", "input_name": "seed"},
    "cfg": {"node_id": "3", "input_name": "cfg", "default_value": 6.5},
    "checkpoint": {"node_id": "4", "input_name": "ckpt_name", "default_value": "sd15"},
}


def old_config(root: Path, mapping: dict[str, Any] | None = None) -> Path:
    """An old-service config.yaml with its workflow file where the old service kept it."""
    graph_path = root / "workflows" / "text_to_image" / "sd_basic.json"
    graph_path.parent.mkdir(parents=True, exist_ok=True)
    graph = small_graph()
    for node in graph.values():
        del node["_meta"]  # old exports addressed nodes by id
    graph_path.write_text(json.dumps(graph))
    config = {
        "comfyui": {"host": "127.0.0.1", "port": 8188, "output_dir": "outputs"},
        "database": {
            "host": "db.local",
            "port": 3306,
            "user": "svc",
            "password": "p@ss",
            "database": "comfyui_service",
        },
        "auth": {"enable_client_auth": True, "token_expire_minutes": 720, "secret_key": "s"},
        "task_types": {
            "text_to_image": {
                "workflows": {
                    "sd_basic": {
                        "workflow_file": "workflows/text_to_image/sd_basic.json",
                        "parameter_mapping": mapping or MAPPING,
                        "timeout": 300,  # a key of the old service's own: ignored
                    }
                }
            }
        },
        "nodes": {
            "discovery_mode": "static",
            "load_balancing": {
                "strategy": "priority_based",
                "enable_failover": True,
                "max_retries": 3,
            },
            "static_nodes": [
                {
                    "node_id": "comfyui-worker-1",
                    "host": "192.168.1.101",
                    "port": 8188,
                    "max_concurrent": 4,
                    "capabilities": ["text_to_image"],
                    "metadata": {"location": "rack-1", "gpu_model": "RTX 4090", "priority": 1},
                },
                {"node_id": "Worker_2", "host": "192.168.1.102", "port": 8190},
            ],
        },
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_old_config_loads_directly_as_a_catalog_source(tmp_path: Path) -> None:
    catalog = Catalog.load([old_config(tmp_path)], model_map={"sd15": "tiny-sd15.ckpt"})
    workflow = catalog.get("sd_basic")
    assert workflow.capability == "text_to_image"
    types = {name: spec.type for name, spec in workflow.parameters.items()}
    assert types == {
        "prompt": "string",
        "width": "int",
        "steps": "int",
        "seed": "seed",
        "cfg": "float",
        "checkpoint": "model",
    }
    assert workflow.parameters["checkpoint"].folder == "checkpoints"
    assert workflow.required_models == {"checkpoints": ["tiny-sd15.ckpt"]}
    assert workflow.output_nodes == ["9"]


def test_old_priority_request_then_default_value_then_graph(tmp_path: Path) -> None:
    workflow = Catalog.load([old_config(tmp_path)]).get("sd_basic")
    resolved = workflow.validate({})
    assert resolved["width"] == 768  # default_value beats the graph's 512
    assert resolved["steps"] == 20  # no default_value: the graph's value
    assert resolved["prompt"] == ""
    assert resolved["seed"] != 7  # no default_value for the seed: random
    assert workflow.validate({"width": 64})["width"] == 64
    rendered = workflow.render({"prompt": "a boat"})
    assert rendered.graph["6"]["inputs"]["text"] == "a boat"
    assert rendered.graph["5"]["inputs"]["width"] == 768


def test_old_form_contract_in_a_workflow_directory(tmp_path: Path) -> None:
    folder = tmp_path / "wf" / "text_to_image"
    folder.mkdir(parents=True)
    (folder / "old.json").write_text(json.dumps(small_graph()))
    (folder / "old.yaml").write_text(
        yaml.safe_dump({"workflow_file": "old.json", "parameter_mapping": MAPPING})
    )
    workflow = Catalog.load([tmp_path / "wf"]).get("old")
    assert workflow.capability == "text_to_image"
    assert workflow.validate({"steps": 5})["steps"] == 5


def test_old_mapping_errors_name_the_entry_parameter_and_node(tmp_path: Path) -> None:
    mapping = dict(
        MAPPING,
        width={"node_id": "55", "input_name": "width"},
        steps={"node_id": "3", "input_name": "step"},
    )
    with pytest.raises(CatalogError) as info:
        Catalog.load([old_config(tmp_path, mapping)])
    message = str(info.value)
    assert "config.yaml: task_types.text_to_image.workflows.sd_basic: parameter 'width'" in message
    assert "no node with title or id '55'" in message
    assert "parameter 'steps': node 3 (KSampler): has no input 'step'" in message


def test_import_legacy_writes_pairs_that_load_the_same(tmp_path: Path) -> None:
    old = old_config(tmp_path / "old")
    result = import_legacy(old, workflows_dir=tmp_path / "new")
    assert sorted(p.name for p in result.written) == ["sd_basic.json", "sd_basic.yaml"]
    before = Catalog.load([old]).get("sd_basic")
    after = Catalog.load([tmp_path / "new"]).get("sd_basic")
    assert after.capability == "text_to_image"
    assert after.parameters.keys() == before.parameters.keys()
    for name, spec in before.parameters.items():
        other = after.parameters[name]
        assert (other.type, other.default, other.targets[0].node, other.targets[0].input) == (
            spec.type,
            spec.default,
            spec.targets[0].node,
            spec.targets[0].input,
        )
    assert after.validate({"seed": 1}) == before.validate({"seed": 1})
    with pytest.raises(CatalogError, match="exists already"):
        import_legacy(old, workflows_dir=tmp_path / "new")


def test_import_legacy_converts_nodes_routing_database_and_auth(tmp_path: Path) -> None:
    result = import_legacy(old_config(tmp_path), workflows_dir=tmp_path / "new")
    config = result.config
    assert config["routing"] == {"strategy": "priority_based"}
    assert config["jobs"] == {"max_node_faults": 3}
    assert config["nodes"] == [
        {
            "id": "comfyui-worker-1",
            "url": "http://192.168.1.101:8188",
            "capacity": 4,
            "capabilities": ["text_to_image"],
            "priority": 1,
            "metadata": {"location": "rack-1", "gpu_model": "RTX 4090", "priority": 1},
        },
        {"id": "worker-2", "url": "http://192.168.1.102:8190"},
    ]
    assert config["database"] == {"url": "mysql+pymysql://svc:p%40ss@db.local:3306/comfyui_service"}
    assert config["auth"] == {"token_ttl_minutes": 720}
    assert any("secret_key" in note for note in result.notes)


def test_cli_import_legacy_writes_a_valid_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    old = old_config(tmp_path / "old")
    out = tmp_path / "comfyfleet.yaml"
    args = [
        "config",
        "import-legacy",
        str(old),
        "--workflows-dir",
        str(tmp_path / "wf"),
        "--output",
        str(out),
    ]
    assert main(args) == 0
    assert "wrote" in capsys.readouterr().err
    monkeypatch.setenv("COMFYFLEET_CONFIG", str(out))
    settings = Settings()
    assert [n.id for n in settings.nodes] == ["comfyui-worker-1", "worker-2"]
    assert settings.routing.strategy == "priority_based"
    assert Catalog.load([tmp_path / "wf"]).ids() == ["sd_basic"]
    assert main(args) == 1  # nothing is overwritten without --force
    assert "exists already" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
