"""Settings: environment beats the YAML file beats the defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from comfyfleet.settings import Settings, format_errors, read_settings, yaml_line


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "comfyfleet.yaml"
    monkeypatch.setenv("COMFYFLEET_CONFIG", str(path))
    for key in ("COMFYFLEET_ROUTING__STRATEGY", "COMFYFLEET_JOBS__MAX_NODE_FAULTS"):
        monkeypatch.delenv(key, raising=False)
    return path


def test_yaml_file_overrides_defaults(config_file: Path) -> None:
    config_file.write_text(
        "routing: {strategy: round_robin}\n"
        "nodes: [{id: gpu-1, url: 'http://10.0.0.5:8188', capacity: 3}]\n"
        "defaults: {sd15-basic: {width: 64}}\n"
    )
    settings = Settings()
    assert settings.routing.strategy == "round_robin"
    assert settings.node("gpu-1").capacity == 3
    assert settings.defaults == {"sd15-basic": {"width": 64}}
    assert settings.jobs.max_node_faults == 3  # untouched default


def test_environment_overrides_yaml(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_file.write_text("routing: {strategy: round_robin}\n")
    monkeypatch.setenv("COMFYFLEET_ROUTING__STRATEGY", "weighted")
    monkeypatch.setenv("COMFYFLEET_JOBS__MAX_NODE_FAULTS", "5")
    settings = Settings()
    assert settings.routing.strategy == "weighted"
    assert settings.jobs.max_node_faults == 5


def test_missing_config_file_means_defaults(config_file: Path) -> None:
    settings = Settings()
    assert settings.routing.strategy == "least_loaded"
    assert settings.nodes == []


def test_unknown_strategy_is_rejected_with_its_name(config_file: Path) -> None:
    config_file.write_text("routing: {strategy: fastest}\n")
    with pytest.raises(ValidationError, match="strategy"):
        Settings()


def test_unknown_key_is_rejected(config_file: Path) -> None:
    config_file.write_text("routng: {strategy: random}\n")
    with pytest.raises(ValidationError, match="routng"):
        Settings()


def test_bad_node_id_is_rejected(config_file: Path) -> None:
    config_file.write_text("nodes: [{id: 'GPU 1', url: 'http://x:8188'}]\n")
    with pytest.raises(ValidationError, match="id"):
        Settings()


def test_unknown_node_lookup_names_the_known_ones(config_file: Path) -> None:
    config_file.write_text("nodes: [{id: gpu-1, url: 'http://x:8188'}]\n")
    with pytest.raises(KeyError, match=r"gpu-7.*gpu-1"):
        Settings().node("gpu-7")


def test_the_cli_gateway_url_variable_is_not_read_as_the_gateway_section(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from comfyfleet.settings import Settings

    monkeypatch.setenv("COMFYFLEET_CONFIG", str(tmp_path / "none.yaml"))
    monkeypatch.setenv("COMFYFLEET_GATEWAY", "http://10.0.0.5:8000")
    monkeypatch.setenv("COMFYFLEET_TOKEN", "cfb_x")
    monkeypatch.setenv("COMFYFLEET_GATEWAY__PORT", "8123")
    assert Settings().gateway.port == 8123


def test_errors_name_the_setting_and_its_line(tmp_path: Path) -> None:
    path = tmp_path / "comfyfleet.yaml"
    path.write_text(
        "routing:\n  strategy: least_loaded\nnodes:\n"
        "  - id: gpu-1\n    url: http://a:8188\n"
        "  - id: gpu-2\n    url: http://b:8188\n    capacity: 0\n"
    )
    assert yaml_line(path, ["nodes", "1", "capacity"]) == 8
    assert yaml_line(path, ["nodes", "1", "nothing"]) == 6  # the deepest part that exists
    with pytest.raises(Exception) as info:
        read_settings(path)
    text = format_errors(info.value, path)
    assert "nodes.1.capacity (line 8): Input should be greater than or equal to 1" in text
