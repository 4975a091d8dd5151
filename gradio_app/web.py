"""The web process: gateway + UI in one ASGI app, served by uvicorn."""

from __future__ import annotations

import logging
import os
from typing import Any

import gradio as gr
from fastapi import FastAPI

from comfyfleet.api import FleetAdmin, create_app, gateway_of
from comfyfleet.local.prefect_server import use_prefect
from comfyfleet.settings import Settings
from comfyfleet.store import Database, upgrade
from gradio_app.ui import build_app

log = logging.getLogger(__name__)
MAX_UPLOAD = "32mb"


IDLE_QUEUE_POLL_S = 0.02


def registry_fleet(settings: Settings, db: Database) -> FleetAdmin:
    """The node registry (Prefect blocks) as the gateway's fleet."""
    from comfyfleet.fleet.registry import RegistryFleet

    return RegistryFleet(settings, db, actor="gateway")


def build_web_app(
    settings: Settings,
    *,
    db: Database | None = None,
    fleet: FleetAdmin | None = None,
    **gateway_kwargs: Any,
) -> FastAPI:
    """The REST gateway with the Gradio UI mounted at `/` (login: ComfyFleet users)."""
    if settings.prefect.api_url:
        use_prefect(settings)  # the API URL and the fleet's auth string
    db = db or Database.from_settings(settings)
    app = create_app(settings, db=db, fleet=fleet or registry_fleet(settings, db), **gateway_kwargs)
    demo = build_app(settings, gateway=gateway_of(app))
    runner = demo.runner  # type: ignore[attr-defined]
    app.state.ui = demo
    mounted = gr.mount_gradio_app(
        app,
        demo,
        path="/",
        auth=runner.login,
        auth_message="Log in with your ComfyFleet account.",
        max_file_size=MAX_UPLOAD,
        footer_links=["api"],
    )
    # Gradio's queue looks for work every 1 ms while idle (≈ 1,000 wake-ups and 0.05 CPU-s a
    # second, measured); 20 ms is unnoticeable to a person and 20 times cheaper.
    demo._queue.sleep_when_free = IDLE_QUEUE_POLL_S
    return mounted


def serve(settings: Settings) -> None:
    import uvicorn

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    db = Database.from_settings(settings)
    upgrade(db)
    app = build_web_app(settings, db=db)
    host, port = settings.gateway.host, settings.gateway.port
    log.info("ComfyFleet web: http://%s:%d/ (REST /api/v2, docs /docs)", host, port)
    uvicorn.run(app, host=host, port=port, log_level="info", proxy_headers=True)
