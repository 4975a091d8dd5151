"""Live previews of a running job: the latest sampler preview as one small file in the store.

ComfyUI sends preview frames while it samples (binary websocket frames, parsed by the client
into `PreviewFrame`s; how a node makes them is its own `--preview-method`). The code following
an attempt hands each frame's bytes to a `PreviewWriter`, which keeps at most
`MAX_PER_SECOND` a second, shrinks them to a JPEG of at most `MAX_SIDE` px and replaces
`<store>/<job>/.preview.jpg` atomically (write + rename). The web process reads that file
(`read_preview`) when it looks at the job anyway: no Prefect event, artifact or database write
per preview, so previews cost the control plane nothing per job beyond a file write at 2/s.
The writer removes the file when the attempt ends; readers ignore it for a job that ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from comfyfleet.settings import get_settings

log = logging.getLogger(__name__)

PREVIEW_NAME = ".preview.jpg"
MAX_SIDE = 256
MAX_PER_SECOND = 2.0
JPEG_QUALITY = 75


def preview_path(job_id: str, *, outputs_dir: str | Path | None = None) -> Path:
    """Where a job's latest preview lives: `<store>/<job>/.preview.jpg`."""
    if not job_id or "/" in job_id or job_id.startswith("."):
        raise ValueError(f"job_id: not a job id: {job_id!r}")
    store = Path(outputs_dir if outputs_dir is not None else get_settings().store.outputs_dir)
    return store / job_id / PREVIEW_NAME


def shrink(image: bytes, *, max_side: int = MAX_SIDE, quality: int = JPEG_QUALITY) -> bytes:
    """The image as a JPEG that fits in `max_side` × `max_side` (aspect kept)."""
    from PIL import Image

    with Image.open(io.BytesIO(image)) as img:
        img.draft("RGB", (max_side, max_side))  # JPEG: decode at a smaller scale when it can
        img = img.convert("RGB")
        img.thumbnail((max_side, max_side))
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=quality)
        return out.getvalue()


class PreviewWriter:
    """Throttled, shrunk, atomic writes of one job's preview; `close()` removes it."""

    def __init__(
        self,
        job_id: str,
        *,
        outputs_dir: str | Path | None = None,
        max_per_second: float = MAX_PER_SECOND,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = preview_path(job_id, outputs_dir=outputs_dir)
        self.interval_s = 1.0 / max_per_second
        self.clock = clock
        self.written = 0
        self._last: float | None = None

    def due(self) -> bool:
        """Whether a frame offered now would be kept (cheap: no decoding)."""
        return self._last is None or self.clock() - self._last >= self.interval_s

    def offer(self, image: bytes) -> bool:
        """Keep the frame if one is due; True when it was written. A frame that does not
        decode is dropped (logged), never raised: previews must not fail a job."""
        if not self.due():
            return False
        self._last = self.clock()
        try:
            data = shrink(image)
        except Exception as exc:
            log.debug("preview of %s dropped: %s", self.path.parent.name, exc)
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".preview.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self.written += 1
        return True

    async def aoffer(self, image: bytes) -> bool:
        """`offer` with the decoding and the write off the event loop."""
        if not self.due():
            return False
        return await asyncio.to_thread(self.offer, image)

    def close(self) -> None:
        """The attempt ended: the preview goes."""
        with contextlib.suppress(OSError):
            self.path.unlink()


@dataclass(frozen=True)
class Preview:
    """A job's latest preview: JPEG bytes and a sequence that grows with each new frame."""

    job_id: str
    data: bytes
    seq: int

    def data_url(self) -> str:
        import base64

        return "data:image/jpeg;base64," + base64.b64encode(self.data).decode()


def read_preview(
    job_id: str, *, outputs_dir: str | Path | None = None, newer_than: int | None = None
) -> Preview | None:
    """The job's latest preview, or None (none yet, or none newer than `newer_than`)."""
    path = preview_path(job_id, outputs_dir=outputs_dir)
    try:
        seq = path.stat().st_mtime_ns
        if newer_than is not None and seq <= newer_than:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    return Preview(job_id=job_id, data=data, seq=seq) if data else None
