"""The routed entry (`<flow>/fleet`): one job through the backlog, with seams for the store."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import flows._routing as routing


@pytest.fixture
def backlog(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """`submit_jobs` and `follow_jobs` replaced: what was queued, and how the job ends."""
    state: dict[str, Any] = {"queued": [], "end": {"status": "completed", "error": None}}

    def submit_jobs(workflow: str, items: list[dict[str, Any]], **kw: Any) -> list[str]:
        state["queued"].append((workflow, items, kw))
        return ["job-1"]

    async def follow_jobs(job_ids: list[str], **kw: Any) -> list[dict[str, Any]]:
        return [{"id": job_ids[0], **state["end"]}]

    monkeypatch.setattr(routing, "submit_jobs", submit_jobs)
    monkeypatch.setattr(routing, "follow_jobs", follow_jobs)
    monkeypatch.setattr(routing, "get_run_logger", lambda: logging.getLogger("test"))
    return state


async def test_a_routed_run_queues_one_job_without_the_parameters_left_out(backlog: dict) -> None:
    job = await routing.route(
        workflow="sd15-basic", request={"prompt": "a fox", "steps": None}, priority="high"
    )
    assert job["id"] == "job-1" and job["status"] == "completed"
    assert backlog["queued"] == [
        ("sd15-basic", [{"prompt": "a fox"}], {"priority": "high", "username": None})
    ]


async def test_a_routed_run_fails_when_its_job_does(backlog: dict) -> None:
    backlog["end"] = {"status": "failed", "error": "node gpu-1 raised"}
    with pytest.raises(RuntimeError, match="job job-1 failed: node gpu-1 raised"):
        await routing.route(workflow="sd15-basic", request={"prompt": "x"}, priority="normal")
