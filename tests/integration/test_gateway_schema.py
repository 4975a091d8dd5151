"""Property-based run of the gateway against its own OpenAPI (schemathesis): as a user and as an
admin, no 5xx and no response that breaks the documented schema (status codes, content types,
bodies). Unauthenticated calls only ever see 401s (`test_api_auth.py` covers that route by route).
Bounded: a few examples per operation so the run stays in seconds."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from comfyfleet.api import create_app
from comfyfleet.store import Database, upgrade
from tests.fixtures.gateway import FAST_WEBHOOKS, make_account, make_settings

MAX_EXAMPLES = 6
# Operations that would end the session under test or need a live stream.
SKIP = {("POST", "/api/v2/auth/logout"), ("GET", "/api/v2/tasks/{job_id}/events")}


def _gateway() -> tuple[Any, dict[str, str]]:
    """One gateway (fresh SQLite in a temp dir) for the whole module, with a user and an admin.
    Built at import: schemathesis reads the OpenAPI when it collects the tests."""
    root = Path(tempfile.mkdtemp(prefix="cf-schema-"))
    settings_ = make_settings(root)
    db = Database(settings_.database.url)
    upgrade(db)
    app = create_app(settings_, db=db, webhook_schedule=FAST_WEBHOOKS)
    tokens = {
        role: make_account(db, role, admin=(role == "admin")).token for role in ("user", "admin")
    }
    return app, tokens


APP, TOKENS = _gateway()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture(params=["user", "admin"])
def auth_headers(request: pytest.FixtureRequest) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[request.param]}"}


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_gateway_conforms_to_its_openapi(case: Any, auth_headers: dict[str, str]) -> None:
    if (case.method.upper(), case.path) in SKIP:
        return
    headers = dict(case.headers or {})
    if not case.operation.schema.is_security_param_negated(case):
        headers.update(auth_headers)  # unless the case left the token out on purpose
    if case.query and case.query.get("wait") in (True, "true"):
        case.query["timeout"] = 0.05  # no fleet here: a job never ends, do not wait long
    case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])
