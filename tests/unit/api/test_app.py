"""The gateway app: health, OpenAPI docs and CORS."""

from __future__ import annotations

from pathlib import Path

import httpx


async def test_health_and_openapi_docs(api_client: httpx.AsyncClient) -> None:
    health = await api_client.get("/api/health")
    assert health.status_code == 200 and health.json()["database"] == "ok"
    docs = await api_client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = (await api_client.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["BearerToken"]["scheme"] == "bearer"
    post = spec["paths"]["/api/v2/tasks"]["post"]
    assert {"202", "200", "401", "422", "429"} <= set(post["responses"])
    assert post["security"] == [{"BearerToken": []}]


async def test_cors_allows_only_the_configured_origins(tmp_path: Path) -> None:
    from comfyfleet.api import create_app
    from tests.fixtures.gateway import make_settings

    settings = make_settings(tmp_path, gateway={"cors_origins": ["https://ui.example"]})
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for origin, allowed in (("https://ui.example", True), ("https://evil.example", False)):
            response = await client.options(
                "/api/v2/tasks",
                headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
            )
            assert (response.headers.get("access-control-allow-origin") == origin) is allowed
