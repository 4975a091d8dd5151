"""The simulated ComfyUI node's pure parts (bench/simnode), and one node driven without a
network through fake websocket sessions. Expected values come from a real ComfyUI 0.3.75."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest
from PIL import Image

from bench.simnode.catalog import Catalog, snapshot
from bench.simnode.files import FileStore, OutsideFolder
from bench.simnode.graph import cache_keys, execution_order
from bench.simnode.media import png, preview_frame, preview_jpeg
from bench.simnode.node import SimNode, SimNodeConfig
from bench.simnode.record import trim, workflow_class_types
from bench.simnode.validate import validate_prompt
from comfyfleet.comfyui import PreviewFrame, parse_binary
from comfyfleet.local.node import TINY_CHECKPOINTS

SD15 = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd15.ckpt"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "b", "clip": ["4", 1]}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "3": {
        "class_type": "KSampler",
        "inputs": {
            "seed": 0, "steps": 2, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0],
        },
    },
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": ["8", 0]}},
}  # fmt: skip


def catalog(files: FileStore | None = None) -> Catalog:
    store = files or FileStore()
    return Catalog({"checkpoints": list(TINY_CHECKPOINTS)}, store.input_images)


def copy(graph: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(graph))


# -- the snapshot --------------------------------------------------------------------------------


def test_snapshot_covers_every_workflow_class_and_the_test_nodes() -> None:
    assert workflow_class_types() | {"TestDelay", "TestFail", "PreviewImage"} <= set(snapshot())


def test_trim_empties_per_node_choices_and_refuses_unknown_classes() -> None:
    info = {"LoadImage": {"input": {"required": {"image": [["a.png"], {"image_upload": True}]}}}}
    assert trim(info, ["LoadImage"])["LoadImage"]["input"]["required"]["image"][0] == []
    with pytest.raises(ValueError, match="NoSuch"):
        trim(info, ["NoSuch"])


def test_catalog_fills_checkpoints_and_input_images_per_node() -> None:
    files = FileStore()
    files.upload("in.png", b"x", folder_type="input", subfolder="", overwrite=False)
    files.upload("deep.png", b"x", folder_type="input", subfolder="jobs", overwrite=False)
    entries = catalog(files)
    ckpt = entries.get("CheckpointLoaderSimple")
    assert ckpt is not None
    assert ckpt["input"]["required"]["ckpt_name"][0] == list(TINY_CHECKPOINTS)
    load = entries.get("LoadImage")
    assert load is not None and load["input"]["required"]["image"][0] == ["in.png"]
    assert snapshot()["LoadImage"]["input"]["required"]["image"][0] == []
    assert entries.get("NoSuchNode") is None


# -- validation ----------------------------------------------------------------------------------


def test_missing_required_input_is_reported_as_comfyui_does() -> None:
    result = validate_prompt({"1": {"class_type": "TestDelay", "inputs": {}}}, catalog().get)
    assert not result.ok
    assert result.error == {
        "type": "prompt_outputs_failed_validation",
        "message": "Prompt outputs failed validation",
        "details": "Required input is missing: seconds",
        "extra_info": {},
    }
    assert result.node_errors == {
        "1": {
            "errors": [
                {
                    "type": "required_input_missing",
                    "message": "Required input is missing",
                    "details": "seconds",
                    "extra_info": {"input_name": "seconds"},
                }
            ],
            "dependent_outputs": ["1"],
            "class_type": "TestDelay",
        }
    }


def test_checkpoint_not_in_list_blames_the_loader_with_empty_top_level_details() -> None:
    graph = copy(SD15)
    graph["4"]["inputs"]["ckpt_name"] = "missing.safetensors"
    result = validate_prompt(graph, catalog().get)
    assert result.error is not None and result.error["details"] == ""
    (problem,) = result.node_errors["4"]["errors"]
    assert problem["type"] == "value_not_in_list"
    assert problem["details"] == (
        "ckpt_name: 'missing.safetensors' not in "
        "['tiny-sd15.ckpt', 'tiny-sdxl.ckpt', 'tiny-svd.ckpt']"
    )
    assert result.node_errors["4"]["dependent_outputs"] == ["9"]


def test_unknown_class_and_no_output_are_prompt_level_errors() -> None:
    unknown = validate_prompt({"1": {"class_type": "NoSuchNode", "inputs": {}}}, catalog().get)
    assert unknown.error == {
        "type": "invalid_prompt",
        "message": "Cannot execute because node NoSuchNode does not exist.",
        "details": "Node ID '#1'",
        "extra_info": {},
    }
    assert unknown.node_errors == {}
    latent = {"1": copy(SD15)["5"]}
    no_output = validate_prompt(latent, catalog().get)
    assert no_output.error is not None and no_output.error["type"] == "prompt_no_outputs"


def test_values_are_converted_in_place_and_checked_against_min() -> None:
    graph = {"1": {"class_type": "TestDelay", "inputs": {"seconds": -5, "steps": "3"}}}
    result = validate_prompt(graph, catalog().get)
    assert graph["1"]["inputs"] == {"seconds": -5.0, "steps": 3}
    assert result.error is not None
    assert result.error["details"] == "Value -5.0 smaller than min of 0.0: seconds"


def test_a_partly_valid_prompt_runs_its_good_outputs_and_reports_the_rest() -> None:
    graph = {
        "1": {"class_type": "TestDelay", "inputs": {"seconds": 0.1}},
        "2": {"class_type": "TestDelay", "inputs": {"seconds": -1}},
    }
    result = validate_prompt(graph, catalog().get)
    assert result.ok and result.outputs == ["1"]
    assert list(result.node_errors) == ["2"]


def test_link_problems_have_comfyuis_error_types() -> None:
    to_nothing = {"9": {"class_type": "SaveImage", "inputs": {"images": ["7", 0]}}}
    (problem,) = validate_prompt(to_nothing, catalog().get).node_errors["9"]["errors"]
    assert problem["type"] == "exception_during_validation"
    assert problem["details"] == "'7'"
    assert problem["extra_info"]["exception_type"] == "KeyError"
    wrong_type = {"5": copy(SD15)["5"], "9": copy(SD15)["9"]}
    wrong_type["9"]["inputs"]["images"] = ["5", 0]
    (problem,) = validate_prompt(wrong_type, catalog().get).node_errors["9"]["errors"]
    assert problem["type"] == "return_type_mismatch"
    assert problem["details"] == "images, received_type(LATENT) mismatch input_type(IMAGE)"


def test_load_image_needs_the_file_on_the_node() -> None:
    files = FileStore()
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "jobs/in.png"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }

    def exists(value: Any) -> bool | str:
        return True if files.exists(value) else f"Invalid image file: {value}"

    checks = {"LoadImage": {"image": exists}}
    missing = validate_prompt(copy(graph), catalog(files).get, checks=checks)
    (problem,) = missing.node_errors["1"]["errors"]
    assert problem["details"] == "image - Invalid image file: jobs/in.png"
    files.upload("in.png", b"png", folder_type="input", subfolder="jobs", overwrite=False)
    assert validate_prompt(copy(graph), catalog(files).get, checks=checks).ok


# -- graph ---------------------------------------------------------------------------------------


def test_execution_order_is_comfyuis_for_the_sd15_graph() -> None:
    entries = catalog()

    def is_output(node_id: str) -> bool:
        info = entries.get(SD15[node_id]["class_type"])
        return bool(info and info["output_node"])

    # as a real 0.3.75 node ran it
    assert execution_order(SD15, ["9"], is_output=is_output) == ["4", "5", "7", "6", "3", "8", "9"]
    cached = {"4", "5", "6", "7"}
    assert execution_order(SD15, ["9"], is_output=is_output, cached=cached) == ["3", "8", "9"]
    assert execution_order(SD15, ["9"], is_output=is_output, cached=set(SD15)) == ["9"]


def test_cache_keys_follow_inputs_not_node_ids() -> None:
    keys = cache_keys(SD15)
    renumbered = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd15.ckpt"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a", "clip": ["1", 1]}},
    }
    assert cache_keys(renumbered)["2"] == keys["6"]
    changed = copy(SD15)
    changed["3"]["inputs"]["seed"] = 1
    other = cache_keys(changed)
    assert other["4"] == keys["4"] and other["3"] != keys["3"] and other["9"] != keys["9"]
    salted = cache_keys(SD15, salt=lambda node_id: "new file" if node_id == "4" else None)
    assert salted["4"] != keys["4"] and salted["9"] != keys["9"]


# -- files and media -----------------------------------------------------------------------------


def test_uploads_are_renamed_like_comfyui() -> None:
    files = FileStore()

    def upload(content: bytes, overwrite: bool = False) -> str:
        return files.upload(
            "x.png", content, folder_type="input", subfolder="a/./b", overwrite=overwrite
        )

    assert upload(b"one") == "x.png"
    assert upload(b"one") == "x.png"
    assert upload(b"two") == "x (1).png"
    assert upload(b"three") == "x (2).png"
    assert upload(b"four", overwrite=True) == "x.png"
    assert files.get("input", "a/b", "x.png") == b"four"
    assert files.exists("a/b/x (1).png") and not files.exists("a/b/x (1).png [output]")
    with pytest.raises(OutsideFolder):
        files.upload("x.png", b"", folder_type="input", subfolder="../up", overwrite=False)


def test_saved_files_count_up_per_prefix() -> None:
    files = FileStore()
    first = files.save("jobs/run", ".png", b"1")
    assert first == {"filename": "run_00001_.png", "subfolder": "jobs", "type": "output"}
    assert files.save("jobs/run", ".png", b"2")["filename"] == "run_00002_.png"
    assert files.save("run", ".png", b"3")["filename"] == "run_00001_.png"
    assert files.exists("jobs/run_00002_.png [output]")
    with pytest.raises(Exception, match="outside the output folder"):
        files.save("../escape", ".png", b"")


def test_png_is_valid_and_clamped() -> None:
    image = Image.open(io.BytesIO(png(8, 4, (10, 20, 30))))
    assert image.size == (8, 4) and image.getpixel((3, 2)) == (10, 20, 30)
    assert Image.open(io.BytesIO(png(5000, 1, (0, 0, 0)))).size == (512, 1)


def test_preview_frames_parse_as_comfyui_binary_frames() -> None:
    plain = parse_binary(preview_frame(preview_jpeg(), None))
    assert isinstance(plain, PreviewFrame) and plain.event == 1
    assert plain.image_format == "JPEG" and plain.image == preview_jpeg()
    tagged = parse_binary(preview_frame(preview_jpeg(), {"node_id": "3", "prompt_id": "p"}))
    assert isinstance(tagged, PreviewFrame) and tagged.event == 4
    assert tagged.prompt_id == "p" and tagged.node_id == "3" and tagged.image == preview_jpeg()
    assert tagged.metadata is not None and tagged.metadata["image_type"] == "image/jpeg"


# -- one node, fake sessions ---------------------------------------------------------------------


class FakeSocket:
    """A websocket session that keeps what the node sends it."""

    def __init__(self) -> None:
        self.frames: list[Any] = []
        self.changed = asyncio.Event()

    async def send_text(self, data: str) -> None:
        self.frames.append(json.loads(data))
        self.changed.set()

    async def send_bytes(self, data: bytes) -> None:
        self.frames.append(parse_binary(data))
        self.changed.set()

    def of(self, prompt_id: str) -> list[str]:
        """The types of the frames that name ``prompt_id``, in order."""
        return [
            f["type"]
            for f in self.frames
            if isinstance(f, dict) and f["data"].get("prompt_id") == prompt_id
        ]

    def statuses(self) -> list[int]:
        return [
            f["data"]["status"]["exec_info"]["queue_remaining"]
            for f in self.frames
            if isinstance(f, dict) and f["type"] == "status"
        ]

    def ended(self) -> int:
        return sum(
            1
            for f in self.frames
            if isinstance(f, dict) and f["type"] == "executing" and f["data"]["node"] is None
        )

    async def wait_until(self, condition: Any) -> None:
        async with asyncio.timeout(10):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


async def test_a_node_runs_prompts_in_order_and_tells_only_their_client() -> None:
    node = SimNode(SimNodeConfig(previews=False), "http://sim")
    owner, other = FakeSocket(), FakeSocket()
    await node.open_session(owner, "owner")
    await node.open_session(other, "other")
    graph = {"1": {"class_type": "TestDelay", "inputs": {"seconds": 0.0, "steps": 2}}}
    answers = [node.submit({"prompt": copy(graph), "client_id": "owner"}) for _ in range(2)]
    assert [status for status, _ in answers] == [200, 200]
    first, again = (answer["prompt_id"] for _, answer in answers)
    assert [item[1] for item in node.queue] == [first, again]
    await owner.wait_until(lambda: owner.ended() == 2)
    assert owner.of(first) == [
        "execution_start", "execution_cached", "progress_state", "executing",
        "progress_state", "progress", "progress_state", "progress",
        "executed", "progress_state", "execution_success", "executing",
    ]  # fmt: skip
    assert owner.of(again) == [
        "execution_start", "execution_cached", "executed", "progress_state",
        "execution_success", "executing",
    ]  # fmt: skip
    assert other.frames == [f for f in other.frames if f["type"] == "status"]
    assert other.statuses() == [0, 1, 2, 2, 1, 1, 0]
    history = node.history_view()
    assert list(history) == [first, again]
    assert [entry["status"]["status_str"] for entry in history.values()] == ["success"] * 2
    assert node.history_view(max_items=1) == {again: history[again]}
    await node.close()


async def test_interrupt_and_delete_touch_only_what_comfyui_touches() -> None:
    node = SimNode(SimNodeConfig(previews=False), "http://sim")
    socket = FakeSocket()
    await node.open_session(socket, "c")
    slow = {"1": {"class_type": "TestDelay", "inputs": {"seconds": 0.2, "steps": 2}}}
    _, running = node.submit({"prompt": copy(slow), "client_id": "c"})
    await socket.wait_until(lambda: "executing" in socket.of(running["prompt_id"]))
    _, pending = node.submit({"prompt": copy(slow), "client_id": "c"})
    node.delete_pending([running["prompt_id"], "unknown"])  # running and unknown: no-ops
    node.interrupt(pending["prompt_id"])  # not the running one: ignored
    assert not node.interrupted
    node.interrupt(running["prompt_id"])
    await socket.wait_until(lambda: socket.ended() == 2)
    assert "execution_interrupted" in socket.of(running["prompt_id"])
    assert "execution_success" in socket.of(pending["prompt_id"])
    assert socket.statuses() == [0, 1, 1, 2, 1, 1, 0]
    entry = node.history_view(running["prompt_id"])[running["prompt_id"]]
    assert entry["status"]["status_str"] == "error" and entry["outputs"] == {}
    await node.close()


async def test_deleting_pending_prompts_and_clearing_the_queue() -> None:
    node = SimNode(SimNodeConfig(previews=False), "http://sim")
    socket = FakeSocket()
    await node.open_session(socket, "c")
    slow = {"1": {"class_type": "TestDelay", "inputs": {"seconds": 0.1, "steps": 1}}}
    _, running = node.submit({"prompt": copy(slow), "client_id": "c"})
    await socket.wait_until(lambda: "executing" in socket.of(running["prompt_id"]))
    ids = [node.submit({"prompt": copy(slow), "client_id": "c"})[1]["prompt_id"] for _ in range(3)]
    node.delete_pending([ids[0]])
    assert [item[1] for item in node.queue_view()["queue_pending"]] == ids[1:]
    node.clear_pending()
    await socket.wait_until(lambda: socket.ended() == 1)
    assert node.queue_view() == {"queue_running": [], "queue_pending": []}
    assert all(node.history_view(prompt_id) == {} for prompt_id in ids)
    await node.close()


async def test_history_is_bounded() -> None:
    node = SimNode(SimNodeConfig(max_history=2), "http://sim")
    socket = FakeSocket()
    await node.open_session(socket, "c")
    for seed in range(5):
        graph = {"1": {"class_type": "TestDelay", "inputs": {"seconds": 0.0, "seed": seed}}}
        node.submit({"prompt": graph, "client_id": "c"})
    await socket.wait_until(lambda: socket.ended() == 5)
    assert len(node.history) == 3  # ComfyUI drops the oldest only once it holds more than max
    await node.close()
