"""The HTTP routes and the websocket of simulated nodes: one Starlette app for the whole fleet,
which tells nodes apart by the local port a request came in on.

Answers have ComfyUI 0.3.75's status codes and bodies: JSON as `application/json;
charset=utf-8`, routes that only act answer 200 with an empty body, a missing file or model
folder 404 with an empty body. Every route is also served under `/api`, as ComfyUI does.
"""

from __future__ import annotations

import json
import mimetypes
import os
import posixpath
import sys
from collections.abc import Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from bench.simnode.catalog import MODEL_FOLDERS
from bench.simnode.files import FOLDER_TYPES, OutsideFolder, annotated, normal_subfolder
from bench.simnode.node import FEATURES, SimNode

COMFYUI_VERSION = "0.3.75"
_FORCED_DOWNLOAD = {
    "text/html",
    "text/html-sandboxed",
    "application/xhtml+xml",
    "text/javascript",
    "text/css",
}


class JSONAnswer(Response):
    """JSON as aiohttp's `json_response` writes it."""

    media_type = "application/json; charset=utf-8"

    def render(self, content: Any) -> bytes:
        return json.dumps(content).encode()


def _empty(status_code: int = 200) -> Response:
    return Response(status_code=status_code)


def _node(connection: HTTPConnection) -> SimNode:
    nodes: Mapping[int, SimNode] = connection.app.state.nodes
    return nodes[connection.scope["server"][1]]


async def _json_body(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        return {}


async def websocket(socket: WebSocket) -> None:
    """`/ws?clientId=`: greet with `status` (+ `sid`), answer a first `feature_flags` message,
    then only listen; the node sends through its outbox."""
    node = _node(socket)
    await socket.accept()
    sid, session = await node.open_session(socket, socket.query_params.get("clientId", ""))
    first = True
    try:
        while True:
            message = await socket.receive()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            if text is None:
                continue
            try:
                data = json.loads(text)
            except ValueError:
                continue
            if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                session.feature_flags = dict(data.get("data") or {})
                await session.send(json.dumps({"type": "feature_flags", "data": FEATURES}))
            first = False
    finally:
        node.close_session(sid)


async def get_prompt(request: Request) -> Response:
    return JSONAnswer(_node(request).exec_info())


async def post_prompt(request: Request) -> Response:
    status, answer = _node(request).submit(await request.json())
    return JSONAnswer(answer, status_code=status)


async def get_queue(request: Request) -> Response:
    return JSONAnswer(_node(request).queue_view())


async def post_queue(request: Request) -> Response:
    node, body = _node(request), await request.json()
    if body.get("clear"):
        node.clear_pending()
    if "delete" in body:
        node.delete_pending(body["delete"])
    return _empty()


async def post_interrupt(request: Request) -> Response:
    body = await _json_body(request)
    _node(request).interrupt(body.get("prompt_id") if isinstance(body, dict) else None)
    return _empty()


async def get_history(request: Request) -> Response:
    query = request.query_params
    max_items = int(query["max_items"]) if "max_items" in query else None
    offset = int(query["offset"]) if "offset" in query else -1
    return JSONAnswer(_node(request).history_view(max_items=max_items, offset=offset))


async def get_history_entry(request: Request) -> Response:
    return JSONAnswer(_node(request).history_view(request.path_params["prompt_id"]))


async def post_history(request: Request) -> Response:
    _node(request).edit_history(await request.json())
    return _empty()


async def view(request: Request) -> Response:
    """`/view?filename=&subfolder=&type=`: the file, 400 for a bad name or type, 403 for a
    subfolder outside its folder, 404 when there is no such file."""
    query = request.query_params
    if "filename" not in query:
        return _empty(404)
    filename, folder_type = annotated(query["filename"])
    if not filename or filename[0] == "/" or ".." in filename:
        return _empty(400)
    folder_type = folder_type or query.get("type", "output")
    if folder_type not in FOLDER_TYPES:
        return _empty(400)
    try:
        subfolder = normal_subfolder(query.get("subfolder", ""))
    except OutsideFolder:
        return _empty(403)
    filename = posixpath.basename(filename)
    content = _node(request).files.get(folder_type, subfolder, filename)
    if content is None:
        return _empty(404)
    content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    if content_type in _FORCED_DOWNLOAD:
        content_type = "application/octet-stream"
    headers = {"Content-Disposition": f'filename="{filename}"'}
    return Response(content, media_type=content_type, headers=headers)


async def upload_image(request: Request) -> Response:
    """Multipart `image` (+ `type`, `subfolder`, `overwrite`) → `{name, subfolder, type}`."""
    form = await request.form()
    image = form.get("image")
    folder_type = form.get("type") or "input"
    if not isinstance(image, UploadFile) or not image.filename or folder_type not in FOLDER_TYPES:
        return _empty(400)
    subfolder = str(form.get("subfolder", ""))
    overwrite = form.get("overwrite") in ("true", "1")
    content = await image.read()
    try:
        name = _node(request).files.upload(
            image.filename,
            content,
            folder_type=str(folder_type),
            subfolder=subfolder,
            overwrite=overwrite,
        )
    except OutsideFolder:
        return _empty(400)
    return JSONAnswer({"name": name, "subfolder": subfolder, "type": folder_type})


async def object_info(request: Request) -> Response:
    return JSONAnswer(_node(request).catalog.all())


async def object_info_class(request: Request) -> Response:
    class_type = request.path_params["node_class"]
    info = _node(request).catalog.get(class_type)
    return JSONAnswer({} if info is None else {class_type: info})


async def models(request: Request) -> Response:
    return JSONAnswer(list(MODEL_FOLDERS))


async def model_files(request: Request) -> Response:
    folder = request.path_params["folder"]
    if folder not in MODEL_FOLDERS:
        return _empty(404)
    return JSONAnswer(list(_node(request).config.models.get(folder, ())))


async def embeddings(request: Request) -> Response:
    files = _node(request).config.models.get("embeddings", ())
    return JSONAnswer([os.path.splitext(name)[0] for name in files])


def _memory() -> tuple[int, int]:
    page = os.sysconf("SC_PAGE_SIZE")
    return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")


async def system_stats(request: Request) -> Response:
    total, free = _memory()
    port = request.scope["server"][1]
    return JSONAnswer(
        {
            "system": {
                "os": os.name,
                "ram_total": total,
                "ram_free": free,
                "comfyui_version": COMFYUI_VERSION,
                "required_frontend_version": "1.32.9",
                "installed_templates_version": None,
                "required_templates_version": "0.7.25",
                "python_version": sys.version,
                "pytorch_version": "none (simulated node)",
                "embedded_python": False,
                "argv": ["bench.simnode", "--port", str(port)],
            },
            "devices": [
                {
                    "name": "cpu",
                    "type": "cpu",
                    "index": None,
                    "vram_total": total,
                    "vram_free": free,
                    "torch_vram_total": total,
                    "torch_vram_free": free,
                }
            ],
        }
    )


async def features(request: Request) -> Response:
    return JSONAnswer(FEATURES)


async def acknowledge(request: Request) -> Response:
    return _empty()


async def no_extensions(request: Request) -> Response:
    return JSONAnswer([])


def _routes() -> list[BaseRoute]:
    plain: list[tuple[str, Any, list[str]]] = [
        ("/prompt", get_prompt, ["GET"]),
        ("/prompt", post_prompt, ["POST"]),
        ("/queue", get_queue, ["GET"]),
        ("/queue", post_queue, ["POST"]),
        ("/interrupt", post_interrupt, ["POST"]),
        ("/history", get_history, ["GET"]),
        ("/history", post_history, ["POST"]),
        ("/history/{prompt_id}", get_history_entry, ["GET"]),
        ("/view", view, ["GET"]),
        ("/upload/image", upload_image, ["POST"]),
        ("/object_info", object_info, ["GET"]),
        ("/object_info/{node_class}", object_info_class, ["GET"]),
        ("/models", models, ["GET"]),
        ("/models/{folder}", model_files, ["GET"]),
        ("/embeddings", embeddings, ["GET"]),
        ("/extensions", no_extensions, ["GET"]),
        ("/system_stats", system_stats, ["GET"]),
        ("/features", features, ["GET"]),
        ("/free", acknowledge, ["POST"]),
    ]
    routes: list[BaseRoute] = []
    for prefix in ("", "/api"):
        routes.append(WebSocketRoute(f"{prefix}/ws", websocket))
        routes.extend(
            Route(prefix + path, endpoint, methods=methods) for path, endpoint, methods in plain
        )
    return routes


def build_app(nodes: Mapping[int, SimNode]) -> Starlette:
    """The ASGI app for the nodes listening on these ports."""
    app = Starlette(routes=_routes())
    app.state.nodes = nodes
    return app


__all__ = ["COMFYUI_VERSION", "JSONAnswer", "build_app"]
