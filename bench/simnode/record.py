"""Record the simulator's `/object_info` snapshot from a real ComfyUI node.

`python -m bench.simnode --record-object-info [--from-url URL]` asks a running node, or starts a
local one (the ComfyUI venv under `var/comfyui`, with the test-only custom nodes), and writes the
entries of the class types the simulator must know to `bench/simnode/object_info.json`: every
class used by a workflow graph under `workflows/`, `tests/workflows/` and `bench/workflows/`, the
test-only nodes, and a few common output nodes. Lists the simulator fills per node (checkpoint
files, input images) are emptied, so the snapshot does not depend on the recording node's disk.
No model weights are involved: only the JSON the node serves.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx

from comfyfleet.settings import REPO_ROOT

logger = logging.getLogger(__name__)

OBJECT_INFO_PATH = Path(__file__).with_name("object_info.json")
WORKFLOW_DIRS = (
    REPO_ROOT / "workflows",
    REPO_ROOT / "tests" / "workflows",
    REPO_ROOT / "bench" / "workflows",
)
TEST_CUSTOM_NODES = REPO_ROOT / "tests" / "comfy_nodes"
VAR_DIR = REPO_ROOT / "var"
EXTRA_CLASS_TYPES = (
    "TestDelay",
    "TestFail",
    "PreviewImage",
    "SaveImage",
    "SaveAnimatedPNG",
    "SaveAnimatedWEBP",
    "SaveWEBM",
    "SaveVideo",
    "CreateVideo",
    "KSamplerAdvanced",
    "ImageScale",
    "ImageScaleBy",
)
DYNAMIC_COMBOS = {
    ("CheckpointLoaderSimple", "ckpt_name"),
    ("ImageOnlyCheckpointLoader", "ckpt_name"),
    ("LoadImage", "image"),
}
"""(class, input) pairs whose choices are files on the node: the simulator fills them itself."""


def workflow_class_types(dirs: Iterable[Path] = WORKFLOW_DIRS) -> set[str]:
    """The class types of every API-format graph (`*.json`) under ``dirs``."""
    found: set[str] = set()
    for directory in dirs:
        for path in sorted(directory.rglob("*.json")):
            graph = json.loads(path.read_text())
            if isinstance(graph, dict):
                found.update(
                    node["class_type"]
                    for node in graph.values()
                    if isinstance(node, dict) and isinstance(node.get("class_type"), str)
                )
    return found


def trim(object_info: Mapping[str, Any], class_types: Iterable[str]) -> dict[str, Any]:
    """The entries of ``class_types`` (sorted), with the dynamic combo lists emptied."""
    wanted = sorted(set(class_types))
    missing = [name for name in wanted if name not in object_info]
    if missing:
        raise ValueError(f"the node does not know {missing}")
    trimmed = {name: json.loads(json.dumps(object_info[name])) for name in wanted}
    for class_type, input_name in DYNAMIC_COMBOS:
        spec = trimmed.get(class_type, {}).get("input", {}).get("required", {}).get(input_name)
        if spec is not None:
            spec[0] = []
    return trimmed


def fetch_object_info(url: str) -> dict[str, Any]:
    """GET /object_info from a running node."""
    response = httpx.get(f"{url.rstrip('/')}/object_info", timeout=60)
    response.raise_for_status()
    return response.json()


def record(url: str | None = None, path: Path = OBJECT_INFO_PATH) -> Path:
    """Write the trimmed snapshot from ``url``, or from a local node started for the purpose."""
    class_types = workflow_class_types() | set(EXTRA_CLASS_TYPES)
    if url is not None:
        object_info = fetch_object_info(url)
    else:
        from comfyfleet.local.node import LocalComfyUI, ensure_comfyui_install

        install = ensure_comfyui_install(VAR_DIR)
        with tempfile.TemporaryDirectory(prefix="simnode-record-") as workdir:
            node = LocalComfyUI(install, Path(workdir), custom_nodes=[TEST_CUSTOM_NODES])
            node.start()
            try:
                node.wait_ready(120)
                object_info = fetch_object_info(node.url)
            finally:
                node.stop()
    snapshot = trim(object_info, class_types)
    path.write_text(json.dumps(snapshot, indent=1) + "\n")
    logger.info("wrote %d class types to %s", len(snapshot), path)
    return path


__all__ = ["OBJECT_INFO_PATH", "record", "trim", "workflow_class_types"]
