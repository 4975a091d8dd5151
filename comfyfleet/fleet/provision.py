"""Create or update, idempotently, everything Prefect needs to run jobs on the fleet's nodes.

For node `gpu-1`: the block document `comfyui-node/gpu-1`, the work pool `comfyui-gpu-1` (type
`comfyfleet`; no concurrency limit: the node's long-lived shift run holds one run slot for as
long as it works, and the dispatcher keeps the node's load within its capacity), its queues
`high`/`normal`/`low` (Prefect queue priorities 1/2/3, for runs started from Prefect directly),
the node's shift deployment `node-shift/gpu-1` (comfyfleet.jobs.shift) and a deployment
`<flow>/gpu-1` per generation flow the node serves (comfyfleet.fleet.generation), pinned to the
node by its `node` parameter. The control pool `comfyfleet-control` (no GPU, no
limit) holds the routed entries `<flow>/fleet` and `batch/fleet`.

A node with `pool_type: docker` gets a pool of prefect-docker's type `docker` instead, whose runs
execute in containers of the ComfyFleet image (comfyfleet.fleet.docker_pool).

The flows are the Prefect layer's (flows/): this module gets each as a `FlowSpec` (name,
entrypoint, parameter schema, description), as data. `python -m deployments` loads the flows and
applies the whole fleet with them (`apply_fleet`), then prefect.yaml; a node added at run time
(REST, self-join, config reload, `comfyfleet nodes add`) takes them from the `<flow>/fleet`
deployments already on the server (`read_flow_specs`), which carry the same entrypoint and
schema.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from comfyfleet.fleet import docker_pool
from comfyfleet.fleet.generation import GENERATION_FLOWS, generation_flow
from comfyfleet.fleet.node_block import ComfyUINode
from comfyfleet.settings import REPO_ROOT, NodeConfig, Settings, get_settings
from comfyfleet.store import NotFound
from comfyfleet.worker import WORKER_TYPE, ComfyFleetWorker

logger = logging.getLogger(__name__)

POOL_PREFIX = "comfyui-"
CONTROL_POOL = "comfyfleet-control"
QUEUES = {"high": 1, "normal": 2, "low": 3}
FLEET = "fleet"
"""The name of each flow's routed deployment in the control pool: `text-to-image/fleet`."""
ROUTED = "routed over the fleet by the dispatcher"
SHIFT_TAG = "shift"


def pool_name(node_id: str) -> str:
    """The node's work pool (`gpu-1` → `comfyui-gpu-1`)."""
    return f"{POOL_PREFIX}{node_id}"


@dataclass(frozen=True)
class FlowSpec:
    """A flow as a deployment needs it: what the Prefect layer says about one of its flows."""

    name: str
    """The flow's name (= the deployments' prefix)."""
    entrypoint: str
    """Relative to the checkout, e.g. `flows/text_to_image.py:text_to_image`."""
    parameter_schema: dict[str, Any]
    """The deployments' `parameter_openapi_schema`."""
    description: str = ""


SHIFT_FLOW = FlowSpec(
    name="node-shift",
    entrypoint="flows/node_shift.py:node_shift",
    parameter_schema={
        "title": "Parameters",
        "type": "object",
        "required": ["node"],
        "properties": {"node": {"title": "node", "position": 0, "type": "string"}},
        "definitions": {},
    },
    description="Run the jobs the fleet gives one ComfyUI node, each as a task run.",
)
"""The node-shift flow (flows/node_shift.py) as its deployments need it; a test checks it
against the flow."""


async def read_flow_specs(client: PrefectClient) -> list[FlowSpec]:
    """The generation flows as the Prefect layer deployed them: from their `<flow>/fleet`
    deployments on the server (NotFound when the fleet was never applied)."""
    specs = []
    for gen in GENERATION_FLOWS:
        try:
            dep = await client.read_deployment_by_name(f"{gen.name}/{FLEET}")
        except ObjectNotFound:
            raise NotFound(
                f"no deployment {gen.name}/{FLEET}: the fleet's flows are not deployed yet "
                "(`python -m deployments`; `make up` does it)"
            ) from None
        specs.append(FlowSpec(
            name=gen.name, entrypoint=dep.entrypoint or "",
            parameter_schema=dep.parameter_openapi_schema or {},
            description=(dep.description or gen.name).removesuffix(f" — {ROUTED}"),
        ))  # fmt: skip
    return specs


async def upsert_pool(
    client: PrefectClient, name: str, *, limit: int | None, description: str,
    pool_type: str = WORKER_TYPE, template: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    """Create the work pool, or update its limit, description (and template) if it exists."""
    try:
        await client.create_work_pool(
            WorkPoolCreate(
                name=name,
                type=pool_type,
                base_job_template=template or ComfyFleetWorker.get_default_base_job_template(),
                concurrency_limit=limit,
                description=description,
            )
        )
        logger.info("created work pool %s (type %s, limit %s)", name, pool_type, limit)
    except ObjectAlreadyExists:
        existing = await client.read_work_pool(name)
        if existing.type != pool_type:
            logger.warning(
                "work pool %s is of type %s, not %s: remove the node and add it again to "
                "change it", name, existing.type, pool_type,
            )  # fmt: skip
        update: dict[str, Any] = {"concurrency_limit": limit, "description": description}
        if template is not None and existing.type == pool_type:
            update["base_job_template"] = template  # settings changes reach the next run
        await client.update_work_pool(name, WorkPoolUpdate(**update))


async def _ensure_pool(client: PrefectClient, node: NodeConfig, settings: Settings) -> None:
    name = pool_name(node.id)
    template = None
    if node.pool_type == "docker":
        await docker_pool.save_database_secret(client, settings)
        template = docker_pool.base_job_template(settings)
    await upsert_pool(
        client, name, limit=None, description=f"ComfyUI node {node.id} ({node.url})",
        pool_type=node.pool_type, template=template,
    )  # fmt: skip
    existing = {q.name: q for q in await client.read_work_queues(work_pool_name=name)}
    for queue, priority in QUEUES.items():
        if queue in existing:
            await client.update_work_queue(id=existing[queue].id, priority=priority)
        else:
            await client.create_work_queue(name=queue, work_pool_name=name, priority=priority)


async def apply_node(
    client: PrefectClient, node: NodeConfig, *, flows: Sequence[FlowSpec] | None = None,
    settings: Settings | None = None,
) -> None:  # fmt: skip
    """Block, pool, queues and deployments for one node (create or update). `flows`: the
    generation flows (default: as deployed on the server, `read_flow_specs`)."""
    settings = settings or get_settings()
    if flows is None:
        flows = await read_flow_specs(client)
    await ComfyUINode.of(node).asave(node.id, overwrite=True)
    await _ensure_pool(client, node, settings)
    docker = docker_pool.deployment_spec(node, settings) if node.pool_type == "docker" else {}
    await deploy(
        client, SHIFT_FLOW, name=node.id, pool=pool_name(node.id), parameters={"node": node.id},
        tags=[f"node:{node.id}", SHIFT_TAG], description=f"the shift working node {node.id}",
        **docker,
    )  # fmt: skip
    for spec in flows:
        gen = generation_flow(spec.name)
        if not gen.serves(node.capabilities):
            continue
        await deploy(
            client, spec, name=node.id, pool=pool_name(node.id), parameters={"node": node.id},
            tags=[f"node:{node.id}"]
            + ([f"capability:{gen.capability}"] if gen.capability != "*" else []),
            description=f"pinned to node {node.id}", **docker,
        )  # fmt: skip
    logger.info("applied node %s (%s)", node.id, node.url)


async def deploy(
    client: PrefectClient, flow: FlowSpec, *, name: str, pool: str, parameters: dict[str, Any],
    tags: list[str], description: str, schedules: list[Any] | None = None,
    path: str | None = None, pull_steps: list[dict[str, Any]] | None = None,
    job_variables: dict[str, Any] | None = None,
) -> Any:  # fmt: skip
    """Create (or replace) the deployment `<flow>/<name>` in `pool`; its id."""
    flow_id = await client.create_flow_from_name(flow.name)
    return await client.create_deployment(
        flow_id=flow_id,
        name=name,
        entrypoint=flow.entrypoint,
        path=path or str(REPO_ROOT),
        pull_steps=pull_steps,
        job_variables=job_variables,
        work_pool_name=pool,
        work_queue_name="normal" if pool != CONTROL_POOL else None,
        parameters=parameters,
        parameter_openapi_schema=flow.parameter_schema,
        tags=tags,
        description=f"{flow.description} — {description}",
        enforce_parameter_schema=True,
        schedules=schedules,
    )


async def apply_control(client: PrefectClient) -> None:
    """The control pool (no GPU, no limit). Its deployments (`<flow>/fleet`, `batch/fleet`,
    scheduled batches) are prefect.yaml's, applied by `python -m deployments`."""
    await upsert_pool(
        client, CONTROL_POOL, limit=None,
        description="ComfyFleet flows that hold no GPU: routed entries, batches, schedules",
    )  # fmt: skip


async def apply_fleet(
    nodes: list[NodeConfig], *, flows: Sequence[FlowSpec],
    client: PrefectClient | None = None, settings: Settings | None = None,
) -> None:  # fmt: skip
    """Apply every node, after the block type and the control pool. Safe to run again and
    again. `flows`: the generation flows (the Prefect layer's)."""
    if client is None:
        async with get_client() as own:
            await apply_fleet(nodes, flows=flows, client=own, settings=settings)
        return
    await ComfyUINode.aregister_type_and_schema(client=client)
    await apply_control(client)
    for node in nodes:
        await apply_node(client, node, flows=flows, settings=settings)
