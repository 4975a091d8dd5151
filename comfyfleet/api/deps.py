"""Dependencies of the routes: the gateway's shared objects, the caller, the database session.

`CurrentUser` (any valid bearer token: a user's or an API client's, acting as its owner),
`AdminUser` (401 without a token, 403 for non-admins), `SessionDep` (one transaction per
request), `GatewayDep` (settings, database, catalog, fleet, input store, progress hub, queue view).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from comfyfleet.api.errors import ApiError
from comfyfleet.api.fleet import FleetAdmin
from comfyfleet.auth import Principal, authenticate_token
from comfyfleet.auth.throttle import LoginThrottle
from comfyfleet.catalog import Catalog
from comfyfleet.jobs.inputs import InputStore
from comfyfleet.jobs.webhook_targets import WebhookPolicy
from comfyfleet.settings import Settings
from comfyfleet.store import Database


@dataclass
class Gateway:
    """Everything the routes share; one per app (`app.state.gateway`)."""

    settings: Settings
    db: Database
    catalog: Catalog
    fleet: FleetAdmin
    inputs: InputStore
    hub: Any  # comfyfleet.api.progress.ProgressHub
    registry: Any  # prometheus CollectorRegistry
    webhook_schedule: tuple[float, ...]
    throttle: LoginThrottle
    background: set[Any] = field(default_factory=set)
    queue: Any = None  # comfyfleet.api.queue.QueueView: positions and free slots
    loop_lag: Any = None  # comfyfleet.api.metrics.LoopLag of the serving process

    def spawn(self, coro: Any) -> None:
        """Run a coroutine in the background, keeping a reference until it ends."""
        import asyncio

        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def webhook_policy(self) -> WebhookPolicy:
        """Where webhooks may go: the settings' policy, refusing every node the fleet knows
        now too. Blocking (it resolves the fleet's host names)."""
        urls = [node.url for node in self.fleet.snapshot()]
        return WebhookPolicy.from_settings(self.settings, node_urls=urls)


def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def get_db(gateway: GatewayDep) -> Database:
    return gateway.db


DbDep = Annotated[Database, Depends(get_db)]


def get_session(db: DbDep) -> Iterator[Session]:
    with db.session() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="BearerToken",
    description="`Authorization: Bearer <token>` from /api/v2/auth/login (users) or "
    "/api/v2/auth/token (API clients).",
)


def _unauthorized(message: str = "missing or invalid bearer token") -> ApiError:
    return ApiError(
        401,
        "unauthorized",
        message,
        field="Authorization",
        headers={"WWW-Authenticate": "Bearer"},
    )


def authenticate(db: Database, token: str | None) -> Principal:
    """The principal of a bearer token (ApiError 401 without one, or for a bad one)."""
    if not token:
        raise _unauthorized()
    principal = db.run(lambda s: authenticate_token(s, token=token), readonly=True)
    if principal is None:
        raise _unauthorized("invalid, expired or revoked token")
    return principal


def get_principal(
    db: DbDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    return authenticate(db, credentials.credentials if credentials else None)


def get_principal_or_query(
    db: DbDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    access_token: Annotated[
        str | None,
        Query(
            max_length=200,
            description="The bearer token, for clients that cannot set headers "
            "(browser EventSource, <img src>).",
        ),
    ] = None,
) -> Principal:
    token = credentials.credentials if credentials else access_token
    return authenticate(db, token)


def get_optional_principal(
    db: DbDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal | None:
    if credentials is None:
        return None
    return authenticate(db, credentials.credentials)


CurrentUser = Annotated[Principal, Depends(get_principal)]
CurrentUserOrQuery = Annotated[Principal, Depends(get_principal_or_query)]
OptionalUser = Annotated[Principal | None, Depends(get_optional_principal)]


def require_admin(principal: CurrentUser) -> Principal:
    if not principal.is_admin:
        raise ApiError(403, "forbidden", f"{principal.username} is not an admin")
    return principal


AdminUser = Annotated[Principal, Depends(require_admin)]
