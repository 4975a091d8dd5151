"""The async ComfyUI client: one node, one ``httpx.AsyncClient``, one websocket.

    async with ComfyUIClient("http://127.0.0.1:8188") as comfy:
        result = await comfy.run(graph, prompt_id=attempt_id, on_message=show_progress)
        for file in result.files:
            await comfy.download(file, store_dir)

Transport faults become :class:`NodeUnavailable`, a 400 from POST /prompt :class:`PromptRejected`;
see :mod:`comfyfleet.comfyui.errors`. Protocol facts: shared/reference/comfyui-protocol.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from comfyfleet.comfyui._http import (
    json_body,
    raise_if_unavailable,
    rejection,
    tls_context,
    unexpected,
    view_params,
)
from comfyfleet.comfyui.errors import ComfyUIError, NodeUnavailable, PromptLost
from comfyfleet.comfyui.follow import follow_prompt
from comfyfleet.comfyui.hub import SocketHub, Subscription, WSConnect, default_ws_connect
from comfyfleet.comfyui.messages import ExecutionStart, Message, timestamp_to_datetime
from comfyfleet.comfyui.results import (
    DownloadedFile,
    FileRef,
    HistoryEntry,
    NodeProbe,
    OnMessage,
    OutputFile,
    PromptResult,
    QueueState,
    SubmitResult,
    UploadedFile,
    collect_result,
    output_files,
)

logger = logging.getLogger(__name__)

_CHUNK = 1 << 16
HISTORY_SETTLE_TRIES = 20
HISTORY_SETTLE_S = 0.05
"""How long a late follower waits for the history entry's messages (up to 1 s, in 50 ms steps)."""


def _ws_url(base_url: str, client_id: str) -> str:
    parts = urlsplit(base_url)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/") + "/ws"
    return urlunsplit((scheme, parts.netloc, path, f"clientId={quote(client_id)}", ""))


class ComfyUIClient:
    """Async client for one ComfyUI node.

    ``client_id`` names this client's websocket session (ComfyUI sends a prompt's messages only to
    the session that submitted it); ``unavailable_after`` is how long a dropped socket may take to
    come back before :class:`NodeUnavailable`; ``no_progress_timeout`` is how long a followed
    prompt may stay silent before the node is asked where it is (default 30 s).
    ``transport`` and ``ws_connect`` are for tests (``httpx.MockTransport``, a fake socket).
    """

    def __init__(
        self,
        base_url: str,
        *,
        client_id: str | None = None,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        ws_connect: WSConnect | None = None,
        unavailable_after: float = 30.0,
        no_progress_timeout: float | None = None,
        preview_metadata: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id or uuid.uuid4().hex
        self.no_progress_timeout = no_progress_timeout
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, transport=transport, verify=tls_context()
        )
        self._hub = SocketHub(
            _ws_url(self.base_url, self.client_id),
            ws_connect or default_ws_connect,
            preview_metadata=preview_metadata,
            unavailable_after=unavailable_after,
            open_timeout=timeout,
        )
        self._listening: Subscription | None = None

    def __repr__(self) -> str:
        return f"ComfyUIClient({self.base_url!r}, client_id={self.client_id!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._hub.close()
        await self._http.aclose()

    # -- HTTP plumbing -------------------------------------------------------------------------

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise NodeUnavailable(
                f"{method} {self.base_url}{path}: {type(exc).__name__}: {exc}",
                url=self.base_url,
            ) from exc
        raise_if_unavailable(response)
        return response

    async def _get_json(self, path: str, **kwargs: Any) -> Any:
        response = await self._request("GET", path, **kwargs)
        if response.status_code != 200:
            raise unexpected(response)
        return json_body(response)

    # -- prompts -------------------------------------------------------------------------------

    async def submit(
        self,
        graph: Mapping[str, Any],
        *,
        prompt_id: str | None = None,
        front: bool = False,
        extra_data: Mapping[str, Any] | None = None,
    ) -> SubmitResult:
        """POST /prompt. The id is chosen here when not given, so it is known even if the POST
        times out. Raises :class:`PromptRejected` on a validation error."""
        prompt_id = prompt_id or str(uuid.uuid4())
        body: dict[str, Any] = {
            "prompt": dict(graph),
            "client_id": self.client_id,
            "prompt_id": prompt_id,
        }
        if front:
            body["front"] = True
        if extra_data:
            body["extra_data"] = dict(extra_data)
        response = await self._request("POST", "/prompt", json=body)
        if response.status_code == 400:
            raise rejection(response)
        if response.status_code != 200:
            raise unexpected(response)
        data = json_body(response)
        node_errors = data.get("node_errors") or {}
        if node_errors:
            logger.warning(
                "prompt %s accepted, invalid outputs dropped: %s", prompt_id, node_errors
            )
        return SubmitResult(
            prompt_id=data.get("prompt_id", prompt_id),
            number=data.get("number", 0),
            node_errors=node_errors,
        )

    @asynccontextmanager
    async def listening(self) -> AsyncIterator[None]:
        """Open the websocket subscription now: the next `wait`/`follow` inside the block sees
        every message from here on, so a prompt submitted inside it is followed from its first
        message (`execution_start`, `execution_cached`, the first `executing`)."""
        async with self._hub.subscribe() as sub:
            await sub.ready()
            self._listening = sub
            try:
                yield
            finally:
                self._listening = None

    async def follow(self, prompt_id: str) -> AsyncIterator[Message]:
        """Yield the prompt's messages (plus status and preview frames) until it ends; the last
        one is ``ExecutionSuccess``, ``ExecutionError`` or ``ExecutionInterrupted``. A prompt that
        already ended is replayed from /history. Raises :class:`PromptLost` if the node does not
        know the prompt, :class:`NodeUnavailable` if the node is gone for longer than
        ``unavailable_after``."""
        early, self._listening = self._listening, None
        async with contextlib.AsyncExitStack() as stack:
            sub = early
            if sub is None:  # (one opened by `listening` is ready, its messages queued)
                sub = await stack.enter_async_context(self._hub.subscribe())
                await sub.ready()
            async with aclosing(
                follow_prompt(
                    self,
                    sub,
                    prompt_id,
                    check_first=True,
                    no_progress_timeout=self.no_progress_timeout,
                )
            ) as messages:
                async for message in messages:
                    yield message

    async def wait(self, prompt_id: str, *, on_message: OnMessage | None = None) -> PromptResult:
        """Follow the prompt to its end: its result, or :class:`ExecutionFailed` /
        :class:`Interrupted` / :class:`PromptLost` / :class:`NodeUnavailable`."""
        async with aclosing(self.follow(prompt_id)) as messages:
            result = await collect_result(prompt_id, messages, on_message)
        return await self._with_start_time(result)

    async def _with_start_time(self, result: PromptResult) -> PromptResult:
        """A follower that connected after `execution_start` (usual on an idle node: the prompt
        starts before the follower's socket is up) takes the start from the history, so the
        execution time (GPU-seconds) is known however late it joined. ComfyUI writes the history
        entry's messages just after it sends `execution_success`: ask again briefly until then."""
        if result.started_at is not None:
            return result
        for _ in range(HISTORY_SETTLE_TRIES):
            entry = await self.history(result.prompt_id)
            for message in entry.messages if entry is not None else []:
                if isinstance(message, ExecutionStart) and message.timestamp:
                    return result.model_copy(
                        update={"started_at": timestamp_to_datetime(message.timestamp)}
                    )
            await asyncio.sleep(HISTORY_SETTLE_S)
        return result

    async def run(
        self,
        graph: Mapping[str, Any],
        *,
        prompt_id: str | None = None,
        on_message: OnMessage | None = None,
        front: bool = False,
        extra_data: Mapping[str, Any] | None = None,
    ) -> PromptResult:
        """Submit and wait, with the socket open before the submit so nothing is missed."""
        async with self._hub.subscribe() as sub:
            await sub.ready()
            submitted = await self.submit(
                graph, prompt_id=prompt_id, front=front, extra_data=extra_data
            )
            messages = follow_prompt(
                self,
                sub,
                submitted.prompt_id,
                check_first=False,
                no_progress_timeout=self.no_progress_timeout,
            )
            async with aclosing(messages):
                return await collect_result(submitted.prompt_id, messages, on_message)

    async def history(self, prompt_id: str) -> HistoryEntry | None:
        """GET /history/{id}: the entry of an ended prompt, None while queued/running or unknown."""
        data = await self._get_json(f"/history/{quote(prompt_id, safe='')}")
        entry = data.get(prompt_id) if isinstance(data, dict) else None
        return HistoryEntry.from_json(prompt_id, entry) if isinstance(entry, dict) else None

    async def queue(self) -> QueueState:
        """GET /queue: running ids, and pending ids in the order they will run."""
        data = await self._get_json("/queue")
        running = [item[1] for item in data.get("queue_running") or []]
        pending = sorted(data.get("queue_pending") or [], key=lambda item: item[0])
        return QueueState(running=running, pending=[item[1] for item in pending])

    async def interrupt(self, prompt_id: str | None = None) -> None:
        """POST /interrupt: stop ``prompt_id`` if it is the running one (all running work if None).
        Pending prompts are not touched: see :meth:`delete_pending`."""
        body = {"prompt_id": prompt_id} if prompt_id else {}
        response = await self._request("POST", "/interrupt", json=body)
        if response.status_code != 200:
            raise unexpected(response)

    async def delete_pending(self, prompt_ids: Iterable[str]) -> None:
        """POST /queue {delete}: drop pending prompts (running ones and unknown ids are ignored)."""
        ids = list(prompt_ids)
        if not ids:
            return
        response = await self._request("POST", "/queue", json={"delete": ids})
        if response.status_code != 200:
            raise unexpected(response)

    async def outputs(self, prompt_id: str) -> list[OutputFile]:
        """The files an ended prompt produced, from its history entry."""
        entry = await self.history(prompt_id)
        if entry is None:
            if prompt_id in await self.queue():
                raise ComfyUIError(f"prompt {prompt_id} has not finished yet")
            raise PromptLost(prompt_id, "no history entry")
        return output_files(entry.outputs)

    # -- node information ----------------------------------------------------------------------

    async def system_stats(self) -> dict[str, Any]:
        """GET /system_stats (versions, RAM, devices); cheap, a good health probe."""
        return await self._get_json("/system_stats")

    async def probe(self, *, queue: bool = True) -> NodeProbe:
        """The health probe: GET /system_stats and (with ``queue``) GET /queue. Raises
        :class:`NodeUnavailable` when the node does not answer, :class:`ComfyUIError` when it
        answers something else (``status_code`` says which HTTP status)."""
        stats = await self.system_stats()
        if not queue:
            return NodeProbe(system_stats=stats)
        state = await self.queue()
        return NodeProbe(
            system_stats=stats,
            queue_depth=len(state.running) + len(state.pending),
            prompt_ids=[*state.running, *state.pending],
        )

    async def object_info(self, class_type: str | None = None) -> dict[str, Any]:
        """GET /object_info[/{class}]: ``{class_type: info}``; ``{}`` for an unknown class."""
        if class_type is None:
            return await self._get_json("/object_info")
        return await self._get_json(f"/object_info/{quote(class_type, safe='')}")

    async def models(self, folder: str | None = None) -> list[str]:
        """GET /models (folder names) or /models/{folder} (file names in it)."""
        if folder is None:
            return await self._get_json("/models")
        response = await self._request("GET", f"/models/{quote(folder, safe='')}")
        if response.status_code == 404:
            raise ComfyUIError(f"{self.base_url} has no model folder {folder!r}")
        if response.status_code != 200:
            raise unexpected(response)
        return json_body(response)

    # -- files ---------------------------------------------------------------------------------

    async def upload_image(
        self,
        path_or_bytes: str | os.PathLike[str] | bytes,
        *,
        name: str | None = None,
        subfolder: str = "",
        overwrite: bool = False,
        type: str = "input",
    ) -> UploadedFile:
        """POST /upload/image. ``name`` defaults to the file's name (required for bytes). The
        answer's name may differ (``x (1).png``) when another file already has it."""
        if isinstance(path_or_bytes, bytes):
            if not name:
                raise ValueError("name is required when uploading bytes")
            content = path_or_bytes
        else:
            path = Path(path_or_bytes)
            name = name or path.name
            content = await asyncio.to_thread(path.read_bytes)
        response = await self._request(
            "POST",
            "/upload/image",
            files={"image": (name, content, "application/octet-stream")},
            data={
                "type": type,
                "subfolder": subfolder,
                "overwrite": "true" if overwrite else "false",
            },
        )
        if response.status_code != 200:
            raise unexpected(response)
        data = json_body(response)
        return UploadedFile(
            name=data["name"], subfolder=data.get("subfolder") or "", type=data.get("type") or type
        )

    async def has_input(self, name: str, *, subfolder: str = "") -> bool:
        """Does the node's input folder hold this file? (HEAD /view?type=input: 200 or 404)."""
        params = {"filename": name, "subfolder": subfolder, "type": "input"}
        response = await self._request("HEAD", "/view", params=params)
        if response.status_code == 405:  # a proxy that does not pass HEAD: GET, headers only
            async with self._http.stream("GET", "/view", params=params) as streamed:
                raise_if_unavailable(streamed)
                response = streamed
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise unexpected(response)

    async def download(self, file_ref: FileRef, dest: str | os.PathLike[str]) -> DownloadedFile:
        """Stream a file from /view to ``dest`` (a file path, or an existing directory to put
        it in under its own name): written to a temp file beside it, then renamed."""
        params = view_params(file_ref)
        dest = Path(dest)
        if await asyncio.to_thread(dest.is_dir):
            dest = dest / Path(params["filename"]).name
        await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = await asyncio.to_thread(
            tempfile.mkstemp, dir=dest.parent, prefix=f".{dest.name}.", suffix=".part"
        )
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                try:
                    async with self._http.stream("GET", "/view", params=params) as response:
                        raise_if_unavailable(response)
                        if response.status_code == 404:
                            raise ComfyUIError(f"{self.base_url} has no file {params}")
                        if response.status_code != 200:
                            await response.aread()
                            raise unexpected(response)
                        content_type = response.headers.get("content-type")
                        async for chunk in response.aiter_bytes(_CHUNK):
                            digest.update(chunk)
                            size += len(chunk)
                            await asyncio.to_thread(fh.write, chunk)
                except httpx.TransportError as exc:
                    raise NodeUnavailable(
                        f"GET {self.base_url}/view {params}: {type(exc).__name__}: {exc}",
                        url=self.base_url,
                    ) from exc
            await asyncio.to_thread(os.chmod, tmp, 0o644)
            await asyncio.to_thread(os.replace, tmp, dest)
        except BaseException:
            await asyncio.to_thread(tmp.unlink, missing_ok=True)
            raise
        return DownloadedFile(
            path=dest, sha256=digest.hexdigest(), size=size, content_type=content_type
        )


__all__ = ["ComfyUIClient"]


def probe_node(
    url: str, *, timeout: float = 5.0, queue: bool = True,
    transport: httpx.AsyncBaseTransport | None = None,
) -> NodeProbe:  # fmt: skip
    """:meth:`ComfyUIClient.probe` for synchronous callers: runs it in an event loop of its own
    (in a helper thread when the caller's thread runs one already)."""

    async def probe() -> NodeProbe:
        async with ComfyUIClient(url, timeout=timeout, transport=transport) as client:
            return await client.probe(queue=queue)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(probe())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="comfyui-probe") as pool:
        return pool.submit(lambda: asyncio.run(probe())).result()
