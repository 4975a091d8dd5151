"""Auth routes: user and admin login, API client registration and tokens, webhook secrets.

- `POST /api/v2/auth/login` {username, password} → bearer token (any enabled user).
- `POST /admin/auth/login` (the old service's path) → the same, for admins only (403 otherwise).
- `POST /api/v2/auth/register` {client_name, description} → client id + secret + webhook signing
  secret, each shown once. Needs a logged-in user unless `auth.open_registration` is on; an
  anonymous registration then gets its own owner account (cannot log in, owns only this client).
- `POST /api/v2/auth/token` {client_id, client_secret} → bearer token (`auth.token_ttl_minutes`).
- `GET /api/v2/auth/me`, `POST /api/v2/auth/logout` (revokes this token),
  `POST /api/v2/auth/webhook-secret` (new signing secret for the caller's scope, shown once).
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, status

from comfyfleet import auth as identity
from comfyfleet.api.deps import CurrentUser, DbDep, GatewayDep, OptionalUser
from comfyfleet.api.errors import ERROR_RESPONSES, ApiError, ErrorBody
from comfyfleet.api.schemas import (
    ClientOut,
    ClientTokenRequest,
    LoginRequest,
    MeOut,
    RegisteredClient,
    RegisterRequest,
    TokenOut,
    WebhookSecretOut,
)
from comfyfleet.jobs.webhooks import new_secret, rotate_secret
from comfyfleet.store import ApiClient, utcnow
from comfyfleet.store import users as rows
from comfyfleet.store.webhooks import client_scope, store_secret, user_scope

router = APIRouter(tags=["auth"])
_BAD_LOGIN = {
    401: {"model": ErrorBody, "description": "Wrong credentials."},
    429: {
        "model": ErrorBody,
        "description": "Too many failed logins from this address or for this account "
        "(`auth.login_rate`); `Retry-After` says when to try again.",
    },
}


def _token_out(
    issued: identity.IssuedToken, *, username: str, is_admin: bool, client_id: str | None = None
) -> TokenOut:
    expires_in = 0
    if issued.expires_at is not None:
        expires_in = max(0, int((issued.expires_at - utcnow()).total_seconds()))
    return TokenOut(
        access_token=issued.token,
        expires_at=issued.expires_at,
        expires_in=expires_in,
        username=username,
        is_admin=is_admin,
        client_id=client_id,
    )


def _login(gateway: Any, body: LoginRequest, *, admin_only: bool) -> TokenOut:
    ttl = gateway.settings.auth.token_ttl_minutes
    user = identity.check_login(gateway.db, username=body.username, password=body.password)
    if user is None:
        raise ApiError(401, "unauthorized", "wrong username or password", field="password")
    if admin_only and not user.is_admin:
        raise ApiError(403, "forbidden", f"{user.username} is not an admin")

    def run(session: Any) -> TokenOut:
        principal = session.merge(user, load=False)
        issued = identity.issue_token(session, principal=principal, ttl_minutes=ttl, note="login")
        return _token_out(issued, username=user.username, is_admin=user.is_admin)

    return gateway.db.run(run)


@router.post(
    "/api/v2/auth/login",
    response_model=TokenOut,
    responses={**_BAD_LOGIN, 422: ERROR_RESPONSES[422]},
)
async def login(body: LoginRequest, gateway: GatewayDep) -> TokenOut:
    """Log a user in: a bearer token for the REST API and the CLI."""
    return await identity.run_hashing(_login, gateway, body, admin_only=False)


@router.post(
    "/admin/auth/login",
    response_model=TokenOut,
    responses={**_BAD_LOGIN, 403: ERROR_RESPONSES[403], 422: ERROR_RESPONSES[422]},
)
async def admin_login(body: LoginRequest, gateway: GatewayDep) -> TokenOut:
    """Admin login (the old service's path): a bearer token, for admins only."""
    return await identity.run_hashing(_login, gateway, body, admin_only=True)


def _client_out(client: ApiClient, owner: str | None) -> dict[str, Any]:
    return {
        "client_id": client.id,
        "client_name": client.client_name,
        "description": client.description,
        "owner": owner,
        "created_at": client.created_at,
        "revoked": client.revoked_at is not None,
    }


@router.post(
    "/api/v2/auth/register",
    response_model=RegisteredClient,
    status_code=status.HTTP_201_CREATED,
    responses={401: ERROR_RESPONSES[401], 422: ERROR_RESPONSES[422]},
)
def register_client(
    body: RegisterRequest, gateway: GatewayDep, principal: OptionalUser
) -> RegisteredClient:
    """Register an API client; its secret and webhook signing secret are shown only now."""
    if principal is None and not gateway.settings.auth.open_registration:
        raise ApiError(
            401,
            "unauthorized",
            "log in first (Authorization: Bearer <token>); open registration is off",
            field="Authorization",
            headers={"WWW-Authenticate": "Bearer"},
        )
    webhook_secret = new_secret()

    def run(session: Any) -> RegisteredClient:
        if principal is not None:
            owner = session.merge(principal.user, load=False)
        else:
            owner = rows.add_user(
                session,
                username=f"client-{secrets.token_hex(6)}",
                password_hash=rows.UNUSABLE_PASSWORD,
                role="user",
            )
        client, secret = identity.create_client(
            session, owner=owner, client_name=body.client_name, description=body.description
        )
        store_secret(session, scope=client_scope(client.id), secret=webhook_secret)
        return RegisteredClient(
            **_client_out(client, owner.username),
            client_secret=secret,
            webhook_secret=webhook_secret,
        )

    return gateway.db.run(run)


@router.post(
    "/api/v2/auth/token",
    response_model=TokenOut,
    responses={**_BAD_LOGIN, 422: ERROR_RESPONSES[422]},
)
async def client_token(body: ClientTokenRequest, gateway: GatewayDep) -> TokenOut:
    """A bearer token for an API client (client credentials)."""
    ttl = gateway.settings.auth.token_ttl_minutes

    def run(session: Any) -> TokenOut:
        client = identity.authenticate_client(
            session, client_id=body.client_id, secret=body.client_secret
        )
        if client is None:
            raise ApiError(
                401,
                "unauthorized",
                "unknown client, wrong secret, or revoked",
                field="client_secret",
            )
        issued = identity.issue_token(session, principal=client, ttl_minutes=ttl, note="client")
        owner = client.owner
        return _token_out(
            issued, username=owner.username, is_admin=owner.is_admin, client_id=client.id
        )

    return await identity.run_hashing(gateway.db.run, run)


@router.get("/api/v2/auth/me", response_model=MeOut, responses={401: ERROR_RESPONSES[401]})
def me(principal: CurrentUser) -> MeOut:
    """Who the token belongs to."""
    return MeOut(
        username=principal.username, is_admin=principal.is_admin, client_id=principal.client_id
    )


@router.post("/api/v2/auth/logout", status_code=204, responses={401: ERROR_RESPONSES[401]})
def logout(principal: CurrentUser, db: DbDep) -> None:
    """Revoke the token this request used."""
    if principal.token_id is not None:
        db.run(
            lambda s: identity.revoke_token(s, token_id=principal.token_id, actor=principal.user)
        )


@router.post(
    "/api/v2/auth/webhook-secret",
    response_model=WebhookSecretOut,
    responses={401: ERROR_RESPONSES[401]},
)
def new_webhook_secret(principal: CurrentUser, db: DbDep) -> WebhookSecretOut:
    """A new signing secret for your webhooks (the client's, when called with a client token)."""
    scope = (
        client_scope(principal.client_id) if principal.client_id else user_scope(principal.user_id)
    )
    return WebhookSecretOut(scope=scope, webhook_secret=rotate_secret(db, scope=scope))


def client_dict(client: ApiClient, owner: str | None) -> dict[str, Any]:
    return _client_out(client, owner)


def clients_out(pairs: list[tuple[ApiClient, str | None]]) -> list[ClientOut]:
    return [ClientOut(**_client_out(c, o)) for c, o in pairs]
