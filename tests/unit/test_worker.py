"""The in-process worker loads deployment entrypoints with Prefect's own loader, once each."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfyfleet.worker import WORKER_TYPE, ComfyFleetWorker, code_directory, load_flow

REPO = Path(__file__).resolve().parents[2]


def test_load_flow_loads_the_entrypoint_once() -> None:
    flow = load_flow("flows/text_to_image.py:text_to_image")
    assert flow.name == "text-to-image"
    assert flow.isasync
    assert load_flow("flows/text_to_image.py:text_to_image") is flow  # loaded once
    assert load_flow("text_to_image.py:text_to_image", base=REPO / "flows") is flow


def test_load_flow_rejects_something_that_is_not_a_flow() -> None:
    with pytest.raises(TypeError, match="is not a Prefect flow"):
        load_flow("flows/_tasks.py:PROGRESS_EVENT")


def test_load_flow_rejects_a_missing_file() -> None:
    with pytest.raises(FileNotFoundError):
        load_flow("flows/no_such_flow.py:nothing")


def test_worker_type_and_pool_template() -> None:
    assert ComfyFleetWorker.type == WORKER_TYPE == "comfyfleet"
    template = ComfyFleetWorker.get_default_base_job_template()
    assert "job_configuration" in template and "variables" in template


async def test_two_polls_before_pending_cannot_take_more_runs_than_the_pool_allows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server counts a run only once it is Pending; a second poll in that gap gets other
    runs for the same free slots. The worker's own limiter, sized to the pool, refuses them."""
    from types import SimpleNamespace
    from uuid import uuid4

    from prefect.workers.base import BaseWorker

    async def synced(self: ComfyFleetWorker) -> None:
        self._work_pool = SimpleNamespace(concurrency_limit=2)

    monkeypatch.setattr(BaseWorker, "sync_with_backend", synced)
    monkeypatch.setattr(BaseWorker, "setup", lambda self: _noop())
    worker = ComfyFleetWorker(work_pool_name="p", create_pool_if_not_found=False)
    started: list[object] = []
    worker._runs_task_group = SimpleNamespace(start_soon=lambda fn, run: started.append(run.id))
    worker.get_flow_run_logger = lambda run: SimpleNamespace(info=lambda *a, **k: None)
    await worker.setup()
    await worker.sync_with_backend()

    def response(*ids: object) -> list[SimpleNamespace]:
        return [SimpleNamespace(flow_run=SimpleNamespace(id=i, name=str(i))) for i in ids]

    a, b, c = uuid4(), uuid4(), uuid4()
    await worker._submit_scheduled_flow_runs(response(a))
    await worker._submit_scheduled_flow_runs(response(b, c))  # a not yet Pending on the server
    assert started == [a, b]
    worker._release_limit_slot(a)
    await worker._submit_scheduled_flow_runs(response(c))
    assert started == [a, b, c]


async def _noop() -> None:
    return None


async def test_a_failing_pool_worker_restarts_without_taking_the_others_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Prefect's heartbeat raises out of `start()` when a pool is deleted or the server hiccups;
    one pool's failure must not end the process that serves every pool."""
    import asyncio

    import comfyfleet.worker as worker_mod

    starts: dict[str, int] = {}
    good_running = asyncio.Event()
    bad_recovered = asyncio.Event()

    async def start(self: ComfyFleetWorker) -> None:
        pool = self._work_pool_name
        starts[pool] = starts.get(pool, 0) + 1
        if pool == "bad" and starts[pool] < 3:
            raise ExceptionGroup("heartbeat", [RuntimeError("404 work pool not found")])
        (good_running if pool == "good" else bad_recovered).set()
        await asyncio.Event().wait()

    async def nothing(*args: object) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(ComfyFleetWorker, "start", start)
    monkeypatch.setattr(worker_mod, "_follow_events", nothing)
    monkeypatch.setattr(worker_mod, "_poll_cancellations", nothing)
    monkeypatch.setattr(worker_mod, "RESTART_AFTER_S", 0.01)
    serving = asyncio.create_task(worker_mod.serve(["good", "bad"], name="t"))
    try:
        async with asyncio.timeout(5):
            await bad_recovered.wait()
        assert starts == {"good": 1, "bad": 3} and good_running.is_set() and not serving.done()
    finally:
        serving.cancel()


def test_the_code_directory_is_the_pull_steps_working_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    step = "prefect.deployments.steps.set_working_directory"
    assert code_directory([{step: {"directory": "/srv/fleet"}}]) == "/srv/fleet"
    monkeypatch.setenv("COMFYFLEET_HOME", "/opt/comfyfleet")
    assert code_directory([{step: {"directory": "{{ $COMFYFLEET_HOME }}"}}]) == "/opt/comfyfleet"
    monkeypatch.delenv("COMFYFLEET_HOME")
    assert code_directory([{step: {"directory": "{{ $COMFYFLEET_HOME }}"}}]) == str(REPO)
    assert code_directory([]) is None and code_directory(None) is None
