"""The fleet: node views, eligibility and routing strategies (registry, monitor and dispatcher
build on these)."""

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
    has_models,
    is_eligible,
    load,
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
    "has_models",
    "is_eligible",
    "load",
]
