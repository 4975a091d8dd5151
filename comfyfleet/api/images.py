"""Input images of a request → input-store refs (`comfyfleet/<sha256>.<ext>`), checked first.

An image parameter may be given as:
- an uploaded input's ref, `comfyfleet/<sha256>.png` (from `POST /api/v2/inputs`), which must exist;
- a URL of this gateway's input store (`…/api/v2/inputs/<sha256>.png`), same check;
- the image itself: base64, or a `data:image/png;base64,…` URL.

Never a server-side path (the flows would read any file the control plane can read) and never a
foreign URL (the gateway would fetch anything it is pointed at). Bytes must be a real image of an
allowed type (magic number checked, then decoded by Pillow) and at most `MAX_IMAGE_BYTES`.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from urllib.parse import unquote, urlparse

from comfyfleet.api.errors import ApiError
from comfyfleet.jobs.inputs import REF_PREFIX, InputError, InputStore, StoredInput

MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 64 * 1024 * 1024
INPUT_NAME_PATTERN = r"^[0-9a-f]{64}\.(png|jpg|jpeg|webp|gif|bmp)$"
_NAME_RE = re.compile(INPUT_NAME_PATTERN)
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", ".png", "image/png"),
    (b"\xff\xd8\xff", ".jpg", "image/jpeg"),
    (b"GIF87a", ".gif", "image/gif"),
    (b"GIF89a", ".gif", "image/gif"),
    (b"BM", ".bmp", "image/bmp"),
)
CONTENT_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
}
INPUTS_PATH = "/api/v2/inputs/"


def sniff(data: bytes) -> tuple[str, str] | None:
    """(suffix, content type) of image bytes by their magic number, None if not an image."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp", "image/webp"
    for magic, suffix, content_type in _MAGIC:
        if data.startswith(magic):
            return suffix, content_type
    return None


def store_image(store: InputStore, data: bytes, *, field: str = "image") -> StoredInput:
    """Check image bytes and put them in the input store."""
    if not data:
        raise ApiError(422, "invalid_image", f"{field}: empty", field=field)
    if len(data) > MAX_IMAGE_BYTES:
        raise ApiError(
            413,
            "too_large",
            f"{field}: {len(data)} bytes, at most {MAX_IMAGE_BYTES} allowed",
            field=field,
        )
    kind = sniff(data)
    if kind is None:
        raise ApiError(
            422, "invalid_image", f"{field}: not a PNG, JPEG, WEBP, GIF or BMP image", field=field
        )
    _decode_check(data, field)
    try:
        return store.put(data, suffix=kind[0])
    except InputError as exc:
        raise ApiError(422, "invalid_image", f"{field}: {exc}", field=field) from None


def _decode_check(data: bytes, field: str) -> None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ApiError(
                    422,
                    "invalid_image",
                    f"{field}: {img.width}x{img.height} pixels is too large",
                    field=field,
                )
            img.verify()
    except ApiError:
        raise
    except Exception as exc:  # Pillow raises many types for broken files
        raise ApiError(
            422, "invalid_image", f"{field}: not a readable image ({exc})", field=field
        ) from None


def is_stored(store: InputStore, name: str) -> bool:
    """`name` is a content-hash input name that the input store holds."""
    return _NAME_RE.fullmatch(name) is not None and (store.root / name).is_file()


def existing_ref(store: InputStore, name: str, *, field: str) -> str:
    if not is_stored(store, name):
        raise ApiError(
            422,
            "unknown_input",
            f"{field}: no uploaded input {name!r} (upload it with POST /api/v2/inputs)",
            field=field,
        )
    return REF_PREFIX + name


def resolve_image(store: InputStore, value: object, *, field: str = "image") -> str:
    """Any accepted form of an image parameter → its input ref (see the module doc)."""
    if not isinstance(value, str) or not value.strip():
        raise ApiError(
            422,
            "invalid_image",
            f"{field}: give an input ref (comfyfleet/<sha256>.png), a URL of /api/v2/inputs/… or "
            "the image in base64",
            field=field,
        )
    value = value.strip()
    if value.startswith(REF_PREFIX):
        return existing_ref(store, value[len(REF_PREFIX) :], field=field)
    inline = inline_image(value, field=field)
    if inline is not None:
        return store_image(store, inline, field=field).ref
    if value.startswith(("http://", "https://", "/")):
        path = urlparse(value).path if "://" in value else value.split("?", 1)[0]
        if path.startswith(INPUTS_PATH):
            return existing_ref(store, unquote(path[len(INPUTS_PATH) :]), field=field)
        raise ApiError(
            422,
            "invalid_image",
            f"{field}: only this gateway's input URLs ({INPUTS_PATH}<name>) are accepted; "
            "upload the image or send it in base64",
            field=field,
        )
    raise ApiError(
        422,
        "invalid_image",
        f"{field}: {value!r} is not an input ref, a gateway input URL or a base64 image "
        "(server file paths are not accepted)",
        field=field,
    )


def inline_image(value: str, *, field: str = "image") -> bytes | None:
    """The bytes of an image given inline (a base64 `data:` URL, or bare base64); None for a
    ref, a URL or a path."""
    value = value.strip()
    if value.startswith("data:"):
        header, _, encoded = value.partition(",")
        if ";base64" not in header or not encoded:
            raise ApiError(
                422, "invalid_image", f"{field}: a data: URL must be base64-encoded", field=field
            )
        return _b64(encoded, field)
    if value.startswith((REF_PREFIX, "http://", "https://", "/")) or len(value) < 64:
        return None
    return _b64(value, field)


def _b64(text: str, field: str) -> bytes:
    compact = "".join(text.split())
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        try:
            return base64.urlsafe_b64decode(compact + "=" * (-len(compact) % 4))
        except (binascii.Error, ValueError):
            raise ApiError(
                422, "invalid_image", f"{field}: not valid base64", field=field
            ) from None
