"""Turns the node list into Prefect objects: blocks, pools, queues and deployments."""

from deployments.fleet import GENERATION_FLOWS, apply_fleet, apply_node, pool_name

__all__ = ["GENERATION_FLOWS", "apply_fleet", "apply_node", "pool_name"]
