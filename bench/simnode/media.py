"""The bytes a simulated node produces: tiny valid PNGs (solid colour, any size up to a cap),
a tiny JPEG for preview frames, small animation/video files, and ComfyUI's binary websocket
frames (`>I event` + payload; event 1 `>I format` + image, event 4 `>I length` + JSON metadata +
image)."""

from __future__ import annotations

import functools
import io
import json
import random
import struct
import zlib
from collections.abc import Mapping
from typing import Any

PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
JPEG = 1
MAX_SIDE = 512
"""Saved images are at most this wide and high (the simulator has no use for big ones)."""

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(tag + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


@functools.lru_cache(maxsize=64)
def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A valid 8-bit RGB PNG of one colour (sides clamped to 1…MAX_SIDE)."""
    width = min(max(int(width), 1), MAX_SIDE)
    height = min(max(int(height), 1), MAX_SIDE)
    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        _PNG_MAGIC
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(row * height, 6))
        + _chunk(b"IEND", b"")
    )


def seed_colour(seed: int) -> tuple[int, int, int]:
    """The colour the test delay node paints for ``seed`` (its `_solid_image`, as 8-bit)."""
    rng = random.Random(seed)
    channels = [rng.random() for _ in range(3)]
    return (int(255.0 * channels[0]), int(255.0 * channels[1]), int(255.0 * channels[2]))


@functools.cache
def preview_jpeg() -> bytes:
    """A small JPEG for preview frames (made once)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (96, 128, 160)).save(buffer, format="JPEG", quality=60)
    return buffer.getvalue()


@functools.cache
def animation(extension: str) -> bytes:
    """A tiny two-frame animation (`.webp` or `.png`), or a stub container for video extensions
    (`.webm`, `.mp4`: the right magic bytes, not a playable stream)."""
    if extension == ".webm":
        return bytes.fromhex("1a45dfa3") + b"\x9f\x42\x86\x81\x01" + b"simulated webm"
    if extension == ".mp4":
        return struct.pack(">I", 20) + b"ftypisom" + b"\x00\x00\x02\x00" + b"isom"
    from PIL import Image

    frames = [Image.new("RGB", (8, 8), colour) for colour in ((200, 40, 40), (40, 40, 200))]
    buffer = io.BytesIO()
    image_format = "WEBP" if extension == ".webp" else "PNG"
    frames[0].save(
        buffer, format=image_format, save_all=True, append_images=frames[1:], duration=100, loop=0
    )
    return buffer.getvalue()


def binary_frame(event: int, payload: bytes) -> bytes:
    """One binary websocket frame as ComfyUI encodes it."""
    return struct.pack(">I", event) + payload


def preview_frame(image: bytes, metadata: Mapping[str, Any] | None) -> bytes:
    """A JPEG preview: event 4 with ``metadata`` (+ `image_type`), else event 1."""
    if metadata is None:
        return binary_frame(PREVIEW_IMAGE, struct.pack(">I", JPEG) + image)
    encoded = json.dumps({**metadata, "image_type": "image/jpeg"}).encode()
    payload = struct.pack(">I", len(encoded)) + encoded + image
    return binary_frame(PREVIEW_IMAGE_WITH_METADATA, payload)


__all__ = [
    "MAX_SIDE",
    "PREVIEW_IMAGE",
    "PREVIEW_IMAGE_WITH_METADATA",
    "animation",
    "binary_frame",
    "png",
    "preview_frame",
    "preview_jpeg",
    "seed_colour",
]
