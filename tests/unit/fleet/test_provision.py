"""Provisioning takes the flows as data: from the Prefect layer at apply time, from the
`<flow>/fleet` deployments on the server for a node added at run time."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from prefect.exceptions import ObjectNotFound

from comfyfleet.fleet import provision
from comfyfleet.fleet.provision import CONTROL_POOL
from comfyfleet.settings import REPO_ROOT
from comfyfleet.store import NotFound
from deployments import generation_specs


class FakeServer:
    """Deployments by name, as `create_deployment` left them."""

    def __init__(self) -> None:
        self.deployments: dict[str, dict[str, Any]] = {}

    async def create_flow_from_name(self, name: str) -> str:
        return f"flow:{name}"

    async def create_deployment(self, *, flow_id: str, name: str, **kw: Any) -> str:
        self.deployments[f"{flow_id.removeprefix('flow:')}/{name}"] = kw
        return f"id:{name}"

    async def read_deployment_by_name(self, name: str) -> Any:
        if name not in self.deployments:
            raise ObjectNotFound(httpx.HTTPStatusError("404", request=None, response=None))  # type: ignore[arg-type]
        dep = self.deployments[name]
        return SimpleNamespace(
            entrypoint=dep["entrypoint"], parameter_openapi_schema=dep["parameter_openapi_schema"],
            description=dep["description"],
        )  # fmt: skip


async def test_the_fleet_deployments_give_back_the_flows_as_the_prefect_layer_gave_them() -> None:
    server = FakeServer()
    specs = generation_specs()
    for spec in specs:
        await provision.deploy(
            server, spec, name=provision.FLEET, pool=CONTROL_POOL, parameters={},  # type: ignore[arg-type]
            tags=["routed"], description=provision.ROUTED,
        )  # fmt: skip
    assert await provision.read_flow_specs(server) == specs  # type: ignore[arg-type]
    dep = server.deployments["text-to-image/fleet"]
    assert dep["entrypoint"] == "flows/text_to_image.py:text_to_image"
    assert dep["path"] == str(REPO_ROOT) and dep["enforce_parameter_schema"]


async def test_without_the_fleet_deployments_a_node_cannot_be_provisioned() -> None:
    with pytest.raises(NotFound, match="python -m deployments"):
        await provision.read_flow_specs(FakeServer())  # type: ignore[arg-type]
