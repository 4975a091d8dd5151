"""The Prefect layer's entry that applies the fleet: it loads the flows (flows/), turns each into
a `FlowSpec` (name, entrypoint, parameter schema, description) and hands them, with the node list
of `comfyfleet.yaml`, to the library's provisioning (comfyfleet.fleet.provision): blocks, pools,
queues and the per-node deployments. Then it applies prefect.yaml, the one definition of the
control-plane deployments (`<flow>/fleet`, `batch/fleet`, `batch/nightly-example`), with
`prefect --no-prompt deploy --all`. `python -m deployments` applies the configured fleet (`make
up` runs it).

The flows keep their parameters in their own modules; which flow serves which capability is the
library's table (comfyfleet.fleet.generation).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
from pathlib import Path

from prefect.client.orchestration import PrefectClient
from prefect.flows import Flow
from prefect.settings import get_current_settings
from prefect.utilities.callables import parameter_schema

from comfyfleet.fleet import provision
from comfyfleet.fleet.provision import CONTROL_POOL, FlowSpec, pool_name
from comfyfleet.settings import REPO_ROOT, NodeConfig, Settings
from comfyfleet.worker import HOME_ENV

GENERATION_ENTRYPOINTS = (
    "flows/text_to_image.py:text_to_image",
    "flows/text_to_image_sdxl.py:text_to_image_sdxl",
    "flows/image_to_video.py:image_to_video",
    "flows/comfy_workflow.py:comfy_workflow",
)
"""The generation flows (one per entry of comfyfleet.fleet.generation.GENERATION_FLOWS)."""
BATCH_ENTRYPOINT = "flows/batch.py:batch"
PROJECT_FILE = REPO_ROOT / "prefect.yaml"
"""The control-plane deployments (prefect.yaml)."""
DEPLOY_TIMEOUT_S = 300.0

__all__ = [
    "BATCH_ENTRYPOINT",
    "CONTROL_POOL",
    "GENERATION_ENTRYPOINTS",
    "PROJECT_FILE",
    "DeployError",
    "apply_fleet",
    "apply_node",
    "deploy_project",
    "flow_spec",
    "generation_specs",
    "pool_name",
]


def flow_spec(entrypoint: str) -> FlowSpec:
    """The flow at a checkout-relative entrypoint (`flows/batch.py:batch`), as data."""
    path, _, name = entrypoint.rpartition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    flow = getattr(module, name)
    if not isinstance(flow, Flow):
        raise TypeError(f"{entrypoint} is not a Prefect flow")
    return FlowSpec(
        name=flow.name,
        entrypoint=entrypoint,
        parameter_schema=parameter_schema(flow.fn).model_dump_for_openapi(),
        description=(flow.description or flow.name).strip(),
    )


def generation_specs() -> list[FlowSpec]:
    return [flow_spec(entrypoint) for entrypoint in GENERATION_ENTRYPOINTS]


async def apply_fleet(
    nodes: list[NodeConfig], *, client: PrefectClient | None = None,
    settings: Settings | None = None,
) -> None:  # fmt: skip
    """Apply every node, the control pool and the block type (comfyfleet.fleet.provision), then
    the control-plane deployments of prefect.yaml (`deploy_project`)."""
    await provision.apply_fleet(
        nodes, flows=generation_specs(), client=client, settings=settings
    )  # fmt: skip
    # the server this process talks to (a client's, or the current Prefect settings')
    api_url = str(client.api_url) if client is not None else get_current_settings().api.url
    await asyncio.to_thread(deploy_project, api_url=api_url.rstrip("/") if api_url else None)


class DeployError(RuntimeError):
    """`prefect deploy` failed; the message ends with its output."""


def deploy_project(
    project_file: Path = PROJECT_FILE, *, api_url: str | None = None,
    timeout_s: float = DEPLOY_TIMEOUT_S,
) -> str:  # fmt: skip
    """`prefect --no-prompt deploy --all` of `project_file`, from its directory, against the
    Prefect server at `api_url` (default: this process's PREFECT_API_URL); its output. The pull
    step's working directory (COMFYFLEET_HOME) is this checkout unless the environment names
    another."""
    env = {**os.environ}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    env.setdefault(HOME_ENV, str(REPO_ROOT))
    command = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all",
               "--prefect-file", str(project_file)]  # fmt: skip
    try:
        done = subprocess.run(
            command, cwd=project_file.parent, env=env, capture_output=True, text=True,
            timeout=timeout_s, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise DeployError(
            f"prefect deploy --all of {project_file}: not done after {timeout_s:g} s"
        ) from None
    output = done.stdout + done.stderr
    if done.returncode != 0:
        tail = "\n".join(output.splitlines()[-30:])
        raise DeployError(f"prefect deploy --all of {project_file} failed:\n{tail}")
    return output


async def apply_node(
    client: PrefectClient, node: NodeConfig, *, settings: Settings | None = None
) -> None:
    """Block, pool, queues and deployments of one node, with the flows of this checkout."""
    await provision.apply_node(client, node, flows=generation_specs(), settings=settings)
