"""The generation flows, per capability: the one table of which flow runs which jobs.

A capability with a typed flow (`text_to_image` → `text-to-image`) runs there; any other
capability runs in the generic `comfy-workflow` flow. A node gets the deployments `<flow>/<node>`
of the flows of its capabilities, and always the generic one. A typed flow's default workflow is
its capability's (`comfyfleet.jobs.DEFAULT_WORKFLOWS`). The flows themselves (their code,
parameters, entrypoints) are the Prefect layer's: flows/ and deployments/.
"""

from __future__ import annotations

from dataclasses import dataclass

from comfyfleet.jobs import DEFAULT_WORKFLOWS

ANY = "*"
"""The capability of the generic flow: it runs any catalog workflow."""


@dataclass(frozen=True)
class GenerationFlow:
    name: str
    """The flow's name, also its deployments' prefix: `text-to-image/gpu-1`."""
    capability: str
    """The jobs it runs (`ANY`: the generic flow)."""
    prefix: str
    """The name prefix of its runs and job task runs: `t2i-<job id>`."""

    @property
    def default_workflow(self) -> str | None:
        """The workflow a run uses when none is given (None: the run must name one)."""
        return DEFAULT_WORKFLOWS.get(self.capability)

    def serves(self, capabilities: list[str]) -> bool:
        """Whether a node with these capabilities gets this flow's deployment."""
        return self.capability == ANY or self.capability in capabilities


GENERATION_FLOWS: tuple[GenerationFlow, ...] = (
    GenerationFlow("text-to-image", "text_to_image", "t2i"),
    GenerationFlow("text-to-image-sdxl", "text_to_image_sdxl", "sdxl"),
    GenerationFlow("image-to-video", "image_to_video", "i2v"),
    GenerationFlow("comfy-workflow", ANY, "wf"),
)
GENERIC_FLOW = "comfy-workflow"


def flow_for(capability: str) -> str:
    """The flow that runs jobs of `capability` (the generic flow when no typed one does)."""
    return next((g.name for g in GENERATION_FLOWS if g.capability == capability), GENERIC_FLOW)


def run_prefix(capability: str) -> str:
    """The name prefix of the runs of jobs of `capability` (`t2i`; `wf` for the generic flow)."""
    return next((g.prefix for g in GENERATION_FLOWS if g.capability == capability), "wf")


def generation_flow(name: str) -> GenerationFlow:
    """The table's entry of the flow `name` (KeyError for another flow, e.g. `batch`)."""
    for flow in GENERATION_FLOWS:
        if flow.name == name:
            return flow
    raise KeyError(f"{name!r} is not a generation flow")
