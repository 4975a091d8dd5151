"""Docker work pools: a node whose `pool_type` is `docker` runs each flow run in a container.

A Prefect Docker worker (prefect-docker, `prefect worker start --type docker --pool
comfyui-gpu-1`, on the GPU host beside its ComfyUI) starts one container per flow run from the
ComfyFleet image (deployments/Dockerfile): the image holds the flow code at `docker.code_dir`,
and the container runs `prefect flow-run execute` there. This costs the process per run the
in-process worker avoids (≈2.3 s measured for a process, plus the container start), in exchange
for isolation and an image as the unit of deployment.

What ComfyFleet writes:
- the pool's base job template: prefect-docker's own (`DockerWorker`), with defaults from
  `docker:` in the settings (image, pull policy, networks or network mode, volumes, memory
  limit, auto-remove) and the environment a flow needs: the job store URL as a reference to a
  Prefect Secret block (`DATABASE_SECRET`, resolved by the worker when it starts a container,
  so the pool's template shows no password), the store folders, the Prefect API URL;
- per deployment `<flow>/<node>`: the working directory inside the image (a
  `set_working_directory` pull step) and a `comfyfleet.node` container label.
The node's ComfyUI is found as for any flow: at the URL in its registry block.
"""

from __future__ import annotations

import copy
from typing import Any

from prefect.blocks.system import Secret
from prefect.client.orchestration import PrefectClient

from comfyfleet.settings import NodeConfig, Settings

DATABASE_SECRET = "comfyfleet-database-url"
"""Prefect Secret block with the job store URL as the containers reach it."""


def container_env(settings: Settings) -> dict[str, str]:
    """The environment of every flow-run container (`docker.env` wins over it)."""
    env = {
        "COMFYFLEET_DATABASE__URL": f"{{{{ prefect.blocks.secret.{DATABASE_SECRET} }}}}",
        "COMFYFLEET_PREFECT__API_URL": settings.prefect.api_url,
        "COMFYFLEET_STORE__OUTPUTS_DIR": str(settings.store.outputs_dir),
        "COMFYFLEET_STORE__INPUTS_DIR": str(settings.store.inputs_dir),
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
    }
    return {**env, **settings.docker.env}


def base_job_template(settings: Settings) -> dict[str, Any]:
    """prefect-docker's base job template with ComfyFleet's defaults filled in."""
    from prefect_docker.worker import DockerWorker

    template = copy.deepcopy(DockerWorker.get_default_base_job_template())
    properties = template["variables"]["properties"]
    docker = settings.docker
    defaults: dict[str, Any] = {
        "image": docker.image,
        "image_pull_policy": docker.image_pull_policy,
        "networks": docker.networks or None,
        "network_mode": docker.network_mode,
        "volumes": docker.volumes or None,
        "mem_limit": docker.mem_limit,
        "auto_remove": True,
        "env": container_env(settings),
    }
    for name, value in defaults.items():
        if value is not None:
            properties[name]["default"] = value
    return template


def deployment_spec(node: NodeConfig, settings: Settings) -> dict[str, Any]:
    """What a `<flow>/<node>` deployment on a docker pool carries beyond the in-process one."""
    code_dir = settings.docker.code_dir
    return {
        "path": code_dir,
        "pull_steps": [
            {"prefect.deployments.steps.set_working_directory": {"directory": code_dir}}
        ],
        "job_variables": {"labels": {"comfyfleet.node": node.id}},
    }


async def save_database_secret(client: PrefectClient, settings: Settings) -> None:
    """The job store URL as the containers reach it (`docker.database_url`, else
    `database.url`), in the Secret block the template refers to."""
    url = settings.docker.database_url or settings.database.url
    await Secret(value=url).asave(DATABASE_SECRET, overwrite=True, client=client)
