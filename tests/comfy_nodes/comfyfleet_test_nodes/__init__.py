"""Test-only ComfyUI custom nodes: a cooperative delay and a node that always fails.

This folder is a ComfyUI custom node package; it is loaded by a real ComfyUI (through the
``custom_nodes:`` entry of the extra_model_paths.yaml that ``comfyfleet.local.node.process``
writes), never imported by the test suite. It runs inside the ComfyUI venv, so it may import
ComfyUI's own modules (``comfy``, ``nodes``) but nothing from comfyfleet.

* ``TestDelay`` sleeps ``seconds * $COMFYFLEET_TEST_DELAY_FACTOR`` in ``steps`` slices, reports
  progress after each slice (``progress`` websocket messages), honours ``/interrupt`` between
  slices, and returns a ``width`` x ``height`` IMAGE whose colour depends on ``seed``. It is an
  output node: alone it is a valid one-node prompt, it saves the image as a PNG into output/
  (``images`` in its UI output, like SaveImage) and reports what it did under ``test_delay``.
* ``TestFail`` raises ``RuntimeError(message)`` (an ``execution_error`` on the websocket).
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import comfy.model_management
import comfy.utils
import nodes
import torch

DELAY_FACTOR_ENV = "COMFYFLEET_TEST_DELAY_FACTOR"
_MAX_SEED = 0xFFFFFFFFFFFFFFFF


def _delay_factor() -> float:
    """The node-wide delay multiplier (a slow node > 1.0, a fast one < 1.0)."""
    raw = os.environ.get(DELAY_FACTOR_ENV, "").strip()
    return float(raw) if raw else 1.0


def _solid_image(width: int, height: int, seed: int) -> torch.Tensor:
    """A 1 x height x width x 3 float image filled with one seed-dependent colour."""
    rng = random.Random(seed)
    colour = torch.tensor([rng.random() for _ in range(3)], dtype=torch.float32)
    return colour.expand(1, height, width, 3).contiguous()


class TestDelay:
    """Sleep in slices with progress and interrupt checks; return and save a solid image."""

    CATEGORY = "testing"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    FUNCTION = "run"
    OUTPUT_NODE = True
    DESCRIPTION = "Sleeps `seconds` (times the node's delay factor) and returns a solid image."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        size = {"default": 64, "min": 1, "max": 4096, "step": 1}
        return {
            "required": {
                "seconds": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 3600.0, "step": 0.01}),
            },
            "optional": {
                "seed": ("INT", {"default": 0, "min": 0, "max": _MAX_SEED}),
                "steps": ("INT", {"default": 4, "min": 1, "max": 10000}),
                "width": ("INT", size),
                "height": ("INT", size),
                "image": ("IMAGE", {"tooltip": "only orders the graph; its pixels are ignored"}),
                "filename_prefix": ("STRING", {"default": "comfyfleet-test"}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def run(
        self,
        seconds: float,
        seed: int = 0,
        steps: int = 4,
        width: int = 64,
        height: int = 64,
        image: torch.Tensor | None = None,
        filename_prefix: str = "comfyfleet-test",
        prompt: dict[str, Any] | None = None,
        extra_pnginfo: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Sleep, report progress, save the image; ``image`` only orders the graph."""
        del image
        factor = _delay_factor()
        total = max(0.0, seconds * factor)
        progress = comfy.utils.ProgressBar(steps)
        started = time.monotonic()
        for step in range(1, steps + 1):
            comfy.model_management.throw_exception_if_processing_interrupted()
            time.sleep(total / steps)
            progress.update_absolute(step)
        comfy.model_management.throw_exception_if_processing_interrupted()
        slept = time.monotonic() - started
        result = _solid_image(width, height, seed)
        saved = nodes.SaveImage().save_images(
            result, filename_prefix=filename_prefix, prompt=prompt, extra_pnginfo=extra_pnginfo
        )
        report = {
            "seconds": seconds,
            "factor": factor,
            "slept": round(slept, 4),
            "steps": steps,
            "seed": seed,
            "pid": os.getpid(),
        }
        ui = {"images": saved["ui"]["images"], "test_delay": [report]}
        return {"ui": ui, "result": (result,)}


class TestFail:
    """Raise RuntimeError(message): the node-exception path of an orchestrator."""

    CATEGORY = "testing"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    DESCRIPTION = "Always raises RuntimeError(message)."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"message": ("STRING", {"default": "boom"})},
            "optional": {"image": ("IMAGE",)},
        }

    def run(self, message: str, image: torch.Tensor | None = None) -> dict[str, Any]:
        """Fail with the given message."""
        del image
        raise RuntimeError(message)


NODE_CLASS_MAPPINGS = {"TestDelay": TestDelay, "TestFail": TestFail}
NODE_DISPLAY_NAME_MAPPINGS = {"TestDelay": "Test Delay", "TestFail": "Test Fail"}
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
