"""Admin routes for people: users (create, disable, quotas), API clients, join tokens, audit log.
Every route: 401 without a token, 403 for non-admins. Actions are written to the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from comfyfleet import auth as identity
from comfyfleet.api.auth import clients_out
from comfyfleet.api.deps import AdminUser, DbDep
from comfyfleet.api.errors import ERROR_RESPONSES, ErrorBody
from comfyfleet.api.schemas import (
    Body,
    ClientOut,
    Int,
    JoinTokenOut,
    PermissionsUpdate,
    QuotaUpdate,
    UserCreate,
    UserOut,
)
from comfyfleet.store import NotFound, audit, list_audit, list_clients, list_users, set_quotas
from comfyfleet.store import users as rows
from comfyfleet.store.models import User

router = APIRouter(tags=["admin"], responses=ERROR_RESPONSES)
_CONFLICT = {409: {"model": ErrorBody, "description": "The name is taken."}}


def user_out(user: User) -> UserOut:
    return UserOut(
        username=user.username,
        role=user.role,
        disabled=user.disabled,
        created_at=user.created_at,
        max_running=user.max_running,
        max_queued=user.max_queued,
        daily_gpu_seconds=user.daily_gpu_seconds,
        permissions=["raw_graphs"] if user.raw_graphs else [],
    )


@router.get("/api/v2/admin/users", response_model=list[UserOut])
def get_users(db: DbDep, admin: AdminUser) -> list[UserOut]:
    """Every user (service users included, marked by role)."""
    return db.run(lambda s: [user_out(u) for u in list_users(s)], readonly=True)


@router.post("/api/v2/admin/users", response_model=UserOut, status_code=201, responses=_CONFLICT)
def create_user(body: UserCreate, db: DbDep, admin: AdminUser) -> UserOut:
    """A new user (or admin)."""

    def run(session: Any) -> UserOut:
        actor = session.merge(admin.user, load=False)
        user = identity.create_user(
            session, username=body.username, password=body.password, admin=body.admin, actor=actor
        )
        return user_out(user)

    return db.run(run)


def _set_disabled(db: Any, admin: Any, username: str, disabled: bool) -> UserOut:
    def run(session: Any) -> UserOut:
        actor = session.merge(admin.user, load=False)
        return user_out(
            identity.disable_user(session, username=username, disabled=disabled, actor=actor)
        )

    return db.run(run)


@router.post("/api/v2/admin/users/{username}/disable", response_model=UserOut)
def disable_user(username: str, db: DbDep, admin: AdminUser) -> UserOut:
    """Disable a user: their tokens and clients stop working at once."""
    return _set_disabled(db, admin, username, True)


@router.post("/api/v2/admin/users/{username}/enable", response_model=UserOut)
def enable_user(username: str, db: DbDep, admin: AdminUser) -> UserOut:
    return _set_disabled(db, admin, username, False)


@router.put("/api/v2/admin/users/{username}/permissions", response_model=UserOut)
def set_user_permissions(
    username: str, body: PermissionsUpdate, db: DbDep, admin: AdminUser
) -> UserOut:
    """Grant or withdraw permissions (`raw_graphs`: raw ComfyUI graphs; admins always have it)."""

    def run(session: Any) -> UserOut:
        user = identity.require_user(session, username=username)
        if body.raw_graphs is not None:
            rows.set_raw_graphs(session, target=user, allowed=body.raw_graphs)
        audit(
            session, actor=session.merge(admin.user, load=False), action="user.permissions",
            target=username, detail=body.model_dump(exclude_none=True),
        )  # fmt: skip
        return user_out(user)

    return db.run(run)


@router.put("/api/v2/admin/users/{username}/quotas", response_model=UserOut)
def set_user_quotas(username: str, body: QuotaUpdate, db: DbDep, admin: AdminUser) -> UserOut:
    """Set a user's quotas (null = no limit)."""

    def run(session: Any) -> UserOut:
        user = identity.require_user(session, username=username)
        set_quotas(
            session,
            target=user,
            max_running=body.max_running,
            max_queued=body.max_queued,
            daily_gpu_seconds=body.daily_gpu_seconds,
        )
        audit(
            session,
            actor=session.merge(admin.user, load=False),
            action="user.quotas",
            target=username,
            detail=body.model_dump(),
        )
        return user_out(user)

    return db.run(run)


@router.get("/api/v2/admin/clients", response_model=list[ClientOut])
def get_clients(
    db: DbDep,
    admin: AdminUser,
    include_revoked: Annotated[bool, Query()] = False,
) -> list[ClientOut]:
    """Every API client (with its owner)."""

    def run(session: Any) -> list[ClientOut]:
        clients = list_clients(session, include_revoked=include_revoked)
        owners = {u.id: u.username for u in list_users(session)}
        return clients_out([(c, owners.get(c.owner_id)) for c in clients])

    return db.run(run, readonly=True)


@router.delete("/api/v2/admin/clients/{client_id}", status_code=204)
def revoke_client(client_id: str, db: DbDep, admin: AdminUser) -> Response:
    """Revoke a client and its tokens, effective on their next request."""

    def run(session: Any) -> bool:
        if rows.get_client(session, client_id=client_id) is None:
            raise NotFound(f"no client {client_id!r}")
        return identity.revoke_client(
            session, client_id=client_id, actor=session.merge(admin.user, load=False)
        )

    db.run(run)
    return Response(status_code=204)


class JoinTokenRequest(Body):
    ttl_minutes: Int = Field(default=60, ge=1, le=7 * 24 * 60)
    note: str = Field(default="", max_length=255)
    single_use: bool = Field(default=False, description="Only the first join may use it.")


@router.post("/api/v2/admin/tokens/join", response_model=JoinTokenOut, status_code=201)
def create_join_token(body: JoinTokenRequest, db: DbDep, admin: AdminUser) -> JoinTokenOut:
    """A join token: lets a GPU host add itself as a node until it expires (shown once)."""

    def run(session: Any) -> JoinTokenOut:
        actor = session.merge(admin.user, load=False)
        issued = identity.issue_join_token(
            session,
            created_by=actor,
            ttl_minutes=body.ttl_minutes,
            note=body.note,
            single_use=body.single_use,
            actor=actor,
        )
        return JoinTokenOut(
            token=issued.token,
            id=issued.id,
            note=body.note,
            expires_at=issued.expires_at,
            single_use=body.single_use,
        )

    return db.run(run)


class AuditOut(BaseModel):
    at: datetime
    actor: str
    action: str
    target: str
    detail: dict[str, Any] | None = None


@router.get("/api/v2/admin/audit", response_model=list[AuditOut])
def get_audit(
    db: DbDep,
    admin: AdminUser,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> list[AuditOut]:
    """Admin actions, newest first."""

    def run(session: Any) -> list[AuditOut]:
        return [
            AuditOut(at=e.at, actor=e.actor, action=e.action, target=e.target, detail=e.detail)
            for e in list_audit(session, limit=limit, offset=offset)
        ]

    return db.run(run, readonly=True)
