"""What each simulated class does when it runs, and the UI output it returns.

- `TestDelay` (tests/comfy_nodes): sleeps ``seconds`` ÷ speed in ``steps`` slices, checking for
  an interrupt before each slice and reporting progress after it, then saves a solid PNG of the
  seed's colour and reports `test_delay` like the real node. `TestFail` raises
  `RuntimeError(message)`.
- Samplers sleep their share of the job in ``steps`` steps, a `progress` (and a preview frame)
  each. Save/preview nodes write a tiny file and list it (`images`, plus `animated` for
  animations and videos). Every other class returns nothing, at once.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from bench.simnode import media
from bench.simnode.catalog import SAMPLERS
from bench.simnode.graph import links

if TYPE_CHECKING:
    from bench.simnode.executor import Run

Output = dict[str, list[Any]]
Behaviour = Callable[["Run", str], Awaitable[Output]]

PACED_CLASSES = frozenset({"TestDelay", "TestFail"})
"""A graph with one of these runs at its pace, not the node's ``seconds``."""

ANIMATIONS = {
    "SaveAnimatedWEBP": (".webp", "ComfyUI"),
    "SaveAnimatedPNG": (".png", "ComfyUI"),
    "SaveWEBM": (".webm", "ComfyUI"),
    "SaveVideo": (".mp4", "video/ComfyUI"),
}
_TEMP_LETTERS = "abcdefghijklmnopqrstupvxyz"  # ComfyUI's own (sic)
_SIZE_INPUTS = ("width", "height")


async def _test_delay(run: Run, node_id: str) -> Output:
    seconds = float(run.value(node_id, "seconds") or 0.0)
    steps = int(run.value(node_id, "steps") or 1)
    seed = int(run.value(node_id, "seed") or 0)
    factor = 1.0 / run.node.config.speed
    started = time.monotonic()
    slice_s = max(0.0, seconds * factor) / steps
    for step in range(1, steps + 1):
        run.check_interrupt()
        await asyncio.sleep(slice_s)
        run.step(node_id, step, steps)
    run.check_interrupt()
    slept = time.monotonic() - started
    width, height = int(run.value(node_id, "width")), int(run.value(node_id, "height"))
    prefix = str(run.value(node_id, "filename_prefix"))
    saved = run.node.files.save(prefix, ".png", media.png(width, height, media.seed_colour(seed)))
    report = {
        "seconds": seconds,
        "factor": factor,
        "slept": round(slept, 4),
        "steps": steps,
        "seed": seed,
        "pid": os.getpid(),
    }
    return {"images": [saved], "test_delay": [report]}


async def _test_fail(run: Run, node_id: str) -> Output:
    raise RuntimeError(run.value(node_id, "message"))


def _sampler_steps(run: Run, node_id: str) -> int:
    steps = int(run.value(node_id, "steps") or 1)
    if run.prompt[node_id]["class_type"] == "KSamplerAdvanced":
        start = int(run.value(node_id, "start_at_step") or 0)
        end = int(run.value(node_id, "end_at_step") or steps)
        steps = min(end, steps) - start
    return max(steps, 1)


async def _sampler(run: Run, node_id: str) -> Output:
    steps = _sampler_steps(run, node_id)
    step_s = run.work_s.get(node_id, 0.0) / steps
    for step in range(1, steps + 1):
        await asyncio.sleep(step_s)
        run.step(node_id, step, steps, preview=True)
    return {}


def image_size(run: Run, node_id: str) -> tuple[int, int]:
    """The nearest literal width/height upstream of a node (64×64 when there is none)."""
    seen, todo = set(), [node_id]
    while todo:
        current = todo.pop(0)
        if current in seen or current not in run.prompt:
            continue
        seen.add(current)
        inputs = run.prompt[current].get("inputs", {})
        sizes = [inputs.get(name) for name in _SIZE_INPUTS]
        if all(isinstance(size, int | float) and not isinstance(size, bool) for size in sizes):
            return int(sizes[0]), int(sizes[1])
        todo.extend(source for _, (source, _slot) in links(run.prompt[current]))
    return 64, 64


def _colour(run: Run, node_id: str) -> tuple[int, int, int]:
    return media.seed_colour(hash((run.prompt_id, node_id)))


async def _save_image(run: Run, node_id: str) -> Output:
    prefix = str(run.value(node_id, "filename_prefix") or "ComfyUI")
    image = media.png(*image_size(run, node_id), _colour(run, node_id))
    return {"images": [run.node.files.save(prefix, ".png", image)]}


async def _preview_image(run: Run, node_id: str) -> Output:
    prefix = "ComfyUI_temp_" + "".join(random.choice(_TEMP_LETTERS) for _ in range(5))
    image = media.png(*image_size(run, node_id), _colour(run, node_id))
    return {"images": [run.node.files.save(prefix, ".png", image, folder_type="temp")]}


async def _save_animation(run: Run, node_id: str) -> Output:
    extension, default_prefix = ANIMATIONS[run.prompt[node_id]["class_type"]]
    prefix = str(run.value(node_id, "filename_prefix") or default_prefix)
    saved = run.node.files.save(prefix, extension, media.animation(extension))
    return {"images": [saved], "animated": [True]}


BEHAVIOURS: dict[str, Behaviour] = {
    "TestDelay": _test_delay,
    "TestFail": _test_fail,
    "SaveImage": _save_image,
    "PreviewImage": _preview_image,
    **dict.fromkeys(SAMPLERS, _sampler),
    **dict.fromkeys(ANIMATIONS, _save_animation),
}


async def perform(run: Run, node_id: str) -> Output:
    """Run one node: its planned work (if it is not a sampler, as one plain wait), then its
    class's behaviour; returns its UI output (empty for none)."""
    class_type = run.prompt[node_id]["class_type"]
    work_s = run.work_s.get(node_id, 0.0)
    if work_s and class_type not in SAMPLERS:
        await asyncio.sleep(work_s)
    behaviour = BEHAVIOURS.get(class_type)
    return {} if behaviour is None else await behaviour(run, node_id)


def cache_salt(run: Run, node_id: str) -> Any:
    """What a class's `IS_CHANGED` adds to its cache key (`LoadImage`: the file's hash)."""
    if run.prompt[node_id].get("class_type") == "LoadImage":
        return run.node.files.digest(str(run.value(node_id, "image")))
    return None


__all__ = ["ANIMATIONS", "BEHAVIOURS", "PACED_CLASSES", "cache_salt", "image_size", "perform"]
