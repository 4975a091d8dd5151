"""Counters for `python -m bench.cost --count`, loaded by `site` at interpreter start.

bench.cost puts this folder on the PYTHONPATH of the fleet it starts and names a folder in
`COMFYFLEET_BENCH_PROBE_DIR`. Every Python process of that fleet that can import Prefect (the
ComfyUI node's own interpreter cannot, and is left alone) then counts, cumulatively:

- `http <METHOD> <host:port><path>`: each request sent with httpx (the Prefect client, the
  ComfyUI client, …; a request the client retries counts once per try); ids in the path
  (UUIDs, job and attempt ids) become `{id}`; `http-status <code> <METHOD> <host:port><path>`:
  each answer that is not a 2xx;
- `ws-send <path>` / `ws-recv <path>`: websocket messages (Prefect events in and out, ComfyUI);
- `sql <database> <VERB> <table>`: each statement SQLAlchemy executes (an executemany counts
  once), `tx <database>`: each commit; the database is the file name (SQLite) or its name;
- `ssl-context <caller>`: each `ssl.create_default_context()` (it loads the CA bundle, ~25 ms
  of CPU here; every new httpx client and Prefect client makes one, even for http:// URLs),
  by the innermost ComfyFleet or Prefect function that asked for it;

and writes them, with its pid and command line, to `<folder>/<pid>.json` every 0.25 s. It
changes nothing the process does; the counting costs a few microseconds per call.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import threading
import time
from typing import Any

_ID = re.compile(r"[0-9a-f]{16}|^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-")
_TABLE = re.compile(r'\b(?:FROM|INTO|UPDATE|JOIN)\s+[`"]?(\w+)', re.IGNORECASE)


def route(path: str) -> str:
    """A request path with its ids replaced by `{id}` (names such as pool names are kept)."""
    return "/".join("{id}" if _ID.search(part) else part for part in path.split("/"))


def statement(sql: str) -> str:
    """`VERB table` of a SQL statement (the first table it names)."""
    text = sql.lstrip()
    verb = text.split(None, 1)[0].upper() if text else "?"
    table = _TABLE.search(text)
    return f"{verb} {table.group(1) if table else '-'}"


class _Counts:
    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def add(self, key: str) -> None:
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1

    def dump(self) -> None:
        with self.lock:
            counts = dict(self.counts)
        doc = {"pid": os.getpid(), "argv": sys.argv, "t": time.time(), "counts": counts}
        path = os.path.join(self.folder, f"{os.getpid()}.json")
        tmp = f"{path}.part"
        with open(tmp, "w") as fh:
            json.dump(doc, fh)
        os.replace(tmp, path)

    def loop(self) -> None:
        while True:
            time.sleep(0.25)
            try:
                self.dump()
            except Exception:
                pass


def _patch_httpx(counts: _Counts) -> None:
    import httpx

    def key(request: httpx.Request) -> str:
        url = request.url
        return f"{request.method} {url.host}:{url.port}{route(url.path)}"

    def answered(request: httpx.Request, response: Any) -> Any:
        if not 200 <= response.status_code < 300:
            counts.add(f"http-status {response.status_code} {key(request)}")
        return response

    original_async, original_sync = httpx.AsyncClient.send, httpx.Client.send

    async def async_send(self: Any, request: httpx.Request, *args: Any, **kwargs: Any) -> Any:
        counts.add(f"http {key(request)}")
        return answered(request, await original_async(self, request, *args, **kwargs))

    def sync_send(self: Any, request: httpx.Request, *args: Any, **kwargs: Any) -> Any:
        counts.add(f"http {key(request)}")
        return answered(request, original_sync(self, request, *args, **kwargs))

    httpx.AsyncClient.send = async_send  # type: ignore[method-assign]
    httpx.Client.send = sync_send  # type: ignore[method-assign]


def _patch_websockets(counts: _Counts) -> None:
    from websockets.asyncio.connection import Connection

    def path(conn: Any) -> str:
        request = getattr(conn, "request", None)
        return route(getattr(request, "path", "?").split("?")[0])

    original_send, original_recv = Connection.send, Connection.recv

    async def send(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts.add(f"ws-send {path(self)}")
        return await original_send(self, *args, **kwargs)

    async def recv(self: Any, *args: Any, **kwargs: Any) -> Any:
        message = await original_recv(self, *args, **kwargs)
        counts.add(f"ws-recv {path(self)}")
        return message

    Connection.send = send  # type: ignore[method-assign]
    Connection.recv = recv  # type: ignore[method-assign]


def _patch_sqlalchemy(counts: _Counts) -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def name(conn: Any) -> str:
        url = conn.engine.url
        return os.path.basename(url.database or "") or url.drivername

    def before(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        counts.add(f"sql {name(conn)} {statement(sql)}")

    def commit(conn: Any) -> None:
        counts.add(f"tx {name(conn)}")

    event.listen(Engine, "before_cursor_execute", before)
    event.listen(Engine, "commit", commit)


_OURS = ("/comfyfleet/", "/flows/", "/gradio_app/")
_PLUMBING = ("/prefect/client/", "/prefect/_internal/", "/prefect/utilities/", "/prefect/context")


def _caller() -> str:
    """The innermost frame of ComfyFleet's code, else of Prefect outside its client plumbing."""
    frame = sys._getframe(2)
    prefect = None
    while frame is not None:
        name = frame.f_code.co_filename
        if any(part in name for part in _OURS):
            return f"{name.rsplit('/', 2)[-2]}/{os.path.basename(name)}:{frame.f_code.co_name}"
        if prefect is None and "/prefect/" in name and not any(p in name for p in _PLUMBING):
            prefect = f"prefect/{name.split('/prefect/', 1)[1]}:{frame.f_code.co_name}"
        frame = frame.f_back
    return prefect or "?"


def _patch_ssl(counts: _Counts) -> None:
    import ssl

    original = ssl.create_default_context

    def create_default_context(*args: Any, **kwargs: Any) -> Any:
        counts.add(f"ssl-context {_caller()}")
        return original(*args, **kwargs)

    ssl.create_default_context = create_default_context


def _install(folder: str) -> None:
    if importlib.util.find_spec("prefect") is None:
        return  # not a ComfyFleet process
    counts = _Counts(folder)
    for patch in (_patch_httpx, _patch_websockets, _patch_sqlalchemy, _patch_ssl):
        try:
            patch(counts)
        except Exception as exc:
            counts.add(f"probe-error {patch.__name__}: {exc!r}")
    threading.Thread(target=counts.loop, name="bench-probe", daemon=True).start()


if os.environ.get("COMFYFLEET_BENCH_PROBE_DIR"):
    _install(os.environ["COMFYFLEET_BENCH_PROBE_DIR"])
