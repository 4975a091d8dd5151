"""The dispatcher's seams to Prefect: a node re-added under the same id has new deployments, and a
node whose flow run cannot be created gives the job back instead of leaving it dispatched."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import httpx
from prefect.exceptions import ObjectNotFound

from comfyfleet.fleet.dispatcher import Dispatcher
from comfyfleet.store import Database, create_job, get_job
from comfyfleet.store.users import add_user


class FakePrefect:
    """Deployments by name; a deployment id that was deleted answers 404 like the server."""

    def __init__(self) -> None:
        self.ids: dict[str, Any] = {}
        self.deleted: set[Any] = set()
        self.runs: list[tuple[Any, dict[str, Any]]] = []

    def deploy(self, name: str) -> None:
        if name in self.ids:
            self.deleted.add(self.ids[name])
        self.ids[name] = uuid4()

    async def read_deployment_by_name(self, name: str) -> Any:
        if name not in self.ids:
            raise ObjectNotFound(httpx.HTTPStatusError("404", request=None, response=None))  # type: ignore[arg-type]
        schema = {"properties": {"prompt": {}, "node": {}, "job_id": {}, "attempt_id": {}}}
        return SimpleNamespace(id=self.ids[name], parameter_openapi_schema=schema)

    async def create_flow_run_from_deployment(self, deployment_id: Any, **kw: Any) -> Any:
        if deployment_id in self.deleted or deployment_id not in self.ids.values():
            raise ObjectNotFound(httpx.HTTPStatusError("404", request=None, response=None))  # type: ignore[arg-type]
        self.runs.append((deployment_id, kw["parameters"]))
        return SimpleNamespace(id=uuid4(), name=f"run-{len(self.runs)}")


def job(db: Database) -> Any:
    def make(s: Any) -> Any:
        owner = add_user(s, username=f"u{uuid4().hex[:6]}", password_hash="!")
        return create_job(
            s, workflow="sd15-basic", capability="text_to_image",
            params={"prompt": "a cat", "seed": 1}, owner=owner,
        )  # fmt: skip

    return db.run(make)


def dispatcher(db: Database, prefect: FakePrefect) -> Dispatcher:
    return Dispatcher(db=db, client=prefect, router=None, monitor=None, catalog=None)  # type: ignore[arg-type]


async def test_a_node_added_again_gets_runs_on_its_new_deployment(sqlite_db: Database) -> None:
    prefect = FakePrefect()
    prefect.deploy("text-to-image/gpu-1")
    d = dispatcher(sqlite_db, prefect)
    await d.start_flow_run(job(sqlite_db), node="gpu-1", attempt_id="a1", idempotency_key="a1",
                           tags=[])  # fmt: skip
    old = prefect.ids["text-to-image/gpu-1"]
    prefect.deploy("text-to-image/gpu-1")  # removed and added again: a new deployment id
    await d.start_flow_run(job(sqlite_db), node="gpu-1", attempt_id="a2", idempotency_key="a2",
                           tags=[])  # fmt: skip
    assert [dep for dep, _ in prefect.runs] == [old, prefect.ids["text-to-image/gpu-1"]]
    assert prefect.runs[1][1]["prompt"] == "a cat"


async def test_a_job_whose_run_cannot_be_created_goes_back_to_the_backlog(
    sqlite_db: Database,
) -> None:
    from comfyfleet.fleet.router import NodeView
    from comfyfleet.settings import NodeConfig
    from comfyfleet.store import claim_job

    prefect = FakePrefect()  # no deployments at all for gpu-1
    d = dispatcher(sqlite_db, prefect)
    queued = job(sqlite_db)
    sqlite_db.run(lambda s: claim_job(s, job_id=queued.id))
    node = NodeView.from_config(NodeConfig(id="gpu-1", url="http://127.0.0.1:1"))
    assert not await d._start_attempt(queued, node)
    got = sqlite_db.run(lambda s: get_job(s, job_id=queued.id, with_details=True))
    assert got.status == "queued" and got.node_faults == 1
    [attempt] = got.attempts
    assert attempt.status == "node_fault" and "could not create its flow run" in attempt.reason
