"""Drafting a workflow contract from a raw ComfyUI graph (`comfyfleet workflows new`).

`draft_contract(graph, workflow_id=…, capability=…)` returns the YAML text of a contract (the
format: comfyfleet.catalog) exposing the inputs a user most likely wants to set:

- the common ones, wherever they are: the positive and negative prompt (a text encoder's `text`,
  told apart by the sampler input it feeds, `positive` or `negative`), `seed`/`noise_seed`,
  `steps`, `cfg`, `sampler_name`, `scheduler`, `denoise`, `width`, `height`, `batch_size`, video
  frames and fps, the model loaders' files (`ckpt_name`, … as type `model`) and `LoadImage.image`
  (type `image`). The same input with the same value on several nodes (SDXL's size conditioning,
  a frame rate given to the model and to the video writer) is one parameter with several targets;
- every other literal input of a node the user titled (a `_meta.title` other than the class's
  own name): a title is how a ComfyUI user marks the nodes that matter.

Defaults are the graph's values, except a seed (-1, random, as in the bundled contracts: the
catalog never falls back to a graph's seed) and an input image (none: the graph's file is the
exporter's example, so the request must give one). Numbers get the usual bounds where they are
obvious. A node is named by its title where the title finds it alone, else by its id. Without a
capability, `guess_capability` picks one. The text starts with a comment saying it is a draft.

`read_graph(text, source)` reads an API-format graph from JSON text with readable errors (the UI
format, bad JSON and its line); `comfyfleet submit --graph` reads its file with it too.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml

from comfyfleet.catalog.contract import MODEL_INPUTS, PARAM_NAME, WORKFLOW_ID
from comfyfleet.catalog.graph import Graph, default_outputs, is_link, resolve_node, title

UI_FORMAT = (
    'this is ComfyUI\'s UI (workflow) format, with top-level "nodes" and "links"; export the '
    'graph with "Save (API)" instead (in ComfyUI: Workflow > Export (API))'
)


class GraphFileError(ValueError):
    """Not an API-format graph; the message names the source and what to do."""


def is_ui_format(data: Any) -> bool:
    """ComfyUI's UI save format (`nodes` and `links` lists), not the API format."""
    return (
        isinstance(data, dict)
        and isinstance(data.get("nodes"), list)
        and isinstance(data.get("links"), list)
    )


def read_graph(text: str, source: str) -> Graph:
    """The API-format graph in JSON `text` (read from `source`, which messages name)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GraphFileError(
            f"{source}: not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    return check_graph(data, source)


def check_graph(data: Any, source: str = "the graph") -> Graph:
    """`data` as an API-format graph (a saved `/prompt` body gives its `prompt`), or a
    GraphFileError saying what it is instead."""
    if is_ui_format(data):
        raise GraphFileError(f"{source}: {UI_FORMAT}")
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        data = data["prompt"]
    if not isinstance(data, dict) or not data:
        raise GraphFileError(
            f"{source}: expected an API-format graph, a JSON object of node id -> node "
            '(export it with "Save (API)")'
        )
    for node_id, node in data.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise GraphFileError(
                f"{source}: node {node_id} has no class_type: not an API-format graph "
                '(export it with "Save (API)")'
            )
        if not isinstance(node.get("inputs", {}), dict):
            raise GraphFileError(f"{source}: node {node_id}: inputs is not an object")
    return {str(k): {**node, "inputs": node.get("inputs", {})} for k, node in data.items()}


# -- what a parameter is ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Kind:
    """A common input: the parameter it becomes."""

    name: str
    type: str | None  # None: from the graph's value (int or float)
    description: str
    low: float | None = None
    high: float | None = None
    multiple_of_8: bool = False


_SIZE = "in pixels"
_FRAMES = _Kind("frames", "int", "Number of video frames.", 1, 128)
_FPS = _Kind("fps", None, "Frames per second.", 1, 60)
COMMON: dict[str, _Kind] = {
    "width": _Kind("width", "int", f"Width {_SIZE}.", 64, 2048, multiple_of_8=True),
    "height": _Kind("height", "int", f"Height {_SIZE}.", 64, 2048, multiple_of_8=True),
    "batch_size": _Kind("batch_size", "int", "Images per job.", 1, 16),
    "video_frames": _FRAMES,
    "frames": _FRAMES,
    "length": _FRAMES,
    "frame_count": _FRAMES,
    "num_frames": _FRAMES,
    "fps": _FPS,
    "frame_rate": _FPS,
    "steps": _Kind("steps", "int", "Sampling steps.", 1, 150),
    "cfg": _Kind("cfg", "float", "Classifier-free guidance scale.", 0.0, 30.0),
    "sampler_name": _Kind("sampler", "string", "Sampling algorithm."),
    "scheduler": _Kind("scheduler", "string", "Noise schedule."),
    "denoise": _Kind(
        "denoise", "float", "How much to change the input (0 = keep it, 1 = ignore it).", 0.0, 1.0
    ),
    "seed": _Kind(
        "seed",
        "seed",
        "Noise seed; -1 picks a random one (the seed used is recorded with the job).",
    ),
    "motion_bucket_id": _Kind(
        "motion_bucket_id", "int", "How much motion (higher = more).", 1, 1023
    ),
    "augmentation_level": _Kind(
        "augmentation_level", "float", "Noise added to the input image.", 0.0, 10.0
    ),
    "min_cfg": _Kind("min_cfg", "float", "Guidance at the first frame.", 0.0, 30.0),
    "guidance": _Kind("guidance", "float", "Guidance strength.", 0.0, 100.0),
    "scale_by": _Kind("scale_by", "float", "Size factor.", 0.25, 4.0),
    "upscale_method": _Kind("upscale_method", "string", "Pixel interpolation."),
}
"""Inputs made parameters wherever they are, by input name (`noise_seed` too: see `_kind`)."""

_MODEL_PARAMS = {
    "ckpt_name": "checkpoint",
    "lora_name": "lora",
    "vae_name": "vae",
    "unet_name": "unet",
    "clip_name": "clip",
    "control_net_name": "controlnet",
    "model_name": "upscale_model",
}
TEXT_INPUTS = ("text", "text_g", "text_l", "clip_l", "t5xxl")
"""Text encoder inputs holding the prompt (CLIPTextEncode, …SDXL, …Flux, …SD3)."""
IMAGE_LOADERS = frozenset({"LoadImage"})
VIDEO_SAVERS = frozenset(
    {"SaveAnimatedWEBP", "SaveAnimatedPNG", "SaveWEBM", "SaveVideo", "VHS_VideoCombine"}
)
_PROMPTS = {
    "positive": ("prompt", "What the image should show."),
    "negative": ("negative_prompt", "What the image should not show."),
}

DEFAULT_TITLES = {
    "CheckpointLoaderSimple": "Load Checkpoint",
    "ImageOnlyCheckpointLoader": "Image Only Checkpoint Loader (img2vid model)",
    "CLIPTextEncode": "CLIP Text Encode (Prompt)",
    "CLIPTextEncodeSDXL": "CLIPTextEncodeSDXL",
    "EmptyLatentImage": "Empty Latent Image",
    "EmptySD3LatentImage": "EmptySD3LatentImage",
    "KSamplerAdvanced": "KSampler (Advanced)",
    "VAEDecode": "VAE Decode",
    "VAEEncode": "VAE Encode",
    "VAELoader": "Load VAE",
    "LoraLoader": "Load LoRA",
    "LoadImage": "Load Image",
    "ImageScale": "Upscale Image",
    "ImageScaleBy": "Upscale Image By",
    "LatentUpscale": "Upscale Latent",
    "LatentUpscaleBy": "Upscale Latent By",
    "SaveImage": "Save Image",
    "PreviewImage": "Preview Image",
    "SVD_img2vid_Conditioning": "SVD_img2vid_Conditioning",
    "VideoLinearCFGGuidance": "VideoLinearCFGGuidance",
    "ControlNetLoader": "Load ControlNet Model",
    "ControlNetApplyAdvanced": "Apply ControlNet",
    "UNETLoader": "Load Diffusion Model",
    "DualCLIPLoader": "DualCLIPLoader",
    "CLIPLoader": "Load CLIP",
}
"""ComfyUI's own titles of core nodes: a node with one of these was not titled by its user."""


@dataclass
class DraftParam:
    """One parameter of a draft: what its contract entry says."""

    name: str
    type: str
    description: str
    targets: list[tuple[str, str]]
    default: Any = None
    low: float | None = None
    high: float | None = None
    multiple_of: int | None = None
    folder: str | None = None
    extra: bool = False


# -- the draft ----------------------------------------------------------------------------------


def draft_contract(
    graph: dict[str, Any], *, workflow_id: str, capability: str | None = None
) -> str:
    """The YAML text of a draft contract for `graph` (an API-format graph), stored as
    `<capability>/<workflow_id>.json`. Raises GraphFileError for what is not such a graph, and
    ValueError for a bad id or capability."""
    graph = check_graph(graph)
    if not WORKFLOW_ID.match(workflow_id):
        raise ValueError(f"bad workflow id {workflow_id!r} (letters, digits, _ . -)")
    guessed = capability is None
    capability = capability or guess_capability(graph)
    if not WORKFLOW_ID.match(capability):
        raise ValueError(f"bad capability {capability!r} (letters, digits, _ . -)")
    params = draft_parameters(graph)
    outputs = [_ref(graph, node_id) for node_id in output_nodes(graph)]

    lines = [
        f"# DRAFT contract for {workflow_id}.json, written by `comfyfleet workflows new`.",
        "# Review it before use: keep the parameters users should set and delete the others,",
        "# name and describe them, check the bounds (add `choices` where they help), then",
        "# delete this header. The format: comfyfleet/catalog/__init__.py.",
        f"title: {_scalar(workflow_id)}",
        "description: >",
        "  Drafted from a ComfyUI graph: say what this workflow makes.",
        f"capability: {_scalar(capability)}" + ("  # guessed from the graph" if guessed else ""),
        f"graph: {_scalar(workflow_id + '.json')}",
        f"outputs: {_flow(outputs)}",
    ]
    if not params:
        lines.append("parameters: {}  # none found: add the inputs users should set")
        return "\n".join(lines) + "\n"
    lines.append("parameters:")
    for param in params:
        lines.append(f"  {param.name}:")
        lines.append(f"    type: {param.type}")
        if param.folder:
            lines.append(f"    folder: {_scalar(param.folder)}")
        if param.default is not None:
            lines.append(f"    default: {_scalar(param.default)}")
        for key, value in (("min", param.low), ("max", param.high)):
            if value is not None:
                lines.append(f"    {key}: {_scalar(_number(param.type, value))}")
        if param.multiple_of:
            lines.append(f"    multiple_of: {param.multiple_of}")
        lines.append(f"    description: {_scalar(param.description)}")
        refs = [(_ref(graph, node_id), input_name) for node_id, input_name in param.targets]
        if len(refs) == 1:
            lines.append(f"    node: {_scalar(refs[0][0])}")
            lines.append(f"    input: {_scalar(refs[0][1])}")
        else:
            lines.append("    targets:")
            lines.extend(f"      - {_flow({'node': n, 'input': i})}" for n, i in refs)
    return "\n".join(lines) + "\n"


def guess_capability(graph: Graph) -> str:
    """image_to_video (an input image, a video written), text_to_image_sdxl (an SDXL model or
    text encoder, or a size of 1024 or more), image_to_image (an input image), text_to_image."""
    classes = {node["class_type"] for node in graph.values()}
    loads_image = bool(classes & IMAGE_LOADERS)
    if loads_image and any(_writes_video(c) for c in classes):
        return "image_to_video"
    if _sdxl(graph) or _largest_side(graph) >= 1024:
        return "text_to_image_sdxl"
    return "image_to_image" if loads_image else "text_to_image"


def output_nodes(graph: Graph) -> list[str]:
    """The nodes that save files (`Save…`); failing those, the catalog's default outputs."""
    saving = [n for n in _ordered(graph) if graph[n]["class_type"].startswith("Save")]
    return saving or default_outputs(graph)


def draft_parameters(graph: Graph) -> list[DraftParam]:
    """The parameters a draft exposes, in the order of the bundled contracts."""
    roles = prompt_roles(graph)
    outputs = set(output_nodes(graph))
    groups: dict[tuple[Any, ...], DraftParam] = {}
    taken: set[tuple[str, str]] = set()

    def add(key: tuple[Any, ...], node_id: str, input_name: str, param: DraftParam) -> None:
        if (node_id, input_name) not in taken:
            taken.add((node_id, input_name))
            groups.setdefault(key, param).targets.append((node_id, input_name))

    for node_id in _ordered(graph):
        node = graph[node_id]
        encoder = node_id in roles or "TextEncode" in node["class_type"]
        for input_name, value in node["inputs"].items():
            if is_link(value):
                continue
            if encoder and input_name in TEXT_INPUTS and isinstance(value, str):
                role = roles.get(node_id, "")
                name, words = _PROMPTS.get(role, ("text", "A text prompt."))
                add(("text", role, value), node_id, input_name,
                    DraftParam(name, "string", words, [], default=value))  # fmt: skip
            elif input_name in MODEL_INPUTS and isinstance(value, str):
                folder = MODEL_INPUTS[input_name]
                words = f"A file in {folder}, or a logical name from `models:` in comfyfleet.yaml."
                name = _MODEL_PARAMS.get(input_name, input_name)
                add(("model", input_name, value), node_id, input_name,
                    DraftParam(name, "model", words, [], default=value, folder=folder))  # fmt: skip
            elif node["class_type"] in IMAGE_LOADERS and input_name == "image":
                words = "The input image, a file in the node's input folder (the job uploads it)."
                add(
                    ("image", node_id), node_id, input_name, DraftParam("image", "image", words, [])
                )
            elif (kind := _kind(input_name)) is not None and (typed := _typed(kind, value)):
                # the same input with the same value on several nodes: one parameter
                add(("common", kind.name, value), node_id, input_name, _common(kind, *typed))

    for node_id in _ordered(graph):
        custom = custom_title(graph, node_id)
        if custom is None or node_id in outputs:
            continue
        for input_name, value in graph[node_id]["inputs"].items():
            if (param_type := _value_type(value)) is not None:
                param = DraftParam(
                    input_name, param_type, f"{input_name} of node {custom}.", [],
                    default=value, extra=True,
                )  # fmt: skip
                add(("extra", node_id, input_name), node_id, input_name, param)

    order = _param_order()
    # a stable sort: parameters of one kind keep the graph's order
    params = sorted(groups.values(), key=lambda p: (p.extra, order.get(p.name, len(order))))
    names: set[str] = set()
    for param in params:
        param.name = _unique(param, graph, names)
        names.add(param.name)
    return params


def prompt_roles(graph: Graph) -> dict[str, str]:
    """Text encoder node id -> "positive" or "negative": the sampler (or guider) input it feeds,
    through conditioning nodes in between."""
    roles: dict[str, str] = {}
    for node_id in _ordered(graph):
        node = graph[node_id]
        inputs = node["inputs"]
        starts = [(role, inputs[role]) for role in ("positive", "negative") if role in inputs]
        if node["class_type"].endswith("Guider") and "conditioning" in inputs:
            starts.append(("positive", inputs["conditioning"]))
        for role, link in starts:
            for source in _encoders(graph, link, role, set()):
                roles.setdefault(source, role)
    return roles


def custom_title(graph: Graph, node_id: str) -> str | None:
    """The node's title when its user gave it one (not the class's own name)."""
    name = title(graph, node_id)
    if not name:
        return None
    class_type = graph[node_id]["class_type"]
    own = {_squash(class_type), _squash(DEFAULT_TITLES.get(class_type, class_type))}
    return None if _squash(name) in own else name


# -- helpers ------------------------------------------------------------------------------------


def _encoders(graph: Graph, link: Any, role: str, seen: set[str]) -> Iterable[str]:
    if not is_link(link) or not link:
        return []
    source = str(link[0])
    node = graph.get(source)
    if node is None or source in seen:
        return []
    seen.add(source)
    inputs = node["inputs"]
    if any(isinstance(inputs.get(name), str) for name in TEXT_INPUTS):
        return [source]
    if is_link(inputs.get(role)):
        upstream = [inputs[role]]
    else:
        upstream = [v for k, v in inputs.items() if k.startswith("conditioning") and is_link(v)]
    return [found for up in upstream for found in _encoders(graph, up, role, seen)]


def _kind(input_name: str) -> _Kind | None:
    return COMMON["seed"] if input_name == "noise_seed" else COMMON.get(input_name)


def _typed(kind: _Kind, value: Any) -> tuple[str, Any] | None:
    """The parameter type and default for a common input's graph value, or None (no fit)."""
    if isinstance(value, bool) or value is None:
        return None
    if kind.type == "string":
        return ("string", value) if isinstance(value, str) else None
    if not isinstance(value, int | float) or not math.isfinite(value):
        return None
    if kind.type == "seed":
        return ("seed", -1) if isinstance(value, int) and value >= 0 else None
    if kind.type == "int" or (kind.type is None and isinstance(value, int)):
        return ("int", int(value)) if float(value).is_integer() else None
    return "float", float(value)


def _common(kind: _Kind, param_type: str, default: Any) -> DraftParam:
    param = DraftParam(kind.name, param_type, kind.description, [], default=default)
    if param_type in ("int", "float") and kind.low is not None and kind.high is not None:
        high = kind.high
        if kind.multiple_of_8 and default >= 1024:
            high = 4096
        param.low, param.high = min(kind.low, default), max(high, default)
    if kind.multiple_of_8 and param_type == "int" and default % 8 == 0:
        param.multiple_of = 8
    return param


def _value_type(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float" if math.isfinite(value) else None
    if isinstance(value, str):
        return "string"
    return None


def _param_order() -> dict[str, int]:
    names = ["prompt", "negative_prompt", "text", "image"]
    names += [kind.name for kind in COMMON.values() if kind.name != "seed"]
    names += ["seed", *_MODEL_PARAMS.values()]
    return {name: index for index, name in enumerate(dict.fromkeys(names))}


def _unique(param: DraftParam, graph: Graph, names: set[str]) -> str:
    """The parameter's name, else `<name>_<node title>`, `<name>_<node id>`, `<name>_<n>`."""
    node_id = param.targets[0][0]
    node_title = custom_title(graph, node_id)
    if param.extra and node_title:
        candidates = [param.name, f"{_slug(node_title)}_{param.name}"]
    else:
        candidates = [param.name]
        if node_title:
            candidates.append(f"{param.name}_{_slug(node_title)}")
    candidates.append(f"{param.name}_{_slug(node_id)}")
    for candidate in candidates:
        candidate = _slug(candidate)[:64]
        if candidate not in names and PARAM_NAME.match(candidate):
            return candidate
    number = 2
    while f"{_slug(param.name)[:60]}_{number}" in names:
        number += 1
    return f"{_slug(param.name)[:60]}_{number}"


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "p"
    return slug if not slug[0].isdigit() else f"n{slug}"


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _ref(graph: Graph, node_id: str) -> str:
    """How the contract names a node: its title where that finds it alone, else its id."""
    name = title(graph, node_id)
    if name:
        try:
            if resolve_node(graph, name) == node_id:
                return name
        except LookupError:
            pass
    return node_id


def _writes_video(class_type: str) -> bool:
    return class_type in VIDEO_SAVERS or (
        class_type.startswith("Save") and ("Video" in class_type or "Animated" in class_type)
    )


def _sdxl(graph: Graph) -> bool:
    for node in graph.values():
        if "SDXL" in node["class_type"]:
            return True
        for name in ("ckpt_name", "unet_name"):
            value = node["inputs"].get(name)
            if isinstance(value, str) and (
                "XL" in value or re.search(r"(?<![a-z])(?:sd_?)?xl", value.lower())
            ):
                return True
    return False


def _largest_side(graph: Graph) -> int:
    sides = [
        value
        for node in graph.values()
        for name, value in node["inputs"].items()
        if name in ("width", "height") and isinstance(value, int) and not isinstance(value, bool)
    ]
    return max(sides, default=0)


def _ordered(graph: Graph) -> list[str]:
    return sorted(graph, key=lambda n: (0, int(n), "") if n.isdigit() else (1, 0, n))


def _number(param_type: str, value: float) -> int | float:
    return float(value) if param_type == "float" else int(value)


def _scalar(value: Any) -> str:
    """One YAML scalar on one line."""
    text = yaml.safe_dump(value, allow_unicode=True, width=math.inf)
    text = text.removesuffix("\n...\n").removesuffix("\n")
    if "\n" in text:
        text = yaml.safe_dump(value, allow_unicode=True, width=math.inf, default_style='"')
        text = text.removesuffix("\n")
    return text


def _flow(value: Any) -> str:
    """A list or mapping in YAML's flow style, on one line."""
    text = yaml.safe_dump(
        value, allow_unicode=True, width=math.inf, default_flow_style=True, sort_keys=False
    )
    return text.strip()
