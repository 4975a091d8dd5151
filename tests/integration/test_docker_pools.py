"""A node with `pool_type: docker` on the real test Prefect server, without a Docker engine.

No Docker engine runs on these machines, so no container starts here. What runs for real: the
pool, its queues and the node's deployments are created on the session's Prefect server, and a
flow run's job configuration is built from them exactly as prefect-docker's worker builds it
before it starts a container (`DockerWorkerJobConfiguration.resolve_for_flow_run`: the pool's
template, the deployment's and run's job variables, the Secret block reference resolved by the
server).
"""

from __future__ import annotations

import contextlib
import secrets

import pytest
from prefect_docker.worker import DockerWorkerJobConfiguration

from comfyfleet.fleet import docker_pool
from comfyfleet.fleet.provision import pool_name
from comfyfleet.fleet.registry import delete_node
from comfyfleet.settings import NodeConfig, Settings
from deployments import apply_node

pytestmark = pytest.mark.integration

STORE_URL = "mysql+pymysql://fleet:s3cret@10.0.0.2:3306/comfyfleet"


def settings(image: str) -> Settings:
    return Settings(
        database={"url": "mysql+pymysql://root@127.0.0.1:3306/comfyfleet"},
        prefect={"api_url": "http://10.0.0.2:4200/api"},
        store={"outputs_dir": "/mnt/fleet/outputs", "inputs_dir": "/mnt/fleet/inputs"},
        docker={"image": image, "network_mode": "host", "database_url": STORE_URL,
                "volumes": ["/mnt/fleet:/mnt/fleet"]},
    )  # fmt: skip


async def test_a_docker_node_gets_a_docker_pool_whose_runs_resolve_to_a_container_spec(
    prefect_server,
) -> None:
    from prefect.client.orchestration import get_client

    from blocks import ComfyUINode

    node = NodeConfig(
        id=f"docker-{secrets.token_hex(3)}", url="http://127.0.0.1:9", capacity=3,
        capabilities=["delay"], enabled=False, pool_type="docker",  # never in rotation
    )  # fmt: skip
    async with get_client() as client:
        try:
            await apply_node(client, node, settings=settings("comfyfleet-worker:1.0"))
            await apply_node(client, node, settings=settings("comfyfleet-worker:1.1"))  # again
            pool = await client.read_work_pool(pool_name(node.id))
            assert pool.type == "docker"
            assert pool.base_job_template == docker_pool.base_job_template(
                settings("comfyfleet-worker:1.1")
            )  # re-applying updates the template: the next run uses the new image
            queues = await client.read_work_queues(work_pool_name=pool.name)
            priorities = {q.name: q.priority for q in queues}
            assert {k: priorities.get(k) for k in ("high", "normal", "low")} == {
                "high": 1, "normal": 2, "low": 3,
            }  # fmt: skip
            block = await ComfyUINode.aload(node.id, client=client)
            assert block.pool_type == "docker"
            deployment = await client.read_deployment_by_name(f"comfy-workflow/{node.id}")
            assert deployment.work_pool_name == pool.name
            assert deployment.path == "/opt/comfyfleet"
            assert deployment.job_variables == {"labels": {"comfyfleet.node": node.id}}
            run = await client.create_flow_run_from_deployment(
                deployment.id, parameters={"workflow": "delay", "params": {"seconds": 0.1}}
            )
            config = await DockerWorkerJobConfiguration.resolve_for_flow_run(
                run, client=client, work_pool=pool, worker_name="no-engine-here",
                deployment=deployment,
            )  # fmt: skip
            await client.delete_flow_run(run.id)
        finally:
            await delete_node(client, node.id)
            with contextlib.suppress(Exception):
                secret = await client.read_block_document_by_name(
                    docker_pool.DATABASE_SECRET, block_type_slug="secret"
                )
                await client.delete_block_document(secret.id)
    assert config.image == "comfyfleet-worker:1.1"
    assert config.command == "prefect flow-run execute"
    assert config.get_network_mode() == "host"
    assert config.volumes == ["/mnt/fleet:/mnt/fleet"]
    assert config.env["PREFECT__FLOW_RUN_ID"] == str(run.id)
    assert config.env["COMFYFLEET_DATABASE__URL"] == STORE_URL  # from the Secret block
    assert config.env["COMFYFLEET_STORE__OUTPUTS_DIR"] == "/mnt/fleet/outputs"
    assert config.labels["comfyfleet.node"] == node.id
    assert config.labels["io.prefect.flow-run-id"] == str(run.id)
    assert config.name  # the container is named after the run
