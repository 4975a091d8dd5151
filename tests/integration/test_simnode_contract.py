"""The simulated node (bench/simnode) holds to the protocol of a real ComfyUI 0.3.75 node.

Each test runs one client scenario against a real node of the session fleet (with the test-only
TestDelay / TestFail nodes) and then against a simulated node, and compares what came back:
websocket frames (types in order, every data key, which prompt each one names), HTTP status
codes, JSON bodies, queue and history. Only what legitimately differs between two servers is
normalised (prompt ids, queue numbers, timestamps, file counters, timings, tracebacks, tensor
reprs): see tests/support/comfy_contract.py. Durations stay at or under one second.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from PIL import Image

from bench.simnode import SimFleet
from comfyfleet.comfyui import (
    ComfyUIClient,
    ExecutionFailed,
    PromptRejected,
)
from comfyfleet.settings import REPO_ROOT
from tests.fixtures.comfy import NodeHandle
from tests.support.comfy_contract import (
    Normaliser,
    Recorder,
    differences,
    linked_values,
    matches,
    shape,
)

pytestmark = pytest.mark.integration

Graph = dict[str, dict[str, Any]]
Scenario = Callable[[str, Normaliser], Awaitable[Any]]


@pytest.fixture(scope="module")
async def sim_url() -> AsyncIterator[str]:
    async with SimFleet(count=1, seconds=0.1) as fleet:
        yield fleet.urls[0]


async def on_both(
    real: NodeHandle, sim: str, scenario: Scenario, *, agree: bool = True
) -> tuple[Any, Any]:
    """The scenario's normalised result on the real node, then on the simulated one; with
    ``agree`` they must be equal (what differs is listed place by place)."""
    real_result = await scenario(real.url, Normaliser())
    sim_result = await scenario(sim, Normaliser())
    if agree:
        problems = differences(real_result, sim_result)
        assert not problems, "\n".join(problems)
    return real_result, sim_result


def delay(seconds: float, steps: int, seed: int, *, save: bool = True) -> Graph:
    graph: Graph = {
        "1": {
            "class_type": "TestDelay",
            "inputs": {"seconds": seconds, "seed": seed, "steps": steps, "width": 8, "height": 8},
        }
    }
    if save:
        graph["2"] = {
            "class_type": "SaveImage",
            "inputs": {"images": ["1", 0], "filename_prefix": "contract/delay"},
        }
    return graph


def failing(seed: int) -> Graph:
    graph = delay(0.2, 2, seed, save=False)
    graph["2"] = {"class_type": "TestFail", "inputs": {"message": "boom", "image": ["1", 0]}}
    return graph


def png_bytes(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


async def post_prompt(
    http: httpx.AsyncClient, norm: Normaliser, graph: Graph, client_id: str, **extra: Any
) -> tuple[str, dict[str, Any]]:
    """POST /prompt with a fresh prompt id; the id and the normalised answer."""
    prompt_id = str(uuid.uuid4())
    norm.token(prompt_id)
    body = {"prompt": graph, "client_id": client_id, "prompt_id": prompt_id, **extra}
    response = await http.post("/prompt", json=body)
    assert response.status_code == 200, response.text
    return prompt_id, norm(response.json())


# -- HTTP routes ---------------------------------------------------------------------------------

IDLE_ROUTES = [
    "/prompt",
    "/queue",
    "/features",
    "/models",
    "/models/checkpoints",
    "/models/no-such-folder",
    "/embeddings",
    "/history/no-such-prompt",
    "/object_info/TestDelay",
    "/object_info/TestFail",
    "/object_info/SaveImage",
    "/object_info/CheckpointLoaderSimple",
    "/object_info/NoSuchNode",
    "/view?filename=no-such-file.png&type=output",
    "/view?filename=../escape.png",
    "/view?filename=x.png&type=no-such-type",
    "/view?filename=x.png&subfolder=../..",
    "/api/queue",
    "/api/models/checkpoints",
]


async def test_idle_routes_answer_with_the_same_status_and_body(
    comfy_node: NodeHandle, sim_url: str
) -> None:
    async def scenario(url: str, norm: Normaliser) -> list[Any]:
        answers = []
        async with httpx.AsyncClient(base_url=url) as http:
            for path in IDLE_ROUTES:
                response = await http.get(path)
                body = response.json() if response.content else response.content
                answers.append(
                    (path, response.status_code, response.headers.get("content-type"), body)
                )
            for path, body in [("/interrupt", {}), ("/queue", {"clear": True})]:
                response = await http.post(path, json=body)
                answers.append((path, response.status_code, response.content))
            response = await http.post("/interrupt")
            answers.append(("/interrupt (no body)", response.status_code, response.content))
        return answers

    _, sim = await on_both(comfy_node, sim_url, scenario)
    assert ("/models/no-such-folder", 404, None, b"") in sim


async def test_system_stats_and_object_info_have_the_real_shapes(
    comfy_node: NodeHandle, sim_url: str
) -> None:
    async def scenario(url: str, norm: Normaliser) -> tuple[Any, Any, dict[str, Any]]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            stats = await http.get("/system_stats")
            api_stats = await http.get("/api/system_stats")
            info = await http.get("/object_info")
        return (
            (stats.status_code, stats.headers["content-type"], shape(stats.json())),
            shape(api_stats.json()),
            info.json(),
        )

    (real_stats, real_api, real_info), (sim_stats, sim_api, sim_info) = await on_both(
        comfy_node, sim_url, scenario, agree=False
    )
    assert sim_stats == real_stats and sim_api == real_api
    assert sim_stats[2]["system"]["comfyui_version"] == "str"
    # The snapshot is the real node's entries; only LoadImage's choices are per node.
    assert set(sim_info) < set(real_info)
    for class_type, info in sim_info.items():
        if class_type != "LoadImage":
            assert info == real_info[class_type], class_type
    assert {"TestDelay", "TestFail", "KSampler", "SaveImage"} <= set(sim_info)


# -- prompts -------------------------------------------------------------------------------------


async def test_successful_prompt_sends_the_same_messages_and_history(
    comfy_node: NodeHandle, sim_url: str
) -> None:
    seed = random.randrange(2**40)

    async def scenario(url: str, norm: Normaliser) -> dict[str, Any]:
        owner, other = f"contract-{uuid.uuid4().hex}", f"observer-{uuid.uuid4().hex}"
        norm.token(owner, "client")
        norm.token(other, "client")
        async with (
            httpx.AsyncClient(base_url=url) as http,
            Recorder(url, owner) as socket,
            Recorder(url, other) as observer,
        ):
            prompt_id, answer = await post_prompt(
                http, norm, delay(0.4, 4, seed), owner, extra_data={"note": "contract"}
            )
            frames = await socket.wait_ended(prompt_id)
            idle = matches("status", status={"exec_info": {"queue_remaining": 0}})
            observed = await observer.wait_frame(idle, after=1)
            history = (await http.get(f"/history/{prompt_id}")).json()
            queue = (await http.get("/queue")).json()
            files = []
            for output in history[prompt_id]["outputs"].values():
                for image in output.get("images", []):
                    got = await http.get("/view", params=image)
                    head = await http.head("/view", params=image)
                    size = Image.open(io.BytesIO(got.content)).size
                    disposition = norm(got.headers["content-disposition"])
                    files.append((got.status_code, got.headers["content-type"], disposition, size))
                    files.append((head.status_code, head.headers["content-type"]))
        return {
            "answer": answer,
            "frames": norm(frames),
            "observer": norm(observed),
            "history": norm.history(history),
            "queue": queue,
            "files": files,
        }

    _, sim = await on_both(comfy_node, sim_url, scenario)
    types = [frame["type"] for frame in sim["frames"]]
    assert types.count("progress") == 4 and types[-2:] == ["status", "executing"]
    assert [frame["type"] for frame in sim["observer"]] == ["status"] * 4
    assert (200, "image/png", 'filename="delay_NNNNN_.png"', (8, 8)) in sim["files"]


async def test_identical_prompt_is_served_from_the_cache_alike(
    comfy_node: NodeHandle, sim_url: str
) -> None:
    seed = random.randrange(2**40)
    # One output node: two independent outputs (a cached TestDelay and its SaveImage) are
    # replayed in the order of a Python set in ComfyUI, which varies from process to process.
    graph = delay(0.3, 2, seed, save=False)

    async def scenario(url: str, norm: Normaliser) -> dict[str, Any]:
        owner = f"contract-{uuid.uuid4().hex}"
        norm.token(owner, "client")
        async with (
            httpx.AsyncClient(base_url=url) as http,
            Recorder(url, owner) as socket,
            ComfyUIClient(url) as comfy,
        ):
            first, _ = await post_prompt(http, norm, graph, owner)
            await socket.wait_ended(first)
            again, _ = await post_prompt(http, norm, graph, owner)
            frames = await socket.wait_ended(again)
            history = norm.history((await http.get(f"/history/{again}")).json())
            replayed = await asyncio.wait_for(comfy.wait(again), 60)
            live = await asyncio.wait_for(comfy.run(graph), 60)
        return {
            "frames": norm(frames),
            "history": history,
            "client": [
                (
                    result.cached_nodes,
                    norm(result.outputs),
                    [norm.text(f.filename) for f in result.files],
                )
                for result in (replayed, live)
            ],
        }

    _, sim = await on_both(comfy_node, sim_url, scenario)
    types = [frame["type"] for frame in sim["frames"]]
    second = types[types.index("executing", types.index("execution_success")) + 1 :]
    assert second == [
        "status",
        "status",
        "execution_start",
        "execution_cached",
        "executed",  # replayed from the cache: no executing, no progress
        "progress_state",
        "execution_success",
        "status",
        "executing",
    ]
    assert [cached for cached, _, _ in sim["client"]] == [["1"], ["1"]]


async def test_failing_node_reports_the_same_execution_error(
    comfy_node: NodeHandle, sim_url: str
) -> None:
    seed = random.randrange(2**40)

    async def scenario(url: str, norm: Normaliser) -> dict[str, Any]:
        owner = f"contract-{uuid.uuid4().hex}"
        norm.token(owner, "client")
        async with (
            httpx.AsyncClient(base_url=url) as http,
            Recorder(url, owner) as socket,
            ComfyUIClient(url) as comfy,
        ):
            prompt_id, _ = await post_prompt(http, norm, failing(seed), owner)
            frames = await socket.wait_ended(prompt_id)
            history = (await http.get(f"/history/{prompt_id}")).json()
            with pytest.raises(ExecutionFailed) as failed:
                await asyncio.wait_for(comfy.wait(prompt_id), 60)
        error = failed.value
        history_frames = [
            {"type": t, "data": d} for t, d in history[prompt_id]["status"]["messages"]
        ]
        history[prompt_id]["status"]["messages"] = [
            [f["type"], f["data"]] for f in linked_values(history_frames, {"image"})
        ]
        return {
            "frames": norm(linked_values(frames, {"image"})),
            "history": norm.history(history),
            "client": (error.node_id, error.node_type, error.exception_message),
        }

    _, sim = await on_both(comfy_node, sim_url, scenario)
    assert sim["client"] == ("2", "TestFail", "boom\n")


async def test_interrupt_stops_the_running_prompt_alike(
    comfy_node: NodeHandle, sim_url: str
) -> None:
    seed = random.randrange(2**40)

    async def scenario(url: str, norm: Normaliser) -> dict[str, Any]:
        owner = f"contract-{uuid.uuid4().hex}"
        norm.token(owner, "client")
        async with (
            httpx.AsyncClient(base_url=url) as http,
            Recorder(url, owner) as socket,
            ComfyUIClient(url, client_id=owner) as comfy,
        ):
            running, _ = await post_prompt(http, norm, delay(1.0, 1, seed), owner)
            await socket.wait_frame(matches("executing", prompt_id=running, node="1"))
            waiting, _ = await post_prompt(http, norm, delay(0.1, 1, seed + 1), owner)
            queue = norm.queue((await http.get("/queue")).json())
            await comfy.interrupt(waiting)  # pending: ignored
            await comfy.interrupt(running)
            frames = await socket.wait_ended(waiting)
            await comfy.interrupt()  # nothing running: a no-op
            history = norm.history((await http.get(f"/history/{running}")).json())
            state = await comfy.queue()
        return {
            "queue": queue,
            "frames": norm(frames),
            "history": history,
            "after": (state.running, state.pending),
        }

    _, sim = await on_both(comfy_node, sim_url, scenario)
    types = [frame["type"] for frame in sim["frames"]]
    assert "execution_interrupted" in types and "execution_success" in types
    assert sim["history"]["<id1>"]["status"]["status_str"] == "error"


async def test_pending_prompts_deleted_and_cleared_alike(
    comfy_node: NodeHandle, sim_url: str
) -> None:
    seed = random.randrange(2**40)

    async def scenario(url: str, norm: Normaliser) -> dict[str, Any]:
        owner = f"contract-{uuid.uuid4().hex}"
        norm.token(owner, "client")
        async with (
            httpx.AsyncClient(base_url=url) as http,
            Recorder(url, owner) as socket,
            ComfyUIClient(url, client_id=owner) as comfy,
        ):
            running, _ = await post_prompt(http, norm, delay(1.0, 1, seed), owner)
            await socket.wait_frame(matches("executing", prompt_id=running, node="1"))
            later, _ = await post_prompt(http, norm, delay(0.1, 1, seed + 1), owner)
            first, _ = await post_prompt(http, norm, delay(0.1, 1, seed + 2), owner, front=True)
            third, _ = await post_prompt(http, norm, delay(0.1, 1, seed + 3), owner)
            before = norm.queue((await http.get("/queue")).json())
            order = await comfy.queue()
            await comfy.delete_pending([later, running, "no-such-prompt"])
            after_delete = norm.queue((await http.get("/queue")).json())
            cleared = await http.post("/queue", json={"clear": True})
            frames = await socket.wait_ended(running)
            gone = [(await http.get(f"/history/{p}")).json() for p in (later, first, third)]
        return {
            "before": before,
            "order": (norm(order.running), norm(order.pending)),
            "after_delete": after_delete,
            "cleared": (cleared.status_code, cleared.content),
            "frames": norm(frames),
            "gone": gone,
        }

    _, sim = await on_both(comfy_node, sim_url, scenario)
    assert sim["order"] == (["<id1>"], ["<id3>", "<id2>", "<id4>"])
    assert sim["gone"] == [{}, {}, {}]


LATENT = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
REJECTED: dict[str, dict[str, Any]] = {
    "unknown class": {"1": {"class_type": "NoSuchNode", "inputs": {}}},
    "missing input": {"1": {"class_type": "TestDelay", "inputs": {}}},
    "below min": {"1": {"class_type": "TestDelay", "inputs": {"seconds": -5}}},
    "no output": {"1": LATENT},
    "not in list": {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "missing.ckpt"}},
        "2": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["1", 2]}},
        "3": LATENT,
        "4": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
    },
    "wrong link type": {
        "1": LATENT,
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    },
    "link to nothing": {
        "2": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "x"}}
    },
    "missing image file": {
        "1": {"class_type": "LoadImage", "inputs": {"image": "no-such-image.png"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    },
}


async def test_rejected_prompts_answer_the_same_400(comfy_node: NodeHandle, sim_url: str) -> None:
    async def scenario(url: str, norm: Normaliser) -> dict[str, Any]:
        answers: dict[str, Any] = {}
        async with httpx.AsyncClient(base_url=url) as http, ComfyUIClient(url) as comfy:
            for name, graph in REJECTED.items():
                response = await http.post("/prompt", json={"prompt": graph, "client_id": "x"})
                with pytest.raises(PromptRejected) as rejected:
                    await comfy.submit(graph)
                answers[name] = (
                    response.status_code,
                    response.headers["content-type"],
                    norm(response.json()),
                    (rejected.value.error_type, norm(rejected.value.node_errors)),
                )
            response = await http.post("/prompt", json={"client_id": "x"})
            answers["no prompt"] = (response.status_code, response.json())
            partial = {
                "1": delay(0.0, 1, random.randrange(2**40), save=False)["1"],
                "2": {"class_type": "TestDelay", "inputs": {"seconds": -5}},
            }
            prompt_id, answer = await post_prompt(http, norm, partial, "x")
            answers["partly valid"] = answer
            await comfy.wait(prompt_id)
        return answers

    _, sim = await on_both(comfy_node, sim_url, scenario)
    assert sim["unknown class"][2]["error"]["type"] == "invalid_prompt"
    assert sim["unknown class"][2]["node_errors"] == {}
    errors = sim["missing input"][2]["node_errors"]["1"]["errors"]
    assert errors[0]["type"] == "required_input_missing"
    assert sim["not in list"][2]["node_errors"]["1"]["errors"][0]["type"] == "value_not_in_list"
    assert sim["no output"][2]["error"]["type"] == "prompt_no_outputs"
    assert sim["partly valid"]["node_errors"]["2"]["class_type"] == "TestDelay"


async def test_upload_then_view_and_load_the_image_alike(
    comfy_node: NodeHandle, sim_url: str
) -> None:
    stem = f"contract-{uuid.uuid4().hex[:12]}"
    first, second = png_bytes((10, 20, 30)), png_bytes((200, 20, 30))

    async def scenario(url: str, norm: Normaliser) -> dict[str, Any]:
        norm.token(stem, "upload")
        owner = f"contract-{uuid.uuid4().hex}"
        norm.token(owner, "client")
        async with (
            httpx.AsyncClient(base_url=url) as http,
            ComfyUIClient(url) as comfy,
            Recorder(url, owner) as socket,
        ):
            name = f"{stem}.png"
            uploads = [
                await comfy.upload_image(first, name=name, subfolder="contract"),
                await comfy.upload_image(first, name=name, subfolder="contract"),
                await comfy.upload_image(second, name=name, subfolder="contract"),
                await comfy.upload_image(second, name=name, subfolder="contract", overwrite=True),
                await comfy.upload_image(first, name=name),
            ]
            raw = await http.post(
                "/upload/image",
                files={"image": (name, first, "image/png")},
                data={"type": "input", "subfolder": "contract"},
            )
            empty = await http.post("/upload/image", data={"type": "input"})
            views = []
            for upload in uploads:
                params = {"filename": upload.name, "subfolder": upload.subfolder, "type": "input"}
                got = await http.get("/view", params=params)
                disposition = norm(got.headers["content-disposition"])
                content = "first" if got.content == first else "second"
                views.append((got.status_code, got.headers["content-type"], disposition, content))
            has = (
                await comfy.has_input(name, subfolder="contract"),
                await comfy.has_input(f"{stem}-missing.png", subfolder="contract"),
            )
            choices = (await http.get("/object_info/LoadImage")).json()
            listed = name in choices["LoadImage"]["input"]["required"]["image"][0]
            graph = {
                "1": {"class_type": "LoadImage", "inputs": {"image": f"contract/{name}"}},
                "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
            }
            prompt_id, _ = await post_prompt(http, norm, graph, owner)
            frames = await socket.wait_ended(prompt_id)
            history = (await http.get(f"/history/{prompt_id}")).json()
            (preview,) = history[prompt_id]["outputs"]["2"]["images"]
            shown = await http.get("/view", params=preview)
        return {
            "uploads": [norm(u.model_dump()) for u in uploads],
            "raw": (raw.status_code, norm(raw.json())),
            "empty": (empty.status_code, empty.content),
            "views": views,
            "has_input": has,
            "listed": listed,
            "frames": norm(frames),
            "history": norm.history(history),
            "preview": (shown.status_code, shown.headers["content-type"]),
        }

    _, sim = await on_both(comfy_node, sim_url, scenario)
    names = [upload["name"] for upload in sim["uploads"]]
    upload = "<upload1>"
    assert names == [f"{upload}.png"] * 2 + [f"{upload} (1).png"] + [f"{upload}.png"] * 2
    assert sim["has_input"] == (True, False) and sim["listed"] is True
    assert sim["history"]["<id1>"]["outputs"]["2"]["images"][0]["type"] == "temp"


def sd15(seed: int) -> Graph:
    """The SD1.5 text-to-image workflow on the tiny checkpoint: 64×64, 2 sampler steps."""
    graph: Graph = json.loads((REPO_ROOT / "workflows/text_to_image/sd15-basic.json").read_text())
    graph["4"]["inputs"]["ckpt_name"] = "tiny-sd15.ckpt"
    graph["5"]["inputs"].update(width=64, height=64)
    graph["3"]["inputs"].update(steps=2, seed=seed)
    return graph


@pytest.mark.slow
async def test_sampler_previews_reach_the_client_in_both_formats_alike(
    comfy_node: NodeHandle, sim_url: str
) -> None:
    seed = random.randrange(2**40)

    async def scenario(url: str, norm: Normaliser) -> dict[str, Any]:
        with_flags, without = f"flags-{uuid.uuid4().hex}", f"plain-{uuid.uuid4().hex}"
        norm.token(with_flags, "client")
        norm.token(without, "client")
        runs = {}
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            # the first run loads the model (or finds it cached): only later runs are compared
            async with Recorder(url, without) as socket:
                warm_up, _ = await post_prompt(http, norm, sd15(seed), without)
                await socket.wait_ended(warm_up, timeout=300)
            for name, client_id, flags in (("flags", with_flags, True), ("plain", without, False)):
                async with Recorder(url, client_id, preview_metadata=flags) as socket:
                    prompt_id, _ = await post_prompt(
                        http, norm, sd15(seed + 1 + len(runs)), client_id
                    )
                    runs[name] = norm(await socket.wait_ended(prompt_id, timeout=300))
        return runs

    _, sim = await on_both(comfy_node, sim_url, scenario)
    with_flags, without = sim["flags"], sim["plain"]
    assert with_flags[1]["type"] == "feature_flags"
    tagged = [f for f in with_flags if f["type"] == "<binary>"]
    assert [f["event"] for f in tagged] == [4, 4]
    assert tagged[0]["metadata"]["node_id"] == "3"
    assert [f["event"] for f in without if f["type"] == "<binary>"] == [1, 1]
