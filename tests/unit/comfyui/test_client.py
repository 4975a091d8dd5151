"""ComfyUIClient against httpx.MockTransport and recorded websocket sequences (nothing running)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosedError

from comfyfleet.comfyui import (
    ComfyUIClient,
    ComfyUIError,
    Executed,
    ExecutionFailed,
    ExecutionSuccess,
    Interrupted,
    Message,
    NodeUnavailable,
    OutputFile,
    PreviewFrame,
    Progress,
    PromptLost,
    PromptRejected,
    Status,
    UnknownBinary,
    UnknownMessage,
    UploadedFile,
    is_node_fault,
    is_transient,
    probe_node,
    retry_if_transient,
    tls_context,
)
from tests.unit.comfyui import ws_recordings as rec

BASE = "http://gpu-1.test:8188"

# -- fakes ----------------------------------------------------------------------------------------

DROP = object()
"""In a socket script: the server goes away (the socket closes abnormally)."""


class FakeSocket:
    """Plays a script of frames; an ``asyncio.Event`` in the script holds playback until set."""

    def __init__(self, script: list[Any]) -> None:
        self.script = [json.dumps(item) if isinstance(item, dict) else item for item in script]
        self.sent: list[str] = []
        self.closed = asyncio.Event()

    async def send(self, message: str) -> None:
        if self.closed.is_set():
            raise ConnectionClosedError(None, None)
        self.sent.append(message)

    async def recv(self) -> str | bytes:
        while True:
            if self.closed.is_set():
                raise ConnectionClosedError(None, None)
            if not self.script:
                await self.closed.wait()  # stays open and silent
                continue
            item = self.script[0]
            if isinstance(item, asyncio.Event):
                await item.wait()
                self.script.pop(0)
                continue
            self.script.pop(0)
            if item is DROP:
                self.closed.set()
                raise ConnectionClosedError(None, None)
            return item

    async def close(self) -> None:
        self.closed.set()


class FakeConnector:
    """The injectable ``ws_connect``: each call opens the next scripted socket (or raises)."""

    def __init__(self, *scripts: list[Any] | BaseException) -> None:
        self.scripts = list(scripts)
        self.urls: list[str] = []
        self.sockets: list[FakeSocket] = []

    async def __call__(self, url: str) -> FakeSocket:
        self.urls.append(url)
        if not self.scripts:
            raise ConnectionRefusedError(111, "Connection refused")
        script = self.scripts.pop(0)
        if isinstance(script, BaseException):
            raise script
        socket = FakeSocket(script)
        self.sockets.append(socket)
        return socket


class FakeNode:
    """An httpx MockTransport handler with ComfyUI's routes; tests tweak its state."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.submitted = asyncio.Event()
        self.history: dict[str, Any] = {}
        self.queue: dict[str, Any] = {"queue_running": [], "queue_pending": []}
        self.submit_answer: tuple[int, Any] = (200, rec.SUBMIT_OK)
        self.routes: dict[tuple[str, str], Callable[[httpx.Request], httpx.Response]] = {}

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        key = (request.method, request.url.path)
        if key in self.routes:
            return self.routes[key](request)
        if key == ("POST", "/prompt"):
            status, body = self.submit_answer
            if status == 200:
                self.submitted.set()
                self.queue["queue_pending"].append(rec.queue_item(20, body["prompt_id"]))
            return httpx.Response(status, json=body)
        if request.method == "GET" and request.url.path.startswith("/history/"):
            prompt_id = request.url.path.removeprefix("/history/")
            found = {prompt_id: self.history[prompt_id]} if prompt_id in self.history else {}
            return httpx.Response(200, json=found)
        if key == ("GET", "/queue"):
            return httpx.Response(200, json=self.queue)
        return httpx.Response(404, text="404: Not Found")

    def sent(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path == path]


def make_client(
    node: FakeNode, connector: FakeConnector | None = None, **kwargs: Any
) -> ComfyUIClient:
    kwargs.setdefault("client_id", rec.CLIENT_ID)
    return ComfyUIClient(
        BASE,
        transport=node.transport(),
        ws_connect=connector or FakeConnector(),
        **kwargs,
    )


def script_after_submit(node: FakeNode, frames: list[Any]) -> list[Any]:
    """Greeting, then (once POST /prompt answered) the prompt's frames."""
    return [rec.greeting(), rec.SERVER_FEATURE_FLAGS, node.submitted, *frames]


def raises(exc: Exception) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


# -- submit ---------------------------------------------------------------------------------------


async def test_submit_posts_graph_with_client_id_and_returns_prompt_id_and_number() -> None:
    node = FakeNode()
    async with make_client(node) as comfy:
        result = await comfy.submit(
            rec.GRAPH, prompt_id=rec.PROMPT_ID, front=True, extra_data={"job": "j-1"}
        )
    assert (result.prompt_id, result.number) == (rec.PROMPT_ID, 20)
    body = json.loads(node.sent("POST", "/prompt")[0].content)
    assert body == {
        "prompt": rec.GRAPH,
        "client_id": rec.CLIENT_ID,
        "prompt_id": rec.PROMPT_ID,
        "front": True,
        "extra_data": {"job": "j-1"},
    }


async def test_submit_chooses_a_prompt_id_when_none_is_given() -> None:
    node = FakeNode()

    def echo(request: httpx.Request) -> httpx.Response:
        prompt_id = json.loads(request.content)["prompt_id"]
        return httpx.Response(200, json={"prompt_id": prompt_id, "number": 1, "node_errors": {}})

    node.routes[("POST", "/prompt")] = echo
    async with make_client(node) as comfy:
        result = await comfy.submit(rec.GRAPH)
    assert len(result.prompt_id) == 36
    assert "front" not in json.loads(node.requests[0].content)


async def test_submit_value_below_min_raises_prompt_rejected_naming_node_and_input() -> None:
    node = FakeNode()
    node.submit_answer = (400, rec.REJECT_BAD_VALUE)
    async with make_client(node) as comfy:
        with pytest.raises(PromptRejected) as caught:
            await comfy.submit(rec.GRAPH)
    exc = caught.value
    assert exc.node_errors["1"]["class_type"] == "TestDelay"
    assert exc.error_type == "prompt_outputs_failed_validation"
    assert "node 1 (TestDelay) input 'seconds': Value -5.0 smaller than min of 0.0" in str(exc)
    assert not is_transient(exc)


async def test_submit_missing_checkpoint_raises_prompt_rejected_with_the_bad_value() -> None:
    node = FakeNode()
    node.submit_answer = (400, rec.REJECT_MISSING_CHECKPOINT)
    async with make_client(node) as comfy:
        with pytest.raises(PromptRejected) as caught:
            await comfy.submit(rec.GRAPH)
    text = str(caught.value)
    assert "node 1 (CheckpointLoaderSimple) input 'ckpt_name': Value not in list" in text
    assert "'missing.safetensors'" in text
    [problem] = caught.value.problems
    assert (problem.input_name, problem.type) == ("ckpt_name", "value_not_in_list")


async def test_submit_unknown_class_type_raises_prompt_rejected_from_top_level_error() -> None:
    node = FakeNode()
    node.submit_answer = (400, rec.REJECT_UNKNOWN_CLASS)
    async with make_client(node) as comfy:
        with pytest.raises(PromptRejected) as caught:
            await comfy.submit(rec.GRAPH)
    assert caught.value.node_errors == {}
    assert caught.value.error_type == "invalid_prompt"
    assert "node NoSuchNode does not exist" in str(caught.value)
    assert "Node ID '#1'" in str(caught.value)


async def test_submit_graph_without_outputs_raises_prompt_rejected() -> None:
    node = FakeNode()
    node.submit_answer = (400, rec.REJECT_NO_OUTPUTS)
    async with make_client(node) as comfy:
        with pytest.raises(PromptRejected) as caught:
            await comfy.submit(rec.GRAPH)
    assert caught.value.error_type == "prompt_no_outputs"
    assert "Prompt has no outputs" in str(caught.value)


async def test_submit_connect_error_raises_node_unavailable_from_the_cause() -> None:
    node = FakeNode()
    node.routes[("POST", "/prompt")] = raises(httpx.ConnectError("Connection refused"))
    async with make_client(node) as comfy:
        with pytest.raises(NodeUnavailable) as caught:
            await comfy.submit(rec.GRAPH)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert is_transient(caught.value) and is_node_fault(caught.value)


async def test_submit_timeout_raises_node_unavailable() -> None:
    node = FakeNode()
    node.routes[("POST", "/prompt")] = raises(httpx.ReadTimeout("timed out"))
    async with make_client(node) as comfy:
        with pytest.raises(NodeUnavailable):
            await comfy.submit(rec.GRAPH)


async def test_server_error_raises_node_unavailable_with_status_code() -> None:
    node = FakeNode()
    node.submit_answer = (500, {"error": "boom"})
    async with make_client(node) as comfy:
        with pytest.raises(NodeUnavailable) as caught:
            await comfy.submit(rec.GRAPH)
    assert caught.value.status_code == 500


# -- other HTTP methods ---------------------------------------------------------------------------


async def test_history_returns_the_entry_or_none_for_an_unknown_prompt() -> None:
    node = FakeNode()
    node.history = rec.history_entry()
    async with make_client(node) as comfy:
        entry = await comfy.history(rec.PROMPT_ID)
        unknown = await comfy.history("nope")
    assert entry is not None and entry.succeeded
    assert entry.outputs["2"] == rec.SAVE_IMAGE_OUTPUT
    assert unknown is None


async def test_queue_lists_running_and_pending_sorted_by_number() -> None:
    node = FakeNode()
    node.queue = rec.QUEUE
    async with make_client(node) as comfy:
        queue = await comfy.queue()
    assert queue.running == ["67f6"]
    assert queue.pending == ["5f01", "e027", "b84e"]
    assert "e027" in queue and "zzz" not in queue
    assert queue.position("67f6") == 0 and queue.position("b84e") == 3


async def test_interrupt_targets_a_prompt_or_everything() -> None:
    node = FakeNode()
    node.routes[("POST", "/interrupt")] = lambda request: httpx.Response(200)
    async with make_client(node) as comfy:
        await comfy.interrupt(rec.PROMPT_ID)
        await comfy.interrupt()
    bodies = [json.loads(r.content) for r in node.sent("POST", "/interrupt")]
    assert bodies == [{"prompt_id": rec.PROMPT_ID}, {}]


async def test_delete_pending_posts_the_ids_and_skips_an_empty_list() -> None:
    node = FakeNode()
    node.routes[("POST", "/queue")] = lambda request: httpx.Response(200)
    async with make_client(node) as comfy:
        await comfy.delete_pending(["a", "b"])
        await comfy.delete_pending([])
    [request] = node.sent("POST", "/queue")
    assert json.loads(request.content) == {"delete": ["a", "b"]}


async def test_node_information_methods_return_the_json() -> None:
    node = FakeNode()
    node.routes[("GET", "/system_stats")] = lambda r: httpx.Response(200, json=rec.SYSTEM_STATS)
    node.routes[("GET", "/object_info/TestDelay")] = lambda r: httpx.Response(
        200, json=rec.OBJECT_INFO_TEST_DELAY
    )
    node.routes[("GET", "/object_info/Image Resize")] = lambda r: httpx.Response(200, json={})
    node.routes[("GET", "/object_info")] = lambda r: httpx.Response(
        200, json=rec.OBJECT_INFO_TEST_DELAY
    )
    node.routes[("GET", "/models")] = lambda r: httpx.Response(200, json=rec.MODEL_FOLDERS)
    node.routes[("GET", "/models/checkpoints")] = lambda r: httpx.Response(
        200, json=rec.CHECKPOINTS
    )
    async with make_client(node) as comfy:
        stats = await comfy.system_stats()
        info = await comfy.object_info("TestDelay")
        everything = await comfy.object_info()
        unknown = await comfy.object_info("Image Resize")
        folders = await comfy.models()
        checkpoints = await comfy.models("checkpoints")
        with pytest.raises(ComfyUIError, match="no model folder 'nope'"):
            await comfy.models("nope")
    assert stats["system"]["comfyui_version"] == "0.3.75"
    assert info["TestDelay"]["output_node"] is True
    assert everything == info
    assert unknown == {}
    assert folders == rec.MODEL_FOLDERS
    assert checkpoints == rec.CHECKPOINTS


async def test_non_json_answer_raises_comfyui_error() -> None:
    node = FakeNode()
    node.routes[("GET", "/system_stats")] = lambda r: httpx.Response(200, text="<html>proxy</html>")
    async with make_client(node) as comfy:
        with pytest.raises(ComfyUIError, match="not JSON"):
            await comfy.system_stats()


async def test_probe_reads_system_stats_and_the_queue_depth() -> None:
    node = FakeNode()
    node.routes[("GET", "/system_stats")] = lambda r: httpx.Response(200, json=rec.SYSTEM_STATS)
    node.queue = rec.QUEUE
    async with make_client(node) as comfy:
        probe = await comfy.probe()
        stats_only = await comfy.probe(queue=False)
    assert probe.version == "0.3.75" and probe.system_stats == rec.SYSTEM_STATS
    assert probe.queue_depth == 4  # one running, three pending
    assert stats_only.queue_depth is None and len(node.sent("GET", "/queue")) == 1


async def test_probe_says_which_http_status_a_node_answered() -> None:
    node = FakeNode()  # no /system_stats route: 404
    async with make_client(node) as comfy:
        with pytest.raises(ComfyUIError) as info:
            await comfy.probe()
    assert info.value.status_code == 404 and not isinstance(info.value, NodeUnavailable)


def test_probe_node_is_the_probe_for_synchronous_callers() -> None:
    node = FakeNode()
    node.routes[("GET", "/system_stats")] = lambda r: httpx.Response(200, json=rec.SYSTEM_STATS)
    assert probe_node(BASE, transport=node.transport()).queue_depth == 0
    down = httpx.MockTransport(raises(httpx.ConnectError("refused")))
    with pytest.raises(NodeUnavailable):
        probe_node(BASE, transport=down)


async def test_probe_node_works_inside_a_running_event_loop() -> None:
    node = FakeNode()
    node.routes[("GET", "/system_stats")] = lambda r: httpx.Response(200, json=rec.SYSTEM_STATS)
    assert probe_node(BASE, transport=node.transport(), queue=False).version == "0.3.75"


async def test_upload_image_sends_multipart_fields_and_returns_the_stored_name(
    tmp_path: Path,
) -> None:
    node = FakeNode()
    node.routes[("POST", "/upload/image")] = lambda r: httpx.Response(
        200, json={"name": "probe (1).png", "subfolder": "jobs", "type": "input"}
    )
    source = tmp_path / "probe.png"
    source.write_bytes(rec.PNG_BYTES)
    async with make_client(node) as comfy:
        uploaded = await comfy.upload_image(source, subfolder="jobs", overwrite=True)
        with pytest.raises(ValueError):
            await comfy.upload_image(b"raw")
    assert uploaded == UploadedFile(name="probe (1).png", subfolder="jobs", type="input")
    assert uploaded.ref == "jobs/probe (1).png"
    body = node.sent("POST", "/upload/image")[0].content
    assert b'name="image"; filename="probe.png"' in body
    assert rec.PNG_BYTES in body
    assert b'name="overwrite"\r\n\r\ntrue' in body
    assert b'name="subfolder"\r\n\r\njobs' in body
    assert b'name="type"\r\n\r\ninput' in body


async def test_has_input_asks_view_for_an_input_file() -> None:
    node = FakeNode()

    def view(request: httpx.Request) -> httpx.Response:
        found = request.url.params["filename"] == "there.png"
        return httpx.Response(200 if found else 404)

    node.routes[("HEAD", "/view")] = view
    async with make_client(node) as comfy:
        assert await comfy.has_input("there.png", subfolder="jobs") is True
        assert await comfy.has_input("missing.png") is False
    first = node.sent("HEAD", "/view")[0]
    assert dict(first.url.params) == {"filename": "there.png", "subfolder": "jobs", "type": "input"}


async def test_download_streams_to_the_destination_with_sha256(tmp_path: Path) -> None:
    node = FakeNode()
    payload = b"\x89PNG" + bytes(range(256)) * 1000
    node.routes[("GET", "/view")] = lambda r: httpx.Response(
        200, content=payload, headers={"content-type": "image/png"}
    )
    ref = OutputFile(node_id="9", filename="a_00001_.png", subfolder="s", type="output")
    async with make_client(node) as comfy:
        into_dir = await comfy.download(ref, tmp_path)
        as_file = await comfy.download(
            {"filename": "a_00001_.png", "type": "temp"}, tmp_path / "x" / "b.png"
        )
    assert into_dir.path == tmp_path / "a_00001_.png"
    assert into_dir.path.read_bytes() == payload
    assert into_dir.sha256 == hashlib.sha256(payload).hexdigest()
    assert (into_dir.size, into_dir.content_type) == (len(payload), "image/png")
    assert as_file.path.read_bytes() == payload
    assert dict(node.sent("GET", "/view")[0].url.params) == ref.view_params()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_00001_.png", "x"]


async def test_download_of_a_missing_file_raises_and_leaves_nothing(tmp_path: Path) -> None:
    node = FakeNode()
    async with make_client(node) as comfy:
        with pytest.raises(ComfyUIError, match="no file"):
            await comfy.download({"filename": "gone.png"}, tmp_path / "gone.png")
    assert list(tmp_path.iterdir()) == []


async def test_download_cut_off_midway_raises_node_unavailable_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    class Broken(httpx.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[override]
            yield b"partial"
            raise httpx.ReadError("connection reset")

    node = FakeNode()
    node.routes[("GET", "/view")] = lambda r: httpx.Response(200, stream=Broken())
    async with make_client(node) as comfy:
        with pytest.raises(NodeUnavailable):
            await comfy.download({"filename": "a.png"}, tmp_path / "a.png")
    assert list(tmp_path.iterdir()) == []


async def test_outputs_lists_the_files_from_history() -> None:
    node = FakeNode()
    node.history = rec.history_entry()
    async with make_client(node) as comfy:
        files = await comfy.outputs(rec.PROMPT_ID)
        with pytest.raises(PromptLost):
            await comfy.outputs("forgotten")
    assert files == [
        OutputFile(
            node_id="2", filename="ComfyUI_temp_plfop_00001_.png", type="temp", kind="images"
        )
    ]


# -- run / wait / follow over the websocket -------------------------------------------------------


async def test_run_connects_first_then_submits_and_returns_outputs_and_times() -> None:
    node = FakeNode()
    connector = FakeConnector(script_after_submit(node, rec.success()))
    seen: list[Message] = []
    async with make_client(node, connector) as comfy:
        result = await comfy.run(rec.GRAPH, prompt_id=rec.PROMPT_ID, on_message=seen.append)
    assert connector.urls == [f"ws://gpu-1.test:8188/ws?clientId={rec.CLIENT_ID}"]
    assert result.outputs == {"1": rec.TEST_DELAY_OUTPUT, "2": rec.SAVE_IMAGE_OUTPUT}
    assert result.cached_nodes == []
    assert result.duration_s == pytest.approx(0.64)
    assert [f.filename for f in result.files] == ["ComfyUI_temp_plfop_00001_.png"]
    assert [m.value for m in seen if isinstance(m, Progress)] == [1, 2, 3, 4]
    assert isinstance(seen[-1], ExecutionSuccess)
    flags = json.loads(connector.sockets[0].sent[0])
    assert flags == {"type": "feature_flags", "data": {"supports_preview_metadata": True}}
    assert connector.sockets[0].closed.is_set()  # closed after the last follower


async def test_run_without_preview_metadata_sends_no_feature_flags() -> None:
    node = FakeNode()
    connector = FakeConnector(script_after_submit(node, rec.success()))
    async with make_client(node, connector, preview_metadata=False) as comfy:
        await comfy.run(rec.GRAPH, prompt_id=rec.PROMPT_ID)
    assert connector.sockets[0].sent == []


async def test_run_of_cached_resubmission_reports_cached_nodes_and_outputs() -> None:
    node = FakeNode()
    connector = FakeConnector(script_after_submit(node, rec.cached()))
    async with make_client(node, connector) as comfy:
        result = await comfy.run(rec.GRAPH, prompt_id=rec.PROMPT_ID)
    assert result.cached_nodes == ["1", "2"]
    assert set(result.outputs) == {"1", "2"}


async def test_run_with_failing_node_raises_execution_failed() -> None:
    node = FakeNode()
    connector = FakeConnector(script_after_submit(node, rec.execution_error()))
    async with make_client(node, connector) as comfy:
        with pytest.raises(ExecutionFailed) as caught:
            await comfy.run(rec.GRAPH, prompt_id=rec.PROMPT_ID)
    exc = caught.value
    assert (exc.node_id, exc.node_type, exc.exception_type) == ("2", "TestFail", "RuntimeError")
    assert exc.exception_message == "boom\n"
    assert str(exc) == "node 2 (TestFail) raised RuntimeError: boom"
    assert exc.executed == ["1"] and exc.prompt_id == rec.PROMPT_ID
    assert not is_transient(exc) and not is_node_fault(exc)


async def test_run_interrupted_raises_interrupted() -> None:
    node = FakeNode()
    connector = FakeConnector(script_after_submit(node, rec.execution_interrupted()))
    async with make_client(node, connector) as comfy:
        with pytest.raises(Interrupted) as caught:
            await comfy.run(rec.GRAPH, prompt_id=rec.PROMPT_ID)
    assert (caught.value.node_id, caught.value.node_type) == ("1", "TestDelay")


async def test_run_rejected_prompt_raises_prompt_rejected() -> None:
    node = FakeNode()
    node.submit_answer = (400, rec.REJECT_BAD_VALUE)
    connector = FakeConnector([rec.greeting()])
    async with make_client(node, connector) as comfy:
        with pytest.raises(PromptRejected):
            await comfy.run(rec.GRAPH)


async def test_back_to_back_runs_reuse_the_idle_socket_which_closes_later() -> None:
    node = FakeNode()
    second = "5f01a2b3-0000-4000-8000-000000000002"
    second_submitted = asyncio.Event()

    def echo(request: httpx.Request) -> httpx.Response:
        prompt_id = json.loads(request.content)["prompt_id"]
        (second_submitted if prompt_id == second else node.submitted).set()
        return httpx.Response(200, json={"prompt_id": prompt_id, "number": 1, "node_errors": {}})

    node.routes[("POST", "/prompt")] = echo
    script = [*script_after_submit(node, rec.success()), second_submitted, *rec.cached(second)]
    connector = FakeConnector(script)
    comfy = make_client(node, connector)
    comfy._hub._linger = 0.2  # keep the test short
    await comfy.run(rec.GRAPH, prompt_id=rec.PROMPT_ID)
    await comfy.run(rec.GRAPH, prompt_id=second)
    assert len(connector.sockets) == 1
    assert not connector.sockets[0].closed.is_set()
    await asyncio.sleep(0.4)
    assert connector.sockets[0].closed.is_set()  # closed once idle for the linger time
    await comfy.aclose()


async def test_run_ignores_messages_of_other_prompts() -> None:
    node = FakeNode()
    others = [m for m in rec.success(rec.OTHER_PROMPT_ID) if m["type"] != "status"]
    connector = FakeConnector(script_after_submit(node, [*others, *rec.cached()]))
    async with make_client(node, connector) as comfy:
        result = await comfy.run(rec.GRAPH, prompt_id=rec.PROMPT_ID)
    assert result.cached_nodes == ["1", "2"]


async def test_follow_yields_preview_frames_of_this_prompt_only() -> None:
    node = FakeNode()
    node.queue = {"queue_running": [rec.queue_item(1, rec.PROMPT_ID)], "queue_pending": []}
    connector = FakeConnector([rec.greeting(1), *rec.ksampler_with_previews()])
    async with make_client(node, connector) as comfy:
        messages = [m async for m in comfy.follow(rec.PROMPT_ID)]
    previews = [m for m in messages if isinstance(m, PreviewFrame)]
    assert [(p.event, p.prompt_id) for p in previews] == [(1, None), (4, rec.PROMPT_ID)]
    assert any(isinstance(m, UnknownBinary) and m.event == 3 for m in messages)
    assert isinstance(messages[-1], ExecutionSuccess)


async def test_follow_yields_unknown_messages_of_the_prompt_and_skips_others() -> None:
    node = FakeNode()
    node.queue = {"queue_running": [rec.queue_item(1, rec.PROMPT_ID)], "queue_pending": []}
    script = [rec.greeting(1), *rec.UNKNOWN_FRAMES, *rec.success()]
    connector = FakeConnector(script)
    async with make_client(node, connector) as comfy:
        messages = [m async for m in comfy.follow(rec.PROMPT_ID)]
    unknown = [m for m in messages if isinstance(m, UnknownMessage)]
    assert [m.type for m in unknown] == ["custom_node.log", "progress"]
    assert isinstance(messages[-1], ExecutionSuccess)


async def test_wait_resolves_a_finished_prompt_from_history() -> None:
    node = FakeNode()
    node.history = rec.history_entry()
    connector = FakeConnector([rec.greeting()])
    async with make_client(node, connector) as comfy:
        result = await comfy.wait(rec.PROMPT_ID)
    assert result.outputs == {"1": rec.TEST_DELAY_OUTPUT, "2": rec.SAVE_IMAGE_OUTPUT}
    assert result.duration_s == pytest.approx(0.64)


async def test_wait_on_a_failed_prompt_in_history_raises_execution_failed() -> None:
    node = FakeNode()
    node.history = rec.history_error()
    async with make_client(node, FakeConnector([rec.greeting()])) as comfy:
        with pytest.raises(ExecutionFailed) as caught:
            await comfy.wait(rec.PROMPT_ID)
    assert (caught.value.node_type, caught.value.exception_message) == ("TestFail", "boom\n")


async def test_wait_on_an_interrupted_prompt_in_history_raises_interrupted() -> None:
    node = FakeNode()
    node.history = rec.history_interrupted()
    async with make_client(node, FakeConnector([rec.greeting()])) as comfy:
        with pytest.raises(Interrupted):
            await comfy.wait(rec.PROMPT_ID)


async def test_wait_on_a_prompt_unknown_to_the_node_raises_prompt_lost() -> None:
    node = FakeNode()
    async with make_client(node, FakeConnector([rec.greeting()])) as comfy:
        with pytest.raises(PromptLost) as caught:
            await comfy.wait(rec.PROMPT_ID)
    assert caught.value.prompt_id == rec.PROMPT_ID
    assert is_node_fault(caught.value) and not is_transient(caught.value)


async def test_dropped_socket_then_history_shows_success_resolves_from_history() -> None:
    node = FakeNode()
    before_drop = rec.success()[:6]  # started, progressing
    connector = FakeConnector(
        script_after_submit(node, [*before_drop, DROP]),
        ConnectionRefusedError(111, "refused"),  # the first reconnect attempt fails
        [rec.greeting()],
    )

    def history(request: httpx.Request) -> httpx.Response:
        if len(connector.sockets) < 2:
            return httpx.Response(200, json={})
        return httpx.Response(200, json=rec.history_entry())

    node.routes[("GET", f"/history/{rec.PROMPT_ID}")] = history
    seen: list[Message] = []
    async with make_client(node, connector, unavailable_after=5) as comfy:
        result = await comfy.run(rec.GRAPH, prompt_id=rec.PROMPT_ID, on_message=seen.append)
    assert len(connector.urls) == 3
    assert result.outputs == {"1": rec.TEST_DELAY_OUTPUT, "2": rec.SAVE_IMAGE_OUTPUT}
    assert sum(isinstance(m, Executed) for m in seen) == 2
    assert len([m for m in seen if isinstance(m, ExecutionSuccess)]) == 1


async def test_dropped_socket_then_node_forgot_the_prompt_raises_prompt_lost() -> None:
    node = FakeNode()
    connector = FakeConnector(
        script_after_submit(node, [*rec.success()[:6], DROP]),
        [rec.greeting()],  # the node restarted: empty queue and history
    )

    def restarted_queue(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"queue_running": [], "queue_pending": []})

    node.routes[("GET", "/queue")] = restarted_queue
    async with make_client(node, connector, unavailable_after=5) as comfy:
        with pytest.raises(PromptLost):
            await comfy.run(rec.GRAPH, prompt_id=rec.PROMPT_ID)


async def test_dropped_socket_with_prompt_still_running_keeps_following() -> None:
    node = FakeNode()
    rest = rec.success()[6:]
    connector = FakeConnector(
        script_after_submit(node, [*rec.success()[:6], DROP]),
        [rec.greeting(1), *rest],
    )
    node.queue = {"queue_running": [rec.queue_item(20, rec.PROMPT_ID)], "queue_pending": []}
    async with make_client(node, connector, unavailable_after=5) as comfy:
        result = await comfy.run(rec.GRAPH, prompt_id=rec.PROMPT_ID)
    assert set(result.outputs) == {"1", "2"}
    assert len(connector.sockets) == 2


async def test_socket_that_stays_down_raises_node_unavailable_after_the_budget() -> None:
    node = FakeNode()
    connector = FakeConnector(script_after_submit(node, [*rec.success()[:6], DROP]))
    loop = asyncio.get_running_loop()
    async with make_client(node, connector, unavailable_after=0.5) as comfy:
        started = loop.time()
        with pytest.raises(NodeUnavailable, match="reconnect"):
            await comfy.run(rec.GRAPH, prompt_id=rec.PROMPT_ID)
    assert 0.5 <= loop.time() - started < 3  # the whole budget, not less
    assert len(connector.urls) > 2  # it kept trying


async def test_first_websocket_connect_refused_raises_node_unavailable_at_once() -> None:
    node = FakeNode()
    connector = FakeConnector(ConnectionRefusedError(111, "refused"))
    async with make_client(node, connector, unavailable_after=30) as comfy:
        with pytest.raises(NodeUnavailable):
            await asyncio.wait_for(comfy.run(rec.GRAPH), timeout=2)
    assert node.sent("POST", "/prompt") == []  # nothing submitted without a socket


async def test_silence_past_no_progress_timeout_resolves_from_history() -> None:
    node = FakeNode()
    connector = FakeConnector(script_after_submit(node, rec.success()[:6]))  # then silence

    def history(request: httpx.Request) -> httpx.Response:
        body = rec.history_entry() if len(node.sent("GET", "/queue")) else {}
        return httpx.Response(200, json=body)

    node.routes[("GET", f"/history/{rec.PROMPT_ID}")] = history
    node.queue = {"queue_running": [rec.queue_item(20, rec.PROMPT_ID)], "queue_pending": []}
    async with make_client(node, connector, no_progress_timeout=0.2) as comfy:
        result = await asyncio.wait_for(comfy.run(rec.GRAPH, prompt_id=rec.PROMPT_ID), 5)
    assert set(result.outputs) == {"1", "2"}


async def test_silence_with_node_not_answering_raises_node_unavailable() -> None:
    node = FakeNode()
    connector = FakeConnector(script_after_submit(node, rec.success()[:6]))
    node.routes[("GET", f"/history/{rec.PROMPT_ID}")] = raises(httpx.ConnectTimeout("timeout"))
    async with make_client(node, connector, no_progress_timeout=0.2) as comfy:
        with pytest.raises(NodeUnavailable):
            await asyncio.wait_for(comfy.run(rec.GRAPH, prompt_id=rec.PROMPT_ID), 5)


async def test_queue_change_makes_a_follower_without_job_messages_check_history() -> None:
    # Adopting a prompt submitted by another client id: only status broadcasts arrive.
    node = FakeNode()
    node.queue = {"queue_running": [rec.queue_item(20, rec.PROMPT_ID)], "queue_pending": []}
    finished = asyncio.Event()
    connector = FakeConnector([rec.greeting(1), finished, rec.status(0)])
    async with make_client(node, connector) as comfy:
        follow = asyncio.create_task(comfy.wait(rec.PROMPT_ID))
        await asyncio.sleep(0.05)
        assert not follow.done()
        node.history = rec.history_entry()
        finished.set()
        result = await asyncio.wait_for(follow, 2)
    assert set(result.outputs) == {"1", "2"}


async def test_concurrent_runs_share_one_socket() -> None:
    node = FakeNode()
    second = "5f01a2b3-0000-4000-8000-000000000002"

    def echo(request: httpx.Request) -> httpx.Response:
        prompt_id = json.loads(request.content)["prompt_id"]
        if prompt_id == second:
            node.submitted.set()
        return httpx.Response(200, json={"prompt_id": prompt_id, "number": 1, "node_errors": {}})

    node.routes[("POST", "/prompt")] = echo
    script = [rec.greeting(), node.submitted, *rec.success(), *rec.cached(second)]
    connector = FakeConnector(script)
    async with make_client(node, connector) as comfy:
        first_result, second_result = await asyncio.gather(
            comfy.run(rec.GRAPH, prompt_id=rec.PROMPT_ID),
            comfy.run(rec.GRAPH, prompt_id=second),
        )
    assert len(connector.urls) == 1
    assert first_result.cached_nodes == [] and second_result.cached_nodes == ["1", "2"]


async def test_closing_the_client_ends_a_follower_with_an_error() -> None:
    node = FakeNode()
    node.queue = {"queue_running": [rec.queue_item(20, rec.PROMPT_ID)], "queue_pending": []}
    comfy = make_client(node, FakeConnector([rec.greeting(1)]))
    follow = asyncio.create_task(comfy.wait(rec.PROMPT_ID))
    await asyncio.sleep(0.05)
    await comfy.aclose()
    with pytest.raises(ComfyUIError, match="closed"):
        await asyncio.wait_for(follow, 2)


async def test_on_message_may_be_a_coroutine_function() -> None:
    node = FakeNode()
    connector = FakeConnector(script_after_submit(node, rec.success()))
    statuses: list[int | None] = []

    async def record(message: Message) -> None:
        if isinstance(message, Status):
            statuses.append(message.queue_remaining)

    async with make_client(node, connector) as comfy:
        await comfy.run(rec.GRAPH, prompt_id=rec.PROMPT_ID, on_message=record)
    assert statuses == [0, 1]  # the greeting, then the queue growing by our prompt


# -- errors ---------------------------------------------------------------------------------------


def test_errors_survive_pickling() -> None:
    errors = [
        NodeUnavailable("down", url=BASE, status_code=502),
        PromptRejected(rec.REJECT_BAD_VALUE["error"], rec.REJECT_BAD_VALUE["node_errors"]),
        ExecutionFailed("2", "TestFail", "RuntimeError", "boom\n", prompt_id="p"),
        Interrupted("1", "TestDelay", prompt_id="p"),
        PromptLost("p"),
    ]
    for exc in errors:
        copy = pickle.loads(pickle.dumps(exc))
        assert type(copy) is type(exc)
        assert str(copy) == str(exc)
        assert copy.__dict__ == exc.__dict__


def test_is_transient_follows_the_cause_chain_and_serves_as_prefect_retry_condition() -> None:
    class State:
        def __init__(self, data: object) -> None:
            self.data = data

    wrapped = RuntimeError("task failed")
    wrapped.__cause__ = NodeUnavailable("down")
    assert is_transient(wrapped)
    assert is_transient(ConnectionResetError())
    assert not is_transient(ValueError("bad parameter"))
    assert retry_if_transient(None, None, State(NodeUnavailable("down")))
    assert not retry_if_transient(None, None, State(PromptLost("p")))
    assert not retry_if_transient(None, None, State("a result"))


async def test_a_follower_that_joined_after_execution_start_takes_the_start_from_history() -> None:
    node = FakeNode()
    node.queue["queue_running"].append(rec.queue_item(20, rec.PROMPT_ID))
    late = [f for f in rec.success() if f["type"] not in ("execution_start", "status")]
    connector = FakeConnector([rec.greeting(), *late])
    entry = rec.history_entry()  # the ended prompt's entry carries execution_start
    calls: list[int] = []

    def history(request: httpx.Request) -> httpx.Response:
        calls.append(1)  # still running when the follower joins; ended afterwards
        return httpx.Response(200, json={} if len(calls) == 1 else entry)

    node.routes[("GET", f"/history/{rec.PROMPT_ID}")] = history
    async with make_client(node, connector) as comfy:
        result = await comfy.wait(rec.PROMPT_ID)
    assert result.started_at is not None
    assert result.duration_s == pytest.approx(0.64)


async def test_a_late_follower_waits_for_the_history_messages_written_after_success() -> None:
    """ComfyUI sends execution_success before it writes the history entry's status messages: the
    first reads after the end have no execution_start yet; the follower asks again."""
    import copy

    node = FakeNode()
    node.queue["queue_running"].append(rec.queue_item(20, rec.PROMPT_ID))
    late = [f for f in rec.success() if f["type"] not in ("execution_start", "status")]
    connector = FakeConnector([rec.greeting(), *late])
    entry = rec.history_entry()
    unsettled = copy.deepcopy(entry)
    unsettled[rec.PROMPT_ID].pop("status", None)
    answers = [{}, unsettled, unsettled, entry]

    def history(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=answers.pop(0) if len(answers) > 1 else answers[0])

    node.routes[("GET", f"/history/{rec.PROMPT_ID}")] = history
    async with make_client(node, connector) as comfy:
        result = await comfy.wait(rec.PROMPT_ID)
    assert result.duration_s == pytest.approx(0.64)


async def test_every_client_of_the_process_shares_one_tls_context() -> None:
    """httpx builds (and loads the CA bundle into) a TLS context per client: 65 ms of CPU each,
    which a client per attempt paid on every job. Clients share the process's one."""
    async with (
        ComfyUIClient("http://127.0.0.1:1") as first,
        ComfyUIClient("https://127.0.0.1:2") as second,
    ):
        contexts = {id(c._http._transport._pool._ssl_context) for c in (first, second)}
    assert contexts == {id(tls_context())}


async def test_listening_before_submit_hands_wait_every_message_from_the_first() -> None:
    node = FakeNode()
    connector = FakeConnector(script_after_submit(node, rec.success()))
    seen: list[Message] = []
    async with make_client(node, connector) as comfy:
        async with comfy.listening():
            await comfy.submit(rec.GRAPH, prompt_id=rec.PROMPT_ID)
            while connector.sockets[0].script:  # noqa: ASYNC110 (every frame out before a follower)
                await asyncio.sleep(0)
            result = await comfy.wait(rec.PROMPT_ID, on_message=seen.append)
    kinds = [m.type for m in seen if m.type != "status"]
    assert kinds[:3] == ["execution_start", "execution_cached", "executing"]
    assert isinstance(seen[-1], ExecutionSuccess)
    assert result.duration_s == pytest.approx(0.64)
    assert len(connector.urls) == 1  # one socket, opened before the submit
