"""A comfyfleet.yaml of the test's own for the CLI tests (bundled and test workflows, tiny
models)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.catalog.test_catalog import BUNDLED, TEST_WORKFLOWS, TINY_MODELS


def use_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> Path:
    config = {
        "workflow_dirs": [str(BUNDLED), str(TEST_WORKFLOWS)],
        "models": TINY_MODELS,
        "defaults": {"sd15-basic": {"width": 64, "height": 64, "steps": 2}},
        "nodes": [],
        **overrides,
    }
    path = tmp_path / "comfyfleet.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("COMFYFLEET_CONFIG", str(path))
    return path
