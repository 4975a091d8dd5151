"""The in-process worker loads deployment entrypoints as modules of the checkout."""

from __future__ import annotations

import pytest

from comfyfleet.worker import WORKER_TYPE, ComfyFleetWorker, load_flow


def test_load_flow_imports_the_entrypoint_as_a_module() -> None:
    flow = load_flow("flows/text_to_image.py:text_to_image")
    assert flow.name == "text-to-image"
    assert flow.isasync
    assert load_flow("flows/text_to_image.py:text_to_image") is flow  # imported once


def test_load_flow_rejects_something_that_is_not_a_flow() -> None:
    with pytest.raises(TypeError, match="not a Prefect flow"):
        load_flow("flows/_tasks.py:PROGRESS_EVENT")


def test_load_flow_rejects_a_missing_module() -> None:
    with pytest.raises(ModuleNotFoundError):
        load_flow("flows/no_such_flow.py:nothing")


def test_worker_type_and_pool_template() -> None:
    assert ComfyFleetWorker.type == WORKER_TYPE == "comfyfleet"
    template = ComfyFleetWorker.get_default_base_job_template()
    assert "job_configuration" in template and "variables" in template
