"""Docker work pools without a Docker engine: the pool's template and the deployments' specs,
checked with prefect-docker's own job configuration model, and the image definition."""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
from prefect_docker.worker import DockerWorker, DockerWorkerJobConfiguration

from comfyfleet.fleet import docker_pool
from comfyfleet.settings import DockerSettings, NodeConfig, Settings
from deployments import BATCH_ENTRYPOINT, GENERATION_ENTRYPOINTS

REPO = Path(__file__).resolve().parents[3]


def docker_settings(**docker: object) -> Settings:
    return Settings(
        database={"url": "mysql+pymysql://fleet:pw@10.0.0.2:3306/comfyfleet"},
        prefect={"api_url": "http://10.0.0.2:4200/api"},
        store={"outputs_dir": "/mnt/fleet/outputs", "inputs_dir": "/mnt/fleet/inputs"},
        docker={
            "image": "registry.example:5000/comfyfleet-worker:1.4",
            "image_pull_policy": "IfNotPresent",
            "networks": ["comfyfleet"],
            "volumes": ["/mnt/fleet:/mnt/fleet"],
            "mem_limit": "2g",
            **docker,
        },
    )


def test_pool_template_is_prefect_dockers_own_with_the_fleets_defaults() -> None:
    settings = docker_settings()
    template = docker_pool.base_job_template(settings)
    stock = DockerWorker.get_default_base_job_template()
    assert template["job_configuration"] == stock["job_configuration"]
    variables = template["variables"]
    assert set(variables["properties"]) == set(stock["variables"]["properties"])
    defaults = {k: v["default"] for k, v in variables["properties"].items() if "default" in v}
    jsonschema.validate(defaults, variables)  # what the server checks job variables against
    assert defaults["image"] == "registry.example:5000/comfyfleet-worker:1.4"
    assert defaults["env"]["COMFYFLEET_DATABASE__URL"] == (
        "{{ prefect.blocks.secret.comfyfleet-database-url }}"  # no password in the template
    )
    assert "pw" not in str(template)


async def test_a_deployments_job_configuration_as_the_docker_worker_builds_it() -> None:
    # docker.env wins over the fleet's container environment; with the database URL given
    # here nothing refers to a block, so no server is needed to build the configuration.
    settings = docker_settings(env={"COMFYFLEET_DATABASE__URL": "mysql+pymysql://x@db/c"})
    node = NodeConfig(id="gpu-7", url="http://10.0.0.7:8188", pool_type="docker")
    spec = docker_pool.deployment_spec(node, settings)
    config = await DockerWorkerJobConfiguration.from_template_and_values(
        docker_pool.base_job_template(settings), spec["job_variables"]
    )
    assert config.image == "registry.example:5000/comfyfleet-worker:1.4"
    assert config.image_pull_policy == "IfNotPresent"
    assert config.networks == ["comfyfleet"] and config.get_network_mode() is None
    assert config.volumes == ["/mnt/fleet:/mnt/fleet"]
    assert config.mem_limit == "2g" and config.auto_remove
    assert config.labels == {"comfyfleet.node": "gpu-7"}
    assert config.env["COMFYFLEET_DATABASE__URL"] == "mysql+pymysql://x@db/c"
    assert config.env["COMFYFLEET_STORE__OUTPUTS_DIR"] == "/mnt/fleet/outputs"
    assert config.env["COMFYFLEET_PREFECT__API_URL"] == "http://10.0.0.2:4200/api"
    [step] = spec["pull_steps"]
    assert step == {
        "prefect.deployments.steps.set_working_directory": {"directory": "/opt/comfyfleet"}
    }
    assert spec["path"] == "/opt/comfyfleet"


def test_the_image_holds_every_deployed_entrypoint_at_the_configured_code_dir() -> None:
    dockerfile = (REPO / "deployments" / "Dockerfile").read_text()
    [workdir] = re.findall(r"(?m)^WORKDIR\s+(\S+)", dockerfile)
    assert workdir == DockerSettings().code_dir
    copied = {
        Path(dest).name if dest not in ("./", ".") else Path(src).name
        for line in re.findall(r"(?m)^COPY\s+(.+)$", dockerfile)
        for *sources, dest in [line.split()]
        for src in sources
    }
    entrypoints = [*GENERATION_ENTRYPOINTS, BATCH_ENTRYPOINT]
    needed = {e.split("/")[0] for e in entrypoints} | {"comfyfleet", "blocks", "workflows"}
    assert needed <= copied, needed - copied
    assert re.search(r"(?m)^RUN pip install -r requirements.txt$", dockerfile)
    assert re.search(rf"(?m)^ENV PYTHONPATH={re.escape(workdir)}$", dockerfile)
