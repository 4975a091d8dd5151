"""The fleet: which nodes there are and how jobs get to them.

`generation` (the flow per capability), `node_block` (the `ComfyUINode` block type) and
`provision` (blocks, pools, queues, deployments) make the Prefect objects; `registry` edits the
node list; `state` is each node's live state; `monitor` probes, `router` chooses (its node views,
eligibility and strategies are re-exported here), `dispatcher` turns queued jobs into attempts,
`recovery` handles lost ones; `leader`, `config_reload` and `service` are the fleet service;
`join` is node self-join."""

from comfyfleet.fleet.router import (
    DEFAULT_STRATEGY,
    STRATEGIES,
    JobView,
    NodeView,
    Router,
    busy,
    eligible,
    explain,
    free_slots,
    has_installed,
    has_models,
    is_eligible,
    load,
    serves,
)

__all__ = [
    "DEFAULT_STRATEGY",
    "STRATEGIES",
    "JobView",
    "NodeView",
    "Router",
    "busy",
    "eligible",
    "explain",
    "free_slots",
    "has_installed",
    "has_models",
    "is_eligible",
    "load",
    "serves",
]
