"""`GET /api/health` (no auth: load balancers and `make up` call it) and `GET /metrics`
(Prometheus text; no auth, like most exporters: bind the gateway to a trusted network, or put
the scrape path behind the proxy's auth)."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import APIRouter, Response

from comfyfleet import __version__
from comfyfleet.api.deps import GatewayDep
from comfyfleet.api.metrics import CONTENT_TYPE, render
from comfyfleet.api.schemas import HealthOut
from comfyfleet.comfyui import tls_context
from comfyfleet.store import ping

router = APIRouter(tags=["health"])


async def _prefect_state(api_url: str | None) -> str:
    if not api_url:
        return "not configured"
    try:
        async with httpx.AsyncClient(timeout=1.5, verify=tls_context()) as client:
            response = await client.get(f"{api_url.rstrip('/')}/health")
        return "ok" if response.is_success else f"HTTP {response.status_code}"
    except httpx.HTTPError as exc:
        return f"unreachable ({type(exc).__name__})"


@router.get(
    "/api/health",
    response_model=HealthOut,
    responses={503: {"model": HealthOut, "description": "The database is unreachable."}},
)
async def health(gateway: GatewayDep, response: Response) -> HealthOut:
    """Liveness and dependencies: database, Prefect server, node states."""
    try:
        await asyncio.to_thread(gateway.db.run, ping, readonly=True, retry_for_s=0)
        database = "ok"
    except Exception as exc:  # any failure means "not ok"; the message says which
        database = f"error ({type(exc).__name__})"
    prefect = await _prefect_state(gateway.settings.prefect.api_url)
    nodes: dict[str, int] = {}
    for node in gateway.fleet.snapshot():
        nodes[node.state] = nodes.get(node.state, 0) + 1
    ok = database == "ok"
    response.status_code = 200 if ok else 503
    return HealthOut(
        status="ok" if ok else "degraded",
        database=database,
        prefect=prefect,
        nodes=nodes,
        version=__version__,
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
async def metrics(gateway: GatewayDep) -> Response:
    """Prometheus metrics: jobs by workflow and status, queue wait and run time, nodes, GPU-s."""
    body = await asyncio.to_thread(render, gateway.registry)
    return Response(content=body, media_type=CONTENT_TYPE)
