"""The generation flows' shared body, with seams instead of a server: run names, the pinned and
routed branches of `run_job`, and the parameters the flows hand on."""

from __future__ import annotations

import contextlib
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

import flows._tasks as tasks
import flows.text_to_image as t2i
from comfyfleet.fleet.generation import GENERATION_FLOWS, GENERIC_FLOW
from deployments import generation_specs


def test_runs_are_named_for_the_job_they_record(monkeypatch: pytest.MonkeyPatch) -> None:
    name = tasks.run_name("t2i")
    run_id = uuid.uuid4()
    monkeypatch.setattr(tasks, "flow_run", SimpleNamespace(parameters={}, id=str(run_id)))
    assert name() == f"t2i-{run_id.hex}"  # the job a pinned run records has the run's id


def test_the_shift_deployment_spec_is_the_flows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nodes added at run time get `node-shift/<node>` from the library's copy of the spec."""
    from comfyfleet.fleet.provision import SHIFT_FLOW
    from deployments import flow_spec

    spec = flow_spec(SHIFT_FLOW.entrypoint)
    assert spec.name == SHIFT_FLOW.name and spec.description == SHIFT_FLOW.description
    assert spec.parameter_schema == SHIFT_FLOW.parameter_schema


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """`route` and `generate` replaced by fakes that say which branch ran, with what."""
    seen: list[tuple[str, dict[str, Any]]] = []

    async def route(**kw: Any) -> dict[str, Any]:
        seen.append(("route", kw))
        return {"routed": True}

    async def generate(**kw: Any) -> dict[str, Any]:
        seen.append(("generate", kw))
        return {"generated": True}

    monkeypatch.setattr(tasks, "route", route)
    monkeypatch.setattr(tasks, "generate", generate)
    return seen


async def test_a_run_without_a_node_goes_through_the_backlog(calls: list) -> None:
    result = await tasks.run_job(
        workflow="sd15-basic", request={"prompt": "a fox"}, node=None, priority="high",
    )  # fmt: skip
    assert result == {"routed": True}
    assert calls == [
        ("route", {"workflow": "sd15-basic", "request": {"prompt": "a fox"}, "priority": "high"})
    ]


async def test_a_run_pinned_to_a_node_is_one_attempt_there(calls: list) -> None:
    result = await tasks.run_job(
        workflow="sd15-basic", request={"prompt": "a fox"}, node="gpu-1", priority="normal",
    )  # fmt: skip
    assert result == {"generated": True}
    [(branch, kw)] = calls
    assert branch == "generate" and kw == {
        "workflow": "sd15-basic", "request": {"prompt": "a fox"}, "node": "gpu-1",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("flow_name", "workflow"),
    [("text-to-image", "sd15-basic"), ("text-to-image-sdxl", "sdxl-basic")],
)
async def test_text_to_image_takes_its_flows_default_workflow_and_hands_on_the_parameters(
    monkeypatch: pytest.MonkeyPatch, flow_name: str, workflow: str
) -> None:
    seen: dict[str, Any] = {}

    async def run_job(**kw: Any) -> dict[str, Any]:
        seen.update(kw)
        return {}

    monkeypatch.setattr(t2i, "run_job", run_job)
    monkeypatch.setattr(t2i, "flow_run", SimpleNamespace(flow_name=flow_name))
    await t2i.text_to_image.fn(prompt="a fox", node="gpu-1", steps=3)
    assert seen["workflow"] == workflow and seen["node"] == "gpu-1"
    assert seen["request"]["prompt"] == "a fox" and seen["request"]["steps"] == 3
    assert seen["request"]["width"] is None  # left out: the fleet or contract default applies
    await t2i.text_to_image.fn(prompt="a fox", workflow="my-sd15")
    assert seen["workflow"] == "my-sd15" and seen["node"] is None


def test_every_generation_flow_takes_a_node_a_workflow_and_a_priority() -> None:
    """`<flow>/<node>` pins by `node`; `<flow>/fleet` routes (no node) at a `priority`; the
    generic flow takes any workflow with its `params`."""
    specs = {spec.name: spec for spec in generation_specs()}
    assert list(specs) == [flow.name for flow in GENERATION_FLOWS]
    for name, spec in specs.items():
        accepted = set(spec.parameter_schema["properties"])
        assert {"node", "workflow", "priority"} <= accepted, name
    assert "params" in specs[GENERIC_FLOW].parameter_schema["properties"]
    assert "prompt" in specs["text-to-image"].parameter_schema["properties"]
    assert "image" in specs["image-to-video"].parameter_schema["properties"]


async def test_the_job_tags_ask_prefect_for_no_concurrency_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Prefect's task engine asks for a slot per tag; the job's node and workflow tags are left
    out of that request (one API call per job saved), other tags are not."""
    import prefect.task_engine

    asked: list[list[str]] = []

    @contextlib.asynccontextmanager
    async def recording(names: list[str], *args: object, **kwargs: object) -> Any:
        asked.append(list(names))
        yield

    monkeypatch.setattr(prefect.task_engine, "_aconcurrency", recording)
    tasks._job_tags_take_no_slots()
    async with prefect.task_engine._aconcurrency(
        names=["tag:node:gpu-1", "tag:workflow:sd15-basic", "tag:nightly"], occupy=1
    ):
        pass
    assert asked == [["tag:nightly"]]
