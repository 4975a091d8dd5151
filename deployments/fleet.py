"""Create or update, idempotently, everything Prefect needs to run jobs on the fleet's nodes.

For node `gpu-1`: the block document `comfyui-node/gpu-1`, the work pool `comfyui-gpu-1` (type
`comfyfleet`, concurrency limit = the node's capacity, the server-side interlock), its queues
`high`/`normal`/`low` (Prefect queue priorities 1/2/3, for runs started from Prefect directly),
and a deployment `<flow>/gpu-1` per generation flow, pinned to the node by its `node` parameter.

A node with `pool_type: docker` gets a pool of prefect-docker's type `docker` instead, whose runs
execute in containers of the ComfyFleet image (deployments/docker_pool.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.exceptions import ObjectAlreadyExists
from prefect.utilities.callables import parameter_schema

from blocks import ComfyUINode
from comfyfleet.fleet.registry import pool_name
from comfyfleet.settings import REPO_ROOT, NodeConfig, Settings, get_settings
from comfyfleet.worker import WORKER_TYPE, ComfyFleetWorker, load_flow
from deployments import docker_pool

logger = logging.getLogger(__name__)

QUEUES = {"high": 1, "normal": 2, "low": 3}
CONTROL_POOL = "comfyfleet-control"
BATCH_ENTRYPOINT = "flows/batch.py:batch"


@dataclass(frozen=True)
class GenerationFlow:
    name: str  # flow name = deployment prefix
    entrypoint: str  # relative to the checkout
    capability: str


GENERATION_FLOWS: tuple[GenerationFlow, ...] = (
    GenerationFlow("text-to-image", "flows/text_to_image.py:text_to_image", "text_to_image"),
    GenerationFlow(
        "text-to-image-sdxl", "flows/text_to_image_sdxl.py:text_to_image_sdxl", "text_to_image_sdxl"
    ),
    GenerationFlow("image-to-video", "flows/image_to_video.py:image_to_video", "image_to_video"),
    GenerationFlow("comfy-workflow", "flows/comfy_workflow.py:comfy_workflow", "*"),
)


async def _upsert_pool(
    client: PrefectClient, name: str, *, limit: int | None, description: str,
    pool_type: str = WORKER_TYPE, template: dict[str, Any] | None = None,
) -> None:  # fmt: skip
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
    await _upsert_pool(
        client, name, limit=node.capacity, description=f"ComfyUI node {node.id} ({node.url})",
        pool_type=node.pool_type, template=template,
    )  # fmt: skip
    existing = {q.name: q for q in await client.read_work_queues(work_pool_name=name)}
    for queue, priority in QUEUES.items():
        if queue in existing:
            await client.update_work_queue(id=existing[queue].id, priority=priority)
        else:
            await client.create_work_queue(name=queue, work_pool_name=name, priority=priority)


async def apply_node(
    client: PrefectClient, node: NodeConfig, *, settings: Settings | None = None
) -> None:
    """Block, pool, queues and deployments for one node (create or update)."""
    settings = settings or get_settings()
    block = ComfyUINode(
        url=node.url,
        capacity=node.capacity,
        capabilities=node.capabilities,
        weight=node.weight,
        priority=node.priority,
        enabled=node.enabled,
        metadata=node.metadata,
        pool_type=node.pool_type,
    )
    await block.asave(node.id, overwrite=True)
    await _ensure_pool(client, node, settings)
    docker = docker_pool.deployment_spec(node, settings) if node.pool_type == "docker" else {}
    for gen in GENERATION_FLOWS:
        if gen.capability != "*" and gen.capability not in node.capabilities:
            continue
        await _deploy(
            client, gen.entrypoint, name=node.id, pool=pool_name(node.id),
            parameters={"node": node.id},
            tags=[f"node:{node.id}"]
            + ([f"capability:{gen.capability}"] if gen.capability != "*" else []),
            description=f"pinned to node {node.id}", **docker,
        )  # fmt: skip
    logger.info("applied node %s (%s)", node.id, node.url)


async def _deploy(
    client: PrefectClient, entrypoint: str, *, name: str, pool: str, parameters: dict[str, Any],
    tags: list[str], description: str, schedules: list[Any] | None = None,
    path: str | None = None, pull_steps: list[dict[str, Any]] | None = None,
    job_variables: dict[str, Any] | None = None,
) -> Any:  # fmt: skip
    flow = load_flow(entrypoint)
    flow_id = await client.create_flow_from_name(flow.name)
    return await client.create_deployment(
        flow_id=flow_id,
        name=name,
        entrypoint=entrypoint,
        path=path or str(REPO_ROOT),
        pull_steps=pull_steps,
        job_variables=job_variables,
        work_pool_name=pool,
        work_queue_name="normal" if pool != CONTROL_POOL else None,
        parameters=parameters,
        parameter_openapi_schema=parameter_schema(flow.fn).model_dump_for_openapi(),
        tags=tags,
        description=f"{(flow.description or flow.name).strip()} — {description}",
        enforce_parameter_schema=True,
        schedules=schedules,
    )


async def apply_control(client: PrefectClient) -> None:
    """The control pool (no GPU, no limit) with the routed `<flow>/fleet` and `batch/fleet`."""
    await _upsert_pool(
        client, CONTROL_POOL, limit=None,
        description="ComfyFleet flows that hold no GPU: routed entries, batches, schedules",
    )  # fmt: skip
    for gen in GENERATION_FLOWS:
        await _deploy(
            client, gen.entrypoint, name="fleet", pool=CONTROL_POOL, parameters={},
            tags=["routed"], description="routed over the fleet by the dispatcher",
        )  # fmt: skip
    await _deploy(
        client, BATCH_ENTRYPOINT, name="fleet", pool=CONTROL_POOL, parameters={},
        tags=["batch"], description="one job per item, spread over the fleet",
    )  # fmt: skip


async def apply_fleet(
    nodes: list[NodeConfig], *, client: PrefectClient | None = None,
    settings: Settings | None = None,
) -> None:  # fmt: skip
    """Apply every node; register the block type first. Safe to run again and again."""
    if client is None:
        async with get_client() as own:
            await apply_fleet(nodes, client=own, settings=settings)
        return
    await ComfyUINode.aregister_type_and_schema(client=client)
    await apply_control(client)
    for node in nodes:
        await apply_node(client, node, settings=settings)
