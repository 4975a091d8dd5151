"""A test-only ComfyUI custom node that only some test nodes have (capability routing tests).

A ComfyUI custom node package, loaded by a real ComfyUI from the ``custom_nodes:`` entry of its
extra_model_paths.yaml (``tests/comfy_nodes_extra``), never imported by the test suite. Nodes
started with it (tests/fixtures/comfy.py ``EXTRA_CUSTOM_NODES``) have the class type
``TestOnlyHere``; the session's other nodes do not, so a graph using it may run only on them.

* ``TestOnlyHere`` takes an IMAGE and returns it inverted, and reports the node it ran on
  (``$COMFYFLEET_TEST_NODE_ID`` or the process id) in its UI output under ``ran_on``.
"""

from __future__ import annotations

import os
from typing import Any

import torch


class TestOnlyHere:
    """Invert an image; say which node did it."""

    CATEGORY = "testing"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    FUNCTION = "run"
    DESCRIPTION = "Returns the image inverted (a class type only some test nodes have)."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": ("IMAGE",)}}

    def run(self, image: torch.Tensor) -> dict[str, Any]:
        ran_on = os.environ.get("COMFYFLEET_TEST_NODE_ID") or str(os.getpid())
        return {"ui": {"ran_on": [ran_on]}, "result": (1.0 - image,)}


NODE_CLASS_MAPPINGS = {"TestOnlyHere": TestOnlyHere}
NODE_DISPLAY_NAME_MAPPINGS = {"TestOnlyHere": "Test Only Here"}
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
