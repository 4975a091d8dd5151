"""ComfyUI's own API under `/comfy`, so ComfyUI clients and scripts run their graphs on the fleet.

Routes (each also under `/comfy/api/…`, as ComfyUI serves every route twice):
`POST /prompt` (ComfyUI's body and answer), `GET /prompt`, `GET /history[/{prompt_id}]`,
`GET /view`, `GET /queue`, `POST /queue` (`delete`, `clear`), `POST /interrupt`,
`POST /upload/image`, `GET /object_info[/{class}]`, `GET /models[/{folder}]` and
`WS /ws?clientId=`. Every route needs the bearer token in the Authorization header (the
websocket too; `?access_token=` for clients that cannot set headers), and shows the caller only
their own prompts. Submitting needs the `raw_graphs` permission.

Prompt ids are job ids, spelled as ComfyUI spells them (a hyphenated UUID): a client-chosen
`prompt_id` becomes the job's id and sending it again returns the same job. A prompt is a raw
graph job (comfyfleet.jobs.graphs): queued, prioritised (`front: true` = priority high),
fair-shared, routed to a node that has every class type and model it names, failed over and
accounted like any job. A graph no healthy node can run is refused at once with ComfyUI's 400.

Files come from the fleet's output store: an output is named `filename` = its name in the
store, `subfolder` = the prompt id, `type` = `output`. Uploads go to the input store (the same
checks as `POST /api/v2/inputs`) and are named by their content hash.

The websocket relays the messages of the client's prompts as ComfyUI sends them (the shift
following a prompt keeps them: comfyfleet.jobs.messages), with the client's prompt id, plus the
latest preview frame as ComfyUI's binary preview message. A prompt's `executed` messages are held
until its job has stored the files they name, then come with `execution_success`, `status` and
the final `executing {node: null}`; a failed prompt ends with `execution_error`, a cancelled
one with `execution_interrupted`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, UploadFile, WebSocket
from fastapi.responses import JSONResponse, Response
from starlette.websockets import WebSocketDisconnect

from comfyfleet import jobs
from comfyfleet.api.deps import (
    CurrentUser,
    CurrentUserOrQuery,
    Gateway,
    GatewayDep,
    authenticate,
)
from comfyfleet.api.errors import ERROR_RESPONSES, ApiError
from comfyfleet.api.files import input_file, output_file
from comfyfleet.api.images import store_image
from comfyfleet.api.schemas import ComfyErrorBody
from comfyfleet.auth import Principal
from comfyfleet.catalog.raw import GRAPH_WORKFLOW, GraphError, output_node_ids
from comfyfleet.comfyui import ComfyUIClient, ComfyUIError
from comfyfleet.fleet import state as fleet_state
from comfyfleet.fleet.monitor import INVENTORY_TIMEOUT_S
from comfyfleet.jobs.graphs import client_of, job_id_of, prompt_id_of, submit_graph
from comfyfleet.jobs.messages import messages_path, read_messages
from comfyfleet.jobs.outputs import stored_name
from comfyfleet.jobs.previews import preview_path
from comfyfleet.settings import Settings
from comfyfleet.store import TERMINAL_JOB_STATUSES, get_job, list_jobs
from comfyfleet.store.models import Job

log = logging.getLogger(__name__)

PREFIXES = ("/comfy", "/comfy/api")
POLL_S = 0.25
"""How often a websocket looks at its client's prompts (job rows, message files, previews)."""
OBJECT_INFO_TTL_S = 60.0
ACTIVE = ("queued", "dispatched", "running")
HISTORY_MAX = 10_000
_JPEG, _PREVIEW_IMAGE = 1, 1

ROUTERS = [APIRouter(prefix=p, tags=["comfyui"], responses=ERROR_RESPONSES) for p in PREFIXES]
"""One router per prefix (`/comfy`, `/comfy/api`), the same routes on each."""
EMPTY_OK: dict[int | str, dict[str, Any]] = {
    200: {"description": "Done: an empty body, as ComfyUI answers.", "content": {}}
}


def _route(method: str, path: str, **kwargs: Any) -> Any:
    """Register the endpoint at `path` under every prefix."""

    def register(endpoint: Any) -> Any:
        for router in ROUTERS:
            router.add_api_route(path, endpoint, methods=[method], **kwargs)
        return endpoint

    return register


REFUSED: dict[int | str, dict[str, Any]] = {
    400: {"model": ComfyErrorBody, "description": "Refused, in ComfyUI's shape: nothing queued."}
}


def _number(job: Job) -> int:
    return int(job.created_at.timestamp() * 1000) if job.created_at else 0


def _ms(when: Any) -> int:
    return int(when.timestamp() * 1000) if when is not None else int(time.time() * 1000)


def _mine(gateway: Gateway, principal: Principal, prompt_id: str) -> Job | None:
    """The caller's raw graph job with this prompt id (None if unknown or someone else's)."""
    try:
        job_id = job_id_of(prompt_id)
    except ValueError:
        return None
    job = gateway.db.run(
        lambda s: get_job(s, job_id=job_id, owner_id=principal.user_id, with_details=True),
        readonly=True,
    )
    return job if job is not None and job.workflow == GRAPH_WORKFLOW else None


def _my_prompts(
    gateway: Gateway, principal: Principal, *, status: Iterable[str] | None = None,
    limit: int = 500, offset: int = 0, details: bool = False,
) -> list[Job]:  # fmt: skip
    return gateway.db.run(
        lambda s: list_jobs(
            s, owner_id=principal.user_id, workflow=GRAPH_WORKFLOW,
            status=list(status) if status is not None else None, limit=limit, offset=offset,
            with_details=details,
        ),
        readonly=True,
    )  # fmt: skip


def _outputs_of(settings: Settings) -> list[str]:
    inventories = fleet_state.healthy_inventories(settings).values()
    return sorted({c for inv in inventories for c in inv.output_class_types})


def _queue_item(job: Job, output_classes: list[str]) -> list[Any]:
    graph = (job.params or {}).get("graph") or {}
    extra = {**((job.params or {}).get("extra_data") or {}), "client_id": client_of(job),
             "create_time": _number(job)}  # fmt: skip
    outputs = output_node_ids(graph, output_classes)
    return [_number(job), prompt_id_of(job.id), graph, extra, outputs]


# -- prompts -----------------------------------------------------------------------------------


@_route("POST", "/prompt", responses=REFUSED)
async def post_prompt(request: Request, gateway: GatewayDep, principal: CurrentUser) -> Any:
    """Queue a graph: ComfyUI's body (`prompt`, `client_id`, `prompt_id`, `extra_data`, `front`)
    and answer (`prompt_id`, `number`, `node_errors`); 400 with ComfyUI's error otherwise."""
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "prompt" not in body:
        error = GraphError("no_prompt", "No prompt provided", details="No prompt provided")
        return JSONResponse(error.body, status_code=400)
    extra = body.get("extra_data")
    prompt_id = body.get("prompt_id")
    client_id = body.get("client_id")
    job, _ = await asyncio.to_thread(
        lambda: submit_graph(
            gateway.db, body["prompt"], principal=principal, settings=gateway.settings,
            inventories=fleet_state.healthy_inventories(gateway.settings), inputs=gateway.inputs,
            priority="high" if body.get("front") else "normal",
            prompt_id=str(prompt_id) if prompt_id is not None else None,
            client_id=str(client_id)[:200] if client_id else None,
            extra_data=extra if isinstance(extra, dict) else None,
        )
    )  # fmt: skip
    return {"prompt_id": prompt_id_of(job.id), "number": _number(job), "node_errors": {}}


@_route("GET", "/prompt")
def get_prompt(gateway: GatewayDep, principal: CurrentUser) -> Any:
    """`{"exec_info": {"queue_remaining": N}}`: the caller's prompts not ended yet."""
    return {"exec_info": {"queue_remaining": len(_my_prompts(gateway, principal, status=ACTIVE))}}


# -- history -----------------------------------------------------------------------------------


def _rewrite_files(value: Any, job: Job, attempt_id: str | None) -> Any:
    """A node's UI output with each file ref pointing at the fleet's copy (dropped if the job
    has no such file)."""
    names = {o.name for o in job.outputs if attempt_id is None or o.attempt_id == attempt_id}
    pid = prompt_id_of(job.id)

    def rewrite(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: rewrite(v) for k, v in value.items()}
        if not isinstance(value, list):
            return value
        out = []
        for item in value:
            if isinstance(item, dict) and "filename" in item:
                name = stored_name(str(item["filename"]), str(item.get("subfolder") or ""))
                if name in names:
                    out.append({**item, "filename": name, "subfolder": pid, "type": "output"})
            else:
                out.append(item)
        return out

    return rewrite(value)


def _final_attempt(job: Job) -> Any:
    done = [a for a in job.attempts if a.status == "completed"]
    attempts = done or sorted(job.attempts, key=lambda a: a.created_at or 0)
    return attempts[-1] if attempts else None


def _logged(job: Job, attempt_id: str | None) -> list[dict[str, Any]]:
    """The job's kept messages of one attempt (all of them for None)."""
    try:
        path = messages_path(job.id)
    except ValueError:
        return []
    messages, _ = read_messages(path, 0)
    return [m for m in messages if attempt_id is None or m["data"].get("prompt_id") == attempt_id]


def _as_client(message: dict[str, Any], job: Job, attempt_id: str | None) -> dict[str, Any]:
    data = dict(message.get("data") or {})
    if "prompt_id" in data:
        data["prompt_id"] = prompt_id_of(job.id)
    if message.get("type") == "executed" and "output" in data:
        data["output"] = _rewrite_files(data["output"], job, attempt_id)
    return {"type": message.get("type"), "data": data}


def _end_message(job: Job, logged: list[dict[str, Any]]) -> dict[str, Any]:
    """How the prompt ended, as ComfyUI says it: execution_success, _error or _interrupted."""
    pid = prompt_id_of(job.id)
    stamp = _ms(job.finished_at)
    if job.status == "completed":
        return {"type": "execution_success", "data": {"prompt_id": pid, "timestamp": stamp}}
    kinds = ("execution_error",) if job.status == "failed" else ("execution_interrupted",)
    for message in reversed(logged):
        if message["type"] in kinds:
            return _as_client(message, job, None)
    if job.status == "cancelled":
        data = {"prompt_id": pid, "node_id": None, "node_type": None, "executed": [],
                "timestamp": stamp}  # fmt: skip
        return {"type": "execution_interrupted", "data": data}
    data = {
        "prompt_id": pid, "node_id": None, "node_type": None, "executed": [],
        "exception_message": job.error or "failed", "exception_type": "ComfyFleetError",
        "traceback": [], "current_inputs": {}, "current_outputs": [], "timestamp": stamp,
    }  # fmt: skip
    return {"type": "execution_error", "data": data}


def history_entry(job: Job, output_classes: list[str]) -> dict[str, Any]:
    """The job as ComfyUI's /history shows a prompt."""
    attempt = _final_attempt(job)
    attempt_id = attempt.id if attempt is not None else None
    logged = _logged(job, attempt_id)
    outputs: dict[str, Any] = {}
    for message in logged:
        if message["type"] == "executed" and message["data"].get("node") is not None:
            node = str(message["data"]["node"])
            outputs[node] = _rewrite_files(message["data"].get("output") or {}, job, attempt_id)
    if not outputs:  # no messages kept (another host's shift, say): the stored files
        for output in job.outputs:
            if attempt_id is None or output.attempt_id == attempt_id:
                key = "audio" if output.content_type.startswith("audio/") else "images"
                outputs.setdefault(output.comfy_node_id or "?", {}).setdefault(key, []).append(
                    {"filename": output.name, "subfolder": prompt_id_of(job.id),
                     "type": "output"})  # fmt: skip
    pid = prompt_id_of(job.id)
    stamp = _ms(job.started_at)
    start = {"type": "execution_start", "data": {"prompt_id": pid, "timestamp": stamp}}
    end = _end_message(job, logged)
    graph = (job.params or {}).get("graph") or {}
    return {
        "prompt": _queue_item(job, output_classes),
        "outputs": outputs,
        "status": {
            "status_str": "success" if job.status == "completed" else "error",
            "completed": job.status == "completed",
            "messages": [[m["type"], m["data"]] for m in (start, end)],
        },
        "meta": {
            n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n}
            for n in outputs
            if n in graph
        },
    }


@_route("GET", "/history/{prompt_id}")
def get_history_one(prompt_id: str, gateway: GatewayDep, principal: CurrentUser) -> Any:
    """`{prompt_id: entry}` once the prompt ended; `{}` before, or for an unknown id."""
    job = _mine(gateway, principal, prompt_id)
    if job is None or job.status not in TERMINAL_JOB_STATUSES:
        return {}
    return {prompt_id_of(job.id): history_entry(job, _outputs_of(gateway.settings))}


@_route("GET", "/history")
def get_history(
    gateway: GatewayDep, principal: CurrentUser,
    max_items: Annotated[int | None, Query(ge=1, le=HISTORY_MAX)] = None,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Any:  # fmt: skip
    """The caller's ended prompts, oldest first (`max_items`: the most recent ones)."""
    ended = _my_prompts(
        gateway, principal, status=TERMINAL_JOB_STATUSES, limit=max_items or 200, offset=offset,
        details=True,
    )  # fmt: skip
    classes = _outputs_of(gateway.settings)
    return {prompt_id_of(j.id): history_entry(j, classes) for j in reversed(ended)}


# -- files -------------------------------------------------------------------------------------


@_route("GET", "/view")
def view(
    gateway: GatewayDep, principal: CurrentUserOrQuery,
    filename: Annotated[str, Query(max_length=512)],
    subfolder: Annotated[str, Query(max_length=512)] = "",
    type: Annotated[str, Query(max_length=16)] = "output",
) -> Any:  # fmt: skip
    """An output of one of the caller's prompts (`subfolder` = its prompt id), or an uploaded
    input (`type=input`)."""
    if type == "input":
        found = input_file(gateway, filename.rsplit("/", 1)[-1])
        if found is None:
            raise ApiError(404, "not_found", f"no uploaded input {filename!r}", field="filename")
        return found
    job = _mine(gateway, principal, subfolder)
    if job is not None and (found := output_file(gateway, job, filename)) is not None:
        return found
    raise ApiError(404, "not_found", f"no output {filename!r} in {subfolder!r}", field="filename")


@_route("POST", "/upload/image")
async def upload_image(
    gateway: GatewayDep, principal: CurrentUser,
    image: Annotated[UploadFile, File(description="An image (PNG, JPEG, WEBP, GIF, BMP).")],
    overwrite: Annotated[str | None, Form()] = None,
    subfolder: Annotated[str | None, Form()] = None,
    type: Annotated[str | None, Form()] = None,
) -> Any:  # fmt: skip
    """Store an input image; use the returned `name` in the graph (LoadImage's `image`)."""
    data = await image.read()
    stored = await asyncio.to_thread(store_image, gateway.inputs, data, field="image")
    return {"name": stored.name, "subfolder": "", "type": "input"}


# -- queue -------------------------------------------------------------------------------------


@_route("GET", "/queue")
def get_queue(gateway: GatewayDep, principal: CurrentUser) -> Any:
    """The caller's prompts: `queue_running` (placed on a node) and `queue_pending` (queued)."""
    active = _my_prompts(gateway, principal, status=ACTIVE)
    classes = _outputs_of(gateway.settings)
    return {
        "queue_running": [_queue_item(j, classes) for j in active if j.status != "queued"],
        "queue_pending": [_queue_item(j, classes) for j in active if j.status == "queued"],
    }


def _cancel(gateway: Gateway, principal: Principal, jobs_: Iterable[Job]) -> None:
    for job in jobs_:
        with contextlib.suppress(Exception):  # ended meanwhile: nothing to do, as ComfyUI
            jobs.cancel(gateway.db, job.id, principal=principal)


@_route("POST", "/queue", response_class=Response, responses=EMPTY_OK)
async def post_queue(request: Request, gateway: GatewayDep, principal: CurrentUser) -> Response:
    """`{"delete": [prompt ids]}` removes those of the caller's prompts not started yet;
    `{"clear": true}` all of them. Running prompts go on (POST /interrupt stops them)."""
    body = await _json(request)
    pending = await asyncio.to_thread(_my_prompts, gateway, principal, status=["queued"])
    chosen: list[Job] = []
    if body.get("clear"):
        chosen = pending
    elif isinstance(body.get("delete"), list):
        wanted = set()
        for item in body["delete"]:
            with contextlib.suppress(ValueError):
                wanted.add(job_id_of(str(item)))
        chosen = [j for j in pending if j.id in wanted]
    await asyncio.to_thread(_cancel, gateway, principal, chosen)
    return Response(status_code=200)


@_route("POST", "/interrupt", response_class=Response, responses=EMPTY_OK)
async def interrupt(request: Request, gateway: GatewayDep, principal: CurrentUser) -> Response:
    """Stop the caller's running prompt `prompt_id` (without one: every running prompt of the
    caller's, never anyone else's)."""
    body = await _json(request)
    running = await asyncio.to_thread(
        _my_prompts, gateway, principal, status=["dispatched", "running"]
    )
    if body.get("prompt_id"):
        try:
            wanted = job_id_of(str(body["prompt_id"]))
        except ValueError:
            wanted = ""
        running = [j for j in running if j.id == wanted]
    await asyncio.to_thread(_cancel, gateway, principal, running)
    return Response(status_code=200)


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


# -- what the fleet has ------------------------------------------------------------------------


@dataclass
class _ObjectInfoCache:
    at: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


_object_info = _ObjectInfoCache()


async def fleet_object_info(settings: Settings) -> dict[str, Any]:
    """The union of the healthy nodes' /object_info (each class as the first node that has it
    describes it), read at most every `OBJECT_INFO_TTL_S`."""
    async with _object_info.lock:
        if time.monotonic() - _object_info.at < OBJECT_INFO_TTL_S and _object_info.info:
            return _object_info.info
        urls = [n.url for n in fleet_state.node_states(settings) if n.healthy and n.enabled]

        async def one(url: str) -> dict[str, Any]:
            try:
                async with ComfyUIClient(url, timeout=INVENTORY_TIMEOUT_S) as client:
                    found = await client.object_info()
                return found if isinstance(found, dict) else {}
            except (ComfyUIError, ValueError) as exc:
                log.warning("object_info of %s: %s", url, exc)
                return {}

        merged: dict[str, Any] = {}
        for info in await asyncio.gather(*(one(u) for u in urls)):
            for name, value in info.items():
                merged.setdefault(name, value)
        _object_info.at, _object_info.info = time.monotonic(), merged
        return merged


@_route("GET", "/object_info")
async def object_info(gateway: GatewayDep, principal: CurrentUser) -> Any:
    """Every class type some healthy node has: the union (a graph runs on a node that has all
    of its class types, so a class only some nodes have is still usable)."""
    return await fleet_object_info(gateway.settings)


@_route("GET", "/object_info/{class_type}")
async def object_info_one(class_type: str, gateway: GatewayDep, principal: CurrentUser) -> Any:
    info = await fleet_object_info(gateway.settings)
    return {class_type: info[class_type]} if class_type in info else {}


@_route("GET", "/models")
def models(gateway: GatewayDep, principal: CurrentUser) -> Any:
    """Model folders some healthy node has."""
    inventories = fleet_state.healthy_inventories(gateway.settings).values()
    return sorted({folder for inv in inventories for folder in inv.models})


@_route("GET", "/models/{folder}")
def models_in(folder: str, gateway: GatewayDep, principal: CurrentUser) -> Any:
    """Files of the folder on some healthy node (the union)."""
    known = fleet_state.healthy_inventories(gateway.settings).values()
    inventories = [i for i in known if folder in i.models]
    if not inventories:
        raise ApiError(404, "not_found", f"no healthy node has a model folder {folder!r}")
    return sorted({f for inv in inventories for f in inv.models[folder]})


# -- websocket ---------------------------------------------------------------------------------


@dataclass
class _Followed:
    """One prompt a websocket follows."""

    job_id: str
    offset: int = 0
    attempt: str | None = None  # the attempt whose messages are being relayed
    held: list[dict[str, Any]] = field(default_factory=list)  # its `executed` messages
    ends: list[dict[str, Any]] = field(default_factory=list)  # execution_error/_interrupted
    preview_mtime: float = 0.0
    ended: bool = False


def _token(websocket: WebSocket) -> str | None:
    header = websocket.headers.get("authorization") or ""
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return websocket.query_params.get("access_token") or websocket.query_params.get("token")


def _status(sid: str | None, remaining: int) -> dict[str, Any]:
    data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": remaining}}}
    if sid is not None:
        data["sid"] = sid
    return {"type": "status", "data": data}


class _Relay:
    """The messages of one websocket client's prompts (see the module docstring)."""

    def __init__(self, gateway: Gateway, principal: Principal, sid: str) -> None:
        self.gateway, self.principal, self.sid = gateway, principal, sid
        self.followed: dict[str, _Followed] = {}
        self.since = time.time() - 10.0  # prompts that ended just before the socket opened
        self.first = True
        self.remaining = -1

    def _jobs(self) -> list[Job]:
        """The client's prompts to look at now: active ones, and the followed ones."""

        def read(session: Any) -> list[Job]:
            found = list_jobs(
                session, owner_id=self.principal.user_id, workflow=GRAPH_WORKFLOW,
                status=list(ACTIVE), limit=500,
            )  # fmt: skip
            seen = {j.id for j in found}
            for job_id, state in self.followed.items():
                if job_id not in seen and not state.ended:
                    job = get_job(session, job_id=job_id, with_details=True)
                    if job is not None:
                        found.append(job)
            if self.first:  # just connected: prompts that ended a moment ago
                self.first = False
                for job in list_jobs(
                    session, owner_id=self.principal.user_id, workflow=GRAPH_WORKFLOW,
                    status=list(TERMINAL_JOB_STATUSES), limit=20, with_details=True,
                ):  # fmt: skip
                    if job.finished_at is not None and job.finished_at.timestamp() >= self.since:
                        found.append(job)
            return found

        return self.gateway.db.run(read, readonly=True)

    def poll(self) -> list[dict[str, Any] | bytes]:
        """Everything to send now (JSON messages, or preview frames as bytes)."""
        out: list[dict[str, Any] | bytes] = []
        mine = [j for j in self._jobs() if client_of(j) == self.sid]
        remaining = sum(1 for j in mine if j.status in ACTIVE)
        for job in mine:
            state = self.followed.setdefault(job.id, _Followed(job.id))
            if state.ended:
                continue
            out.extend(self._relay(job, state))
            if job.status in TERMINAL_JOB_STATUSES:
                out.extend(self._end(job, state, remaining))
        if remaining != self.remaining and not any(
            isinstance(m, dict) and m.get("type") == "status" for m in out
        ):
            out.append(_status(None, remaining))
        self.remaining = remaining
        return out

    def _relay(self, job: Job, state: _Followed) -> list[dict[str, Any] | bytes]:
        out: list[dict[str, Any] | bytes] = []
        try:
            path = messages_path(job.id)
        except ValueError:
            return out
        messages, state.offset = read_messages(path, state.offset)
        for message in messages:
            attempt = message.get("data", {}).get("prompt_id")
            if attempt != state.attempt:  # a new attempt (failover): what it held is void
                state.attempt, state.held = attempt, []
            kind = message.get("type")
            if kind == "executed":
                state.held.append(message)
            elif kind in ("execution_error", "execution_interrupted"):
                state.ends.append(message)
            elif kind != "execution_success":
                out.append(_as_client(message, job, None))
        if job.status in ACTIVE:
            out.extend(self._preview(job, state))
        return out

    def _preview(self, job: Job, state: _Followed) -> list[bytes]:
        try:
            path = preview_path(job.id)
            mtime = path.stat().st_mtime
            if mtime == state.preview_mtime:
                return []
            data = path.read_bytes()
        except (OSError, ValueError):
            return []
        state.preview_mtime = mtime
        return [struct.pack(">II", _PREVIEW_IMAGE, _JPEG) + data]

    def _end(self, job: Job, state: _Followed, remaining: int) -> list[dict[str, Any]]:
        state.ended = True
        pid = prompt_id_of(job.id)
        final = _final_attempt(job)
        out: list[dict[str, Any]] = []
        if job.status == "completed":
            attempt_id = final.id if final is not None else None
            held = [m for m in state.held if m["data"].get("prompt_id") == attempt_id]
            out.extend(_as_client(m, job, attempt_id) for m in held)
        out.append(_end_message(job, state.ends))
        out.append(_status(None, remaining))
        out.append({"type": "executing", "data": {"node": None, "prompt_id": pid}})
        return out


async def websocket(websocket: WebSocket) -> None:
    """ComfyUI's websocket: the messages of this client's prompts (`clientId`)."""
    gateway: Gateway = websocket.app.state.gateway
    try:
        principal = await asyncio.to_thread(authenticate, gateway.db, _token(websocket))
    except ApiError as exc:
        await websocket.close(code=1008, reason=exc.message[:120])
        return
    sid = websocket.query_params.get("clientId") or uuid.uuid4().hex
    await websocket.accept()
    relay = _Relay(gateway, principal, sid[:200])
    try:
        active = await asyncio.to_thread(_my_prompts, gateway, principal, status=ACTIVE)
        relay.remaining = sum(1 for j in active if client_of(j) == relay.sid)
        await websocket.send_json(_status(relay.sid, relay.remaining))
        while True:
            for item in await asyncio.to_thread(relay.poll):
                if isinstance(item, bytes):
                    await websocket.send_bytes(item)
                else:
                    await websocket.send_json(item)
            with contextlib.suppress(TimeoutError):  # the client talks little; watch it close
                message = await asyncio.wait_for(websocket.receive(), timeout=POLL_S)
                if message["type"] == "websocket.disconnect":
                    return
    except (WebSocketDisconnect, RuntimeError):
        return


for _router in ROUTERS:
    _router.add_api_websocket_route("/ws", websocket)
