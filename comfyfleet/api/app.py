"""The gateway app factory: `create_app(settings, *, db=None) -> FastAPI`.

REST under /api/v2 (and the old service's paths), OpenAPI at /docs, /api/health, /metrics, SSE.
The web process (`python -m gradio_app`) builds this app and mounts the Gradio UI at `/`; tests
build it directly. Request bodies are limited (`UPLOAD_LIMIT` on the routes that take images,
`BODY_LIMIT`, 1 MB, on every other one) before they are read; CORS allows only
`gateway.cors_origins`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from comfyfleet import __version__
from comfyfleet.api import (
    admin,
    admin_users,
    auth,
    batches,
    comfy,
    errors,
    events,
    files,
    generate,
    health,
    join,
    tasks,
)
from comfyfleet.api.deps import Gateway
from comfyfleet.api.errors import send_error
from comfyfleet.api.fleet import FleetAdmin, StaticFleet, node_metrics
from comfyfleet.api.headers import SecurityHeaders
from comfyfleet.api.metrics import LoopLag, build_registry
from comfyfleet.api.progress import ProgressHub
from comfyfleet.api.queue import QueueView
from comfyfleet.api.throttle import ThrottleLogins
from comfyfleet.auth.throttle import LoginThrottle
from comfyfleet.jobs import load_catalog
from comfyfleet.jobs.inputs import InputStore
from comfyfleet.jobs.webhooks import DEFAULT_SCHEDULE_S
from comfyfleet.logs import redact_logs
from comfyfleet.settings import Settings, get_settings
from comfyfleet.store import Database

IO_THREADS = 64
"""Threads for the blocking calls of request and UI handlers (each mostly waits on I/O)."""
BODY_LIMIT = 1024 * 1024
UPLOAD_LIMIT = 32 * 1024 * 1024
_UPLOAD_PATHS = frozenset(
    {
        "/api/v2/tasks",  # params may carry an image in base64
        "/api/v2/tasks/batch",
        "/api/v2/tasks/image-to-video",
        "/api/v2/tasks/image-to-video/upload",
        "/api/v2/inputs",
        *(f"{prefix}/{path}" for prefix in comfy.PREFIXES for path in ("prompt", "upload/image")),
    }
)
"""Routes that accept an image in the body; every other JSON route takes at most `BODY_LIMIT`."""
_LIMITED_PREFIXES = ("/api/", "/admin/", "/nodes", "/cluster", "/comfy/")

DESCRIPTION = """Run ComfyUI jobs on a fleet of ComfyUI nodes.

Authenticate with `Authorization: Bearer <token>`: users get one from `POST /api/v2/auth/login`,
API clients from `POST /api/v2/auth/token` (client credentials from `POST /api/v2/auth/register`).
Submit with `POST /api/v2/tasks` (any workflow) or the per-type paths; follow a job with
`GET /api/v2/tasks/{id}` or live with `GET /api/v2/tasks/{id}/events` (Server-Sent Events).
Errors are JSON: `{"error", "message", "field", "errors"}`.
"""


ROUTERS = (
    auth.router,
    tasks.router,
    batches.router,
    generate.router,
    events.router,
    files.router,
    admin.router,
    admin_users.router,
    join.router,
    health.router,
    *comfy.ROUTERS,
)
"""Every router of the gateway, in inclusion order (tests walk them route by route)."""


def allowed_methods(path: str) -> list[str]:
    """The methods the gateway serves on `path` (for `Allow` on a 405)."""
    routes = [r for router in ROUTERS for r in router.routes if isinstance(r, APIRoute)]
    literal = [r for r in routes if r.path == path]  # /tasks/batch, not /tasks/{job_id}
    matching = literal or [r for r in routes if r.path_regex.match(path)]
    return sorted({m for r in matching for m in (r.methods or ())})


class BodyLimit:
    """Refuse request bodies over the limit (413 JSON) by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, *, limit: int = BODY_LIMIT, upload_limit: int = UPLOAD_LIMIT):
        self.app, self.limit, self.upload_limit = app, limit, upload_limit

    def _limit_for(self, path: str) -> int | None:
        if not path.startswith(_LIMITED_PREFIXES):
            return None  # the Gradio app enforces its own (max_file_size)
        return self.upload_limit if path.rstrip("/") in _UPLOAD_PATHS else self.limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit_for(scope.get("path", ""))
        if limit is None:
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await self._reject(send, limit)
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send, limit)

    @staticmethod
    async def _reject(send: Send, limit: int) -> None:
        await send_error(
            send, 413, "too_large", f"request body larger than {limit} bytes", field="body",
            errors=[{"field": "body", "message": f"at most {limit} bytes"}],
        )  # fmt: skip


class _TooLarge(Exception):
    pass


def create_app(
    settings: Settings | None = None,
    *,
    db: Database | None = None,
    fleet: FleetAdmin | None = None,
    webhook_schedule: Sequence[float] = DEFAULT_SCHEDULE_S,
) -> FastAPI:
    """The gateway. `db` defaults to `database.url`; `fleet` to the configured nodes."""
    settings = settings or get_settings()
    db = db or Database.from_settings(settings)
    fleet = fleet or StaticFleet(settings, db)
    loop_lag = LoopLag()
    catalog = load_catalog(settings)
    gateway = Gateway(
        settings=settings,
        db=db,
        catalog=catalog,
        fleet=fleet,
        inputs=InputStore(settings.store.inputs_dir),
        hub=ProgressHub(settings.prefect.api_url),
        registry=build_registry(
            db, node_source=lambda: [node_metrics(n) for n in fleet.snapshot()], loop_lag=loop_lag
        ),
        webhook_schedule=tuple(webhook_schedule),
        throttle=LoginThrottle(settings.auth.login_rate),
        queue=QueueView(db, fleet.snapshot, capabilities=catalog.capabilities),
        loop_lag=loop_lag,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Database calls, password hashes and file copies run in threads (`asyncio.to_thread`);
        # the default pool (CPU count + 4 threads) would queue people behind a slow write.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="gateway-io")
        )
        loop_lag.start()
        gateway.hub.start()  # its Prefect subscription now, not in the first person's request
        yield
        await loop_lag.stop()
        await gateway.hub.close()
        pending = list(gateway.background)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    app = FastAPI(
        title="ComfyFleet gateway",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url="/redoc",
        openapi_url="/openapi.json",
    )
    app.state.gateway = gateway
    errors.install(app, allowed_methods=allowed_methods)
    for router in ROUTERS:
        app.include_router(router)
    if settings.gateway.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.gateway.cors_origins),
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )
    app.add_middleware(BodyLimit)
    app.add_middleware(ThrottleLogins, throttle=gateway.throttle)
    app.add_middleware(SecurityHeaders)
    redact_logs()  # no token in the access log (SSE and downloads take ?access_token=)
    return app


def gateway_of(app: Any) -> Gateway:
    """The shared objects of an app made by `create_app` (for the UI and tests)."""
    return app.state.gateway
