"""The ComfyFleet gateway: REST /api/v2/…, OpenAPI /docs, /api/health, /metrics, SSE.

`create_app(settings, *, db=None, fleet=None)` builds the FastAPI app; the web process
(`python -m gradio_app`) mounts the Gradio UI on it. Routers by area: `auth`, `tasks` (+ `files`,
`events`), `admin` (+ `admin_users`), `health` (health and metrics).
"""

from comfyfleet.api.app import create_app, gateway_of
from comfyfleet.api.deps import AdminUser, CurrentUser, Gateway, SessionDep
from comfyfleet.api.fleet import FleetAdmin, NodeInfo, StaticFleet

__all__ = [
    "AdminUser",
    "CurrentUser",
    "FleetAdmin",
    "Gateway",
    "NodeInfo",
    "SessionDep",
    "StaticFleet",
    "create_app",
    "gateway_of",
]
