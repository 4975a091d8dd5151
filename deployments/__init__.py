"""Turns the node list into Prefect objects: blocks, pools, queues and deployments."""

from deployments.fleet import (
    CONTROL_POOL,
    GENERATION_FLOWS,
    apply_control,
    apply_fleet,
    apply_node,
    pool_name,
)

__all__ = [
    "CONTROL_POOL",
    "GENERATION_FLOWS",
    "apply_control",
    "apply_fleet",
    "apply_node",
    "pool_name",
]
