"""Recorded ComfyUI 0.3.75 traffic, as data (from shared/reference/comfyui-protocol.md).

Websocket sequences are lists of text frames (``{"type", "data"}`` dicts) or binary frames (bytes),
in the order the real server sent them for one prompt; HTTP bodies are the JSON it answered.
"""

from __future__ import annotations

import json
import struct
from typing import Any

PROMPT_ID = "8cee44a2-5e1f-4c55-9d6b-2f3a1c0e7b10"
OTHER_PROMPT_ID = "b84e0a7c-0c3d-4f1e-a2b9-77d1e5f0c9aa"
CLIENT_ID = "probe-e2ff"
T0 = 1795898304404  # ms epoch, as in the capture


def frame(type_: str, **data: Any) -> dict[str, Any]:
    return {"type": type_, "data": data}


def greeting(queue_remaining: int = 0, sid: str = CLIENT_ID) -> dict[str, Any]:
    """The first frame on every connect."""
    return frame("status", status={"exec_info": {"queue_remaining": queue_remaining}}, sid=sid)


def status(queue_remaining: int) -> dict[str, Any]:
    return frame("status", status={"exec_info": {"queue_remaining": queue_remaining}})


SERVER_FEATURE_FLAGS = frame(
    "feature_flags", supports_preview_metadata=True, max_upload_size=104857600
)

TEST_DELAY_OUTPUT = {"test_delay": [0.4]}
SAVE_IMAGE_OUTPUT = {
    "images": [{"filename": "ComfyUI_temp_plfop_00001_.png", "subfolder": "", "type": "temp"}]
}


def node_state(state: str, value: float = 0.0, max_: float = 1.0, node: str = "1") -> dict:
    return {
        "value": value,
        "max": max_,
        "state": state,
        "node_id": node,
        "prompt_id": PROMPT_ID,
        "display_node_id": node,
        "parent_node_id": None,
        "real_node_id": node,
    }


def success(prompt_id: str = PROMPT_ID) -> list[dict[str, Any]]:
    """TestDelay 0.4 s in 4 steps → PreviewImage, in the server's order."""
    p = prompt_id
    return [
        status(1),
        frame("execution_start", prompt_id=p, timestamp=T0),
        frame("execution_cached", nodes=[], prompt_id=p, timestamp=T0 + 1),
        frame("executing", node="1", display_node="1", prompt_id=p),
        frame("progress_state", prompt_id=p, nodes={"1": node_state("running")}),
        *[frame("progress", value=i, max=4, prompt_id=p, node="1") for i in range(1, 5)],
        frame("progress_state", prompt_id=p, nodes={"1": node_state("finished", 4, 4)}),
        frame("executed", node="1", display_node="1", output=TEST_DELAY_OUTPUT, prompt_id=p),
        frame("executing", node="2", display_node="2", prompt_id=p),
        frame("executed", node="2", display_node="2", output=SAVE_IMAGE_OUTPUT, prompt_id=p),
        frame("execution_success", prompt_id=p, timestamp=T0 + 640),
        status(0),
        frame("executing", node=None, prompt_id=p),
    ]


def cached(prompt_id: str = PROMPT_ID) -> list[dict[str, Any]]:
    """The identical prompt again: everything cached, ``executed`` replayed, no progress."""
    p = prompt_id
    return [
        status(1),
        frame("execution_start", prompt_id=p, timestamp=T0 + 5000),
        frame("execution_cached", nodes=["1", "2"], prompt_id=p, timestamp=T0 + 5001),
        frame("executed", node="1", display_node="1", output=TEST_DELAY_OUTPUT, prompt_id=p),
        frame("executed", node="2", display_node="2", output=SAVE_IMAGE_OUTPUT, prompt_id=p),
        frame("execution_success", prompt_id=p, timestamp=T0 + 5003),
        status(0),
        frame("executing", node=None, prompt_id=p),
    ]


EXECUTION_ERROR_DATA = {
    "prompt_id": PROMPT_ID,
    "node_id": "2",
    "node_type": "TestFail",
    "executed": ["1"],
    "exception_message": "boom\n",
    "exception_type": "RuntimeError",
    "traceback": [
        '  File ".../execution.py", line 510, in execute\n    output_data, ...\n',
        '  File ".../custom_nodes/test_nodes/__init__.py", line 88, in run\n'
        "    raise RuntimeError(message)\n",
    ],
    "current_inputs": {"message": ["boom"], "image": ["tensor([[[[0.5000, 0.5000]]]])"]},
    "current_outputs": ["1", "2"],
    "timestamp": T0 + 721,
}


def execution_error(prompt_id: str = PROMPT_ID) -> list[dict[str, Any]]:
    """TestDelay → TestFail("boom")."""
    p = prompt_id
    return [
        status(1),
        frame("execution_start", prompt_id=p, timestamp=T0),
        frame("execution_cached", nodes=[], prompt_id=p, timestamp=T0 + 1),
        frame("executing", node="1", display_node="1", prompt_id=p),
        frame("progress", value=1, max=1, prompt_id=p, node="1"),
        frame("executed", node="1", display_node="1", output=TEST_DELAY_OUTPUT, prompt_id=p),
        frame("executing", node="2", display_node="2", prompt_id=p),
        {"type": "execution_error", "data": {**EXECUTION_ERROR_DATA, "prompt_id": p}},
        status(0),
        frame("executing", node=None, prompt_id=p),
    ]


EXECUTION_INTERRUPTED_DATA = {
    "prompt_id": PROMPT_ID,
    "node_id": "1",
    "node_type": "TestDelay",
    "executed": [],
    "timestamp": T0 + 2326,
}


def execution_interrupted(prompt_id: str = PROMPT_ID) -> list[dict[str, Any]]:
    """POST /interrupt while TestDelay runs."""
    p = prompt_id
    return [
        status(1),
        frame("execution_start", prompt_id=p, timestamp=T0),
        frame("execution_cached", nodes=[], prompt_id=p, timestamp=T0 + 1),
        frame("executing", node="1", display_node="1", prompt_id=p),
        frame("progress", value=1, max=8, prompt_id=p, node="1"),
        {"type": "execution_interrupted", "data": {**EXECUTION_INTERRUPTED_DATA, "prompt_id": p}},
        status(0),
        frame("executing", node=None, prompt_id=p),
    ]


# -- binary frames ------------------------------------------------------------------------------

JPEG_BYTES = b"\xff\xd8\xff\xe0" + b"\x00" * 60 + b"\xff\xd9"
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40


def preview_image(image: bytes = JPEG_BYTES, image_format: int = 1) -> bytes:
    """Binary event 1 (PREVIEW_IMAGE): ``>I 1``, ``>I format`` (1 JPEG, 2 PNG), image."""
    return struct.pack(">I", 1) + struct.pack(">I", image_format) + image


def preview_with_metadata(
    prompt_id: str = PROMPT_ID, node_id: str = "3", image: bytes = PNG_BYTES
) -> bytes:
    """Binary event 4: ``>I 4``, ``>I length``, JSON metadata, image (server.py)."""
    metadata = json.dumps(
        {
            "node_id": node_id,
            "prompt_id": prompt_id,
            "display_node_id": node_id,
            "parent_node_id": None,
            "real_node_id": node_id,
            "image_type": "image/png",
        }
    ).encode()
    return struct.pack(">I", 4) + struct.pack(">I", len(metadata)) + metadata + image


def progress_text(node_id: str = "3", text: str = "loading model") -> bytes:
    """Binary event 3 (TEXT): ``>I 3``, ``>I len(node_id)``, node id, text."""
    node = node_id.encode()
    return struct.pack(">I", 3) + struct.pack(">I", len(node)) + node + text.encode()


def ksampler_with_previews(prompt_id: str = PROMPT_ID) -> list[dict[str, Any] | bytes]:
    """A 2-step KSampler run with latent2rgb previews (event 1 and, opted in, event 4)."""
    p = prompt_id
    return [
        frame("execution_start", prompt_id=p, timestamp=T0),
        frame("execution_cached", nodes=[], prompt_id=p, timestamp=T0 + 1),
        frame("executing", node="3", display_node="3", prompt_id=p),
        frame("progress", value=1, max=2, prompt_id=p, node="3"),
        preview_image(),
        preview_with_metadata(prompt_id=OTHER_PROMPT_ID),  # someone else's: not ours
        frame("progress", value=2, max=2, prompt_id=p, node="3"),
        preview_with_metadata(prompt_id=p),
        progress_text(),
        frame("executed", node="9", output=SAVE_IMAGE_OUTPUT, prompt_id=p),
        frame("execution_success", prompt_id=p, timestamp=T0 + 900),
    ]


UNKNOWN_FRAMES = [
    frame("crystools.monitor", cpu_utilization=12.5, ram_used_percent=40.1),
    frame("custom_node.log", prompt_id=PROMPT_ID, text="hello from a custom node"),
    frame("progress", value="not a number", max=4, prompt_id=PROMPT_ID),  # known type, bad data
]


# -- HTTP bodies --------------------------------------------------------------------------------

GRAPH = {
    "1": {"class_type": "TestDelay", "inputs": {"seconds": 0.4, "seed": 1, "steps": 4}},
    "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
}

SUBMIT_OK = {"prompt_id": PROMPT_ID, "number": 20, "node_errors": {}}

REJECT_BAD_VALUE = {
    "error": {
        "type": "prompt_outputs_failed_validation",
        "message": "Prompt outputs failed validation",
        "details": "Value -5.0 smaller than min of 0.0: seconds",
        "extra_info": {},
    },
    "node_errors": {
        "1": {
            "errors": [
                {
                    "type": "value_smaller_than_min",
                    "message": "Value -5.0 smaller than min of 0.0",
                    "details": "seconds",
                    "extra_info": {
                        "input_name": "seconds",
                        "input_config": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 3600.0}],
                        "received_value": -5.0,
                    },
                }
            ],
            "dependent_outputs": ["1", "2"],
            "class_type": "TestDelay",
        }
    },
}

REJECT_MISSING_CHECKPOINT = {
    "error": {
        "type": "prompt_outputs_failed_validation",
        "message": "Prompt outputs failed validation",
        "details": "",
        "extra_info": {},
    },
    "node_errors": {
        "1": {
            "errors": [
                {
                    "type": "value_not_in_list",
                    "message": "Value not in list",
                    "details": "ckpt_name: 'missing.safetensors' not in "
                    "['tiny-sd15.ckpt', 'tiny-sdxl.ckpt', 'tiny-svd.ckpt']",
                    "extra_info": {
                        "input_name": "ckpt_name",
                        "input_config": [
                            ["tiny-sd15.ckpt", "tiny-sdxl.ckpt", "tiny-svd.ckpt"],
                            {"tooltip": "The name of the checkpoint (model) to load."},
                        ],
                        "received_value": "missing.safetensors",
                    },
                }
            ],
            "dependent_outputs": ["6"],
            "class_type": "CheckpointLoaderSimple",
        }
    },
}

REJECT_UNKNOWN_CLASS = {
    "error": {
        "type": "invalid_prompt",
        "message": "Cannot execute because node NoSuchNode does not exist.",
        "details": "Node ID '#1'",
        "extra_info": {},
    },
    "node_errors": {},
}

REJECT_NO_OUTPUTS = {
    "error": {
        "type": "prompt_no_outputs",
        "message": "Prompt has no outputs",
        "details": "",
        "extra_info": {},
    },
    "node_errors": {},
}


def history_entry(
    prompt_id: str = PROMPT_ID,
    *,
    status_str: str = "success",
    messages: list[list[Any]] | None = None,
    outputs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A GET /history/{id} body (``{id: entry}``)."""
    p = prompt_id
    if messages is None:
        messages = [
            ["execution_start", {"prompt_id": p, "timestamp": T0}],
            ["execution_cached", {"nodes": [], "prompt_id": p, "timestamp": T0 + 1}],
            ["execution_success", {"prompt_id": p, "timestamp": T0 + 640}],
        ]
    if outputs is None:
        outputs = {"1": TEST_DELAY_OUTPUT, "2": SAVE_IMAGE_OUTPUT}
    return {
        p: {
            "prompt": [20, p, GRAPH, {"client_id": CLIENT_ID, "create_time": T0 - 1}, ["1", "2"]],
            "outputs": outputs,
            "status": {
                "status_str": status_str,
                "completed": status_str == "success",
                "messages": messages,
            },
            "meta": {"2": {"node_id": "2", "display_node": "2", "parent_node": None}},
        }
    }


def history_error(prompt_id: str = PROMPT_ID) -> dict[str, Any]:
    p = prompt_id
    return history_entry(
        p,
        status_str="error",
        messages=[
            ["execution_start", {"prompt_id": p, "timestamp": T0}],
            ["execution_cached", {"nodes": [], "prompt_id": p, "timestamp": T0 + 1}],
            ["execution_error", {**EXECUTION_ERROR_DATA, "prompt_id": p}],
        ],
        outputs={"1": TEST_DELAY_OUTPUT},
    )


def history_interrupted(prompt_id: str = PROMPT_ID) -> dict[str, Any]:
    p = prompt_id
    return history_entry(
        p,
        status_str="error",
        messages=[
            ["execution_start", {"prompt_id": p, "timestamp": T0}],
            ["execution_interrupted", {**EXECUTION_INTERRUPTED_DATA, "prompt_id": p}],
        ],
        outputs={},
    )


def queue_item(number: float, prompt_id: str) -> list[Any]:
    return [number, prompt_id, GRAPH, {"client_id": CLIENT_ID}, ["1", "2"]]


QUEUE = {
    "queue_running": [queue_item(32, "67f6")],
    "queue_pending": [queue_item(-35, "5f01"), queue_item(34, "b84e"), queue_item(33, "e027")],
}

SYSTEM_STATS = {
    "system": {
        "os": "posix",
        "ram_total": 25276502016,
        "ram_free": 23722586112,
        "comfyui_version": "0.3.75",
        "python_version": "3.11.7",
        "pytorch_version": "2.13.0+cpu",
        "embedded_python": False,
        "argv": ["main.py", "--cpu"],
    },
    "devices": [{"name": "cpu", "type": "cpu", "index": None, "vram_total": 25276502016}],
}

OBJECT_INFO_TEST_DELAY = {
    "TestDelay": {
        "input": {
            "required": {"seconds": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 3600.0}]},
            "optional": {"image": ["IMAGE"], "steps": ["INT", {"default": 4}]},
        },
        "output": ["IMAGE"],
        "name": "TestDelay",
        "category": "testing",
        "output_node": True,
    }
}

MODEL_FOLDERS = ["checkpoints", "configs", "loras", "vae", "embeddings"]
CHECKPOINTS = ["tiny-sd15.ckpt", "tiny-sdxl.ckpt", "tiny-svd.ckpt"]
