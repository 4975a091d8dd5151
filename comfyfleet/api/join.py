"""Node self-join over REST (comfyfleet.fleet.join): a GPU host joins with a join token and
leaves with the node key it got; admins list and revoke join tokens (created in `admin_users`).

    POST   /api/v2/nodes/join                   Bearer cfj_… (join token)
    POST   /api/v2/nodes/{node_id}/leave         Bearer cfn_… (the node key) or an admin token
    GET    /api/v2/admin/tokens/join             admin: join tokens and the nodes that used them
    DELETE /api/v2/admin/tokens/join/{token_id}  admin: revoke (nodes that joined stay)

`leave` does not hold the request open while jobs finish: it drains the node (no new attempts,
the ones in flight go on) and answers 202 with what is still in flight; called again once
nothing is, it removes the node (200). `comfyfleet node leave` calls it until then.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from comfyfleet import auth as identity
from comfyfleet.api.deps import AdminUser, DbDep, GatewayDep
from comfyfleet.api.errors import ERROR_RESPONSES, ApiError, ErrorBody
from comfyfleet.api.fleet import NodeInfo
from comfyfleet.api.schemas import Body, Int, Name
from comfyfleet.auth import JoinRefused, JoinTokenState, check_join_token, join_token_state
from comfyfleet.fleet.join import (
    NODE_KEY_PREFIX,
    RECORD_KEY,
    NodeUnreachable,
    check_metadata,
    check_url,
    gpu_model,
    joined_record,
    make_record,
    new_node_key,
    node_key_matches,
    probe_comfyui,
)
from comfyfleet.settings import NodeConfig
from comfyfleet.store import Conflict, NotFound, audit, list_tokens, list_users, utcnow
from comfyfleet.store.models import Token

log = logging.getLogger(__name__)
router = APIRouter(responses=ERROR_RESPONSES)

join_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="JoinToken",
    description="A join token (`cfj_…`, from an admin) to join; the node key (`cfn_…`, from the "
    "join) or an admin's bearer token to leave.",
)
JoinCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(join_bearer)]


class JoinRequest(Body):
    """What a host says about its ComfyUI. Fields left out keep their value on a re-join."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="Node id, e.g. the host name: gpu-7."
    )
    url: str = Field(max_length=2048, description="Where the control plane reaches this ComfyUI.")
    capacity: Int | None = Field(default=None, ge=1, le=64, description="Jobs in flight (2).")
    capabilities: list[Name] | None = Field(
        default=None, max_length=32, description="Generation types (default: the bundled four)."
    )
    metadata: dict[str, Any] | None = Field(
        default=None,
        description="Facts about the node; `gpu` is read from its /system_stats when not given.",
    )
    node_key: str | None = Field(
        default=None,
        max_length=200,
        description="To re-join a name that exists: that node's key (`cfn_…`, from its last "
        "join) or an admin's bearer token (`cfb_…`).",
    )


class JoinOut(BaseModel):
    node: NodeInfo
    created: bool = Field(description="False: the node had joined before and was updated.")
    pool: str = Field(description="The node's work pool: a worker must serve it.")
    node_key: str = Field(description="Shown once: `comfyfleet node leave` presents it.")
    message: str


_JOIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": JoinOut, "description": "The node had joined before: updated."},
    401: {
        "model": ErrorBody,
        "description": "No valid join token, or a name in use without its node key.",
    },
    403: {"model": ErrorBody, "description": "`node_key` is a non-admin's bearer token."},
    409: {"model": ErrorBody, "description": "The name belongs to a node an admin added."},
    422: {"model": ErrorBody, "description": "Invalid input, or the URL does not answer."},
}


class LeaveOut(BaseModel):
    node: str
    status: Literal["draining", "removed"]
    in_flight: int = 0
    message: str


class JoinTokenInfo(BaseModel):
    id: int
    note: str
    state: JoinTokenState
    created_at: datetime
    created_by: str | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    nodes: list[str] = Field(description="Nodes whose last join used this token.")


def _refused(message: str) -> ApiError:
    return ApiError(
        401, "join_refused", message, field="Authorization", headers={"WWW-Authenticate": "Bearer"}
    )


def _user_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metadata.items() if k != RECORD_KEY}


@router.post(
    "/api/v2/nodes/join",
    response_model=JoinOut,
    status_code=201,
    tags=["nodes"],
    responses=_JOIN_RESPONSES,
)
async def join_node(
    body: JoinRequest,
    request: Request,
    response: Response,
    gateway: GatewayDep,
    credentials: JoinCredentials,
) -> JoinOut:
    """Register (or update) the caller's ComfyUI as a node, once its URL answers."""
    token = credentials.credentials if credentials else None
    try:
        row: Token = await asyncio.to_thread(
            gateway.db.run, lambda s: check_join_token(s, token=token), readonly=True
        )
    except JoinRefused as exc:
        raise _refused(f"join refused: {exc}") from None
    url = check_url(body.url)
    known = set(gateway.catalog.capabilities())
    for capability in body.capabilities or ():
        if capability not in known:
            raise ApiError(
                422,
                "invalid_input",
                f"capabilities: unknown capability {capability!r} "
                f"(known: {', '.join(sorted(known))})",
                field="capabilities",
            )
    given_metadata = check_metadata(body.metadata) if body.metadata is not None else None
    try:
        existing = await gateway.fleet.get_node(body.name)
    except NotFound:
        existing = None
    previous = joined_record(existing.metadata) if existing is not None else None
    if existing is not None and previous is None:
        raise Conflict(
            f"node {body.name!r} exists and did not join by itself (an admin or the config "
            "added it): choose another name, or ask an admin to remove that node first"
        )
    if previous is not None:
        await _may_rejoin(gateway, body.name, previous, body.node_key)
    try:
        stats = await probe_comfyui(url)
    except NodeUnreachable as exc:
        raise ApiError(
            422, "node_unreachable", f"join refused: {exc}",
            field="url",
        ) from None  # fmt: skip
    if given_metadata is not None:
        metadata = given_metadata
    else:
        metadata = _user_metadata(existing.metadata) if existing is not None else {}
    model = gpu_model(stats)
    if "gpu" not in metadata and model:
        metadata["gpu"] = model
    key = new_node_key()
    address = request.client.host if request.client else None
    record = make_record(row, previous=previous, address=address, key=key)
    metadata[RECORD_KEY] = record.model_dump(mode="json")
    fields: dict[str, Any] = {}
    if existing is not None:  # everything the host does not give stays as it is
        fields = {k: getattr(existing, k) for k in NodeConfig.model_fields if hasattr(existing, k)}
    fields.update(id=body.name, url=url, metadata=metadata)
    if body.capacity is not None:
        fields["capacity"] = body.capacity
    if body.capabilities:
        fields["capabilities"] = list(dict.fromkeys(body.capabilities))
    config = NodeConfig(**fields)
    try:
        await asyncio.to_thread(
            gateway.db.run, lambda s: identity.use_join_token(s, token=row, node=body.name)
        )
    except JoinRefused as exc:
        raise _refused(f"join refused: {exc}") from None
    if existing is None:
        node = await gateway.fleet.add_node(config)
    else:
        node = await gateway.fleet.update_node(config)
    created = existing is None
    await asyncio.to_thread(gateway.db.run, lambda s: audit(
        s, actor=f"join-token:{row.id}", action="node.join", target=body.name,
        detail={"url": url, "created": created, "address": address},
    ))  # fmt: skip
    log.info("node %s %s by join token %s (%s)", body.name, "joined" if created else "re-joined",
             row.id, url)  # fmt: skip
    response.status_code = 201 if created else 200
    pool = f"comfyui-{body.name}"
    message = (
        f"node {body.name} {'joined' if created else 'updated'}: pool {pool}; it takes jobs "
        "after its first healthy probe, once a worker serves the pool"
    )
    if not config.enabled:
        message += f" (it is disabled: an admin runs `comfyfleet nodes enable {body.name}`)"
    info = NodeInfo.model_validate(node.model_dump())  # the fleet may answer a NodeState
    return JoinOut(node=info, created=created, pool=pool, node_key=key, message=message)


async def _may_rejoin(gateway: Any, name: str, previous: Any, credential: str | None) -> None:
    """A join token alone does not take over a name in use: the caller proves it is that node
    (its key) or an admin (a bearer token); 401/403 otherwise, naming `node_key`."""
    if credential and node_key_matches(previous, credential):
        return
    if credential and credential.startswith(identity.BEARER_PREFIX):
        principal = await asyncio.to_thread(
            gateway.db.run,
            lambda s: identity.authenticate_token(s, token=credential),
            readonly=True,
        )
        if principal is not None and principal.is_admin:
            return
        if principal is not None:
            raise ApiError(
                403,
                "forbidden",
                f"node_key: {principal.username} is not an admin",
                field="node_key",
            )
    raise ApiError(
        401,
        "join_refused",
        f"node_key: node {name!r} exists; re-joining it needs its node key (cfn_…, kept by "
        "`comfyfleet node join` on its host) or an admin's token",
        field="node_key",
    )


@router.post(
    "/api/v2/nodes/{node_id}/leave",
    response_model=LeaveOut,
    tags=["nodes"],
    responses={202: {"model": LeaveOut, "description": "Draining: jobs still in flight."}},
)
async def leave_node(
    node_id: str, response: Response, gateway: GatewayDep, credentials: JoinCredentials
) -> LeaveOut:
    """Drain the node (nothing new starts there); remove it once nothing is in flight."""
    token = credentials.credentials if credentials else None
    if not token:
        raise _refused("leave needs the node key from the join (cfn_…) or an admin token")
    if token.startswith(identity.BEARER_PREFIX):
        principal = await asyncio.to_thread(
            gateway.db.run, lambda s: identity.authenticate_token(s, token=token), readonly=True
        )
        if principal is None:
            raise _refused("invalid, expired or revoked token")
        if not principal.is_admin:
            raise ApiError(403, "forbidden", f"{principal.username} is not an admin")
        actor = principal.username
        node = await gateway.fleet.get_node(node_id)
    elif not token.startswith(NODE_KEY_PREFIX):
        raise _refused("that is neither a node key (cfn_…) nor an admin's bearer token (cfb_…)")
    else:
        try:
            node = await gateway.fleet.get_node(node_id)
        except NotFound:
            raise NotFound(f"no node {node_id!r}: it is not registered (left already?)") from None
        if not node_key_matches(joined_record(node.metadata), token):
            raise _refused(f"that is not the node key of {node_id} (a later join replaced it?)")
        actor = f"node:{node_id}"
    if node.enabled:
        node = await gateway.fleet.drain(node_id)
        await asyncio.to_thread(gateway.db.run, lambda s: audit(
            s, actor=actor, action="node.leave", target=node_id))  # fmt: skip
    if node.in_flight:
        response.status_code = 202
        return LeaveOut(
            node=node_id, status="draining", in_flight=node.in_flight,
            message=f"node {node_id} draining: {node.in_flight} job(s) still in flight",
        )  # fmt: skip
    try:
        await gateway.fleet.remove_node(node_id)
    except Conflict:  # an attempt started in between: it finishes first
        response.status_code = 202
        busy = (await gateway.fleet.get_node(node_id)).in_flight
        return LeaveOut(
            node=node_id, status="draining", in_flight=busy,
            message=f"node {node_id} draining: {busy} job(s) still in flight",
        )  # fmt: skip
    return LeaveOut(node=node_id, status="removed", message=f"node {node_id} left the fleet")


# -- admin: join tokens -------------------------------------------------------------------------


@router.get("/api/v2/admin/tokens/join", response_model=list[JoinTokenInfo], tags=["admin"])
async def list_join_tokens(gateway: GatewayDep, admin: AdminUser) -> list[JoinTokenInfo]:
    """Every join token (never the token itself) and the nodes that joined with it."""

    def read(session: Session) -> list[tuple[Token, str | None]]:
        names = {u.id: u.username for u in list_users(session)}
        rows = list_tokens(session, kind="join", include_revoked=True)
        return [(t, names.get(t.user_id) if t.user_id is not None else None) for t in rows]

    tokens = await asyncio.to_thread(gateway.db.run, read, readonly=True)
    used: dict[int, list[str]] = {}
    for node in await gateway.fleet.list_nodes():
        record = joined_record(node.metadata)
        if record is not None:
            used.setdefault(record.token_id, []).append(node.id)
    now = utcnow()
    return [
        JoinTokenInfo(
            id=t.id, note=t.note, state=join_token_state(t, now=now), created_at=t.created_at,
            created_by=by, expires_at=t.expires_at, revoked_at=t.revoked_at,
            nodes=sorted(used.get(t.id, [])),
        )
        for t, by in tokens
    ]  # fmt: skip


@router.delete("/api/v2/admin/tokens/join/{token_id}", status_code=204, tags=["admin"])
def revoke_join_token(token_id: int, db: DbDep, admin: AdminUser) -> Response:
    """Revoke a join token: no new node joins with it; nodes that joined stay."""

    def run(session: Session) -> None:
        identity.revoke_join_token(
            session, token_id=token_id, actor=session.merge(admin.user, load=False)
        )

    db.run(run)
    return Response(status_code=204)
