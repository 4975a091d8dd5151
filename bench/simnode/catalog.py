"""What a simulated node knows about node classes: the recorded `/object_info` snapshot
(`object_info.json`, see `record.py`), with the per-node lists filled in (checkpoint files from the
node's models, `LoadImage` choices from its input folder), plus the few facts `/object_info` does
not carry (which classes sample, which validate a file input, which inputs feed the cache key)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bench.simnode.record import DYNAMIC_COMBOS, OBJECT_INFO_PATH

MODEL_FOLDERS = (
    "checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
    "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen",
    "upscale_models", "latent_upscale_models", "custom_nodes", "hypernetworks", "photomaker",
    "classifiers", "model_patches", "audio_encoders",
)  # fmt: skip
"""`GET /models` of ComfyUI 0.3.75, in its order."""

SAMPLERS = frozenset({"KSampler", "KSamplerAdvanced"})
"""Classes that report one `progress` (and a preview frame) per sampling step."""

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")

ClassInfo = Mapping[str, Any]


@functools.cache
def snapshot() -> Mapping[str, ClassInfo]:
    """The recorded `/object_info` entries (read once; never mutated)."""
    return json.loads(OBJECT_INFO_PATH.read_text())


def _with_choices(info: ClassInfo, input_name: str, choices: Sequence[str]) -> dict[str, Any]:
    required = dict(info["input"]["required"])
    required[input_name] = [list(choices), *required[input_name][1:]]
    return {**info, "input": {**info["input"], "required": required}}


class Catalog:
    """The class entries of one node: the shared snapshot with the node's own file lists.

    ``models`` maps a model folder to its files; ``input_images`` lists the top-level files of
    the node's input folder (what `LoadImage` offers)."""

    def __init__(
        self,
        models: Mapping[str, Sequence[str]],
        input_images: Callable[[], list[str]],
    ) -> None:
        self._models = models
        self._input_images = input_images

    def _choices(self, class_type: str, input_name: str) -> list[str]:
        if class_type == "LoadImage":
            return self._input_images()
        return list(self._models.get("checkpoints", ()))

    def get(self, class_type: str) -> ClassInfo | None:
        """The `/object_info` entry of ``class_type``, None for a class this node lacks."""
        info = snapshot().get(class_type)
        if info is None:
            return None
        for dynamic_class, input_name in DYNAMIC_COMBOS:
            if dynamic_class == class_type:
                info = _with_choices(info, input_name, self._choices(class_type, input_name))
        return info

    def all(self) -> dict[str, ClassInfo]:
        """Every entry, as `GET /object_info` answers."""
        return {name: info for name in snapshot() if (info := self.get(name)) is not None}


def default_value(info: ClassInfo, input_name: str) -> Any:
    """The declared default of an input (None when it has none)."""
    for category in ("required", "optional"):
        spec = info["input"].get(category, {}).get(input_name)
        if isinstance(spec, list) and len(spec) > 1 and isinstance(spec[1], dict):
            return spec[1].get("default")
    return None


def is_output(info: ClassInfo | None) -> bool:
    """An output node (what ComfyUI executes a prompt for)."""
    return info is not None and info.get("output_node") is True


__all__ = [
    "IMAGE_EXTENSIONS",
    "MODEL_FOLDERS",
    "SAMPLERS",
    "Catalog",
    "ClassInfo",
    "default_value",
    "is_output",
    "snapshot",
]
