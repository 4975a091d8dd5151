"""Live previews: throttled to 2 a second, shrunk to a small JPEG, replaced atomically in the
job's store folder, read back newest-first, removed when the attempt ends."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from comfyfleet.jobs.previews import (
    MAX_SIDE,
    PREVIEW_NAME,
    PreviewWriter,
    preview_path,
    read_preview,
)


def jpeg(color: str, size: tuple[int, int] = (512, 384)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="JPEG")
    return out.getvalue()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_frames_are_kept_at_most_twice_a_second_and_shrunk_to_a_small_jpeg(
    tmp_path: Path,
) -> None:
    clock = Clock()
    writer = PreviewWriter("job1", outputs_dir=tmp_path, clock=clock)
    assert writer.offer(jpeg("red"))
    assert not writer.offer(jpeg("blue"))  # same instant: dropped
    clock.now += 0.3
    assert not writer.offer(jpeg("blue"))
    clock.now += 0.25
    assert writer.offer(jpeg("blue"))
    assert writer.written == 2
    path = tmp_path / "job1" / PREVIEW_NAME
    with Image.open(path) as img:
        assert img.format == "JPEG" and max(img.size) <= MAX_SIDE and img.size == (256, 192)
        assert img.getpixel((10, 10))[2] > 200  # the blue one, the latest
    assert [p.name for p in path.parent.iterdir()] == [PREVIEW_NAME]  # no temp files left


def test_the_reader_sees_each_new_preview_once_and_nothing_after_the_attempt_ends(
    tmp_path: Path,
) -> None:
    clock = Clock()
    writer = PreviewWriter("job2", outputs_dir=tmp_path, clock=clock)
    assert read_preview("job2", outputs_dir=tmp_path) is None
    writer.offer(jpeg("red", (64, 64)))
    first = read_preview("job2", outputs_dir=tmp_path)
    assert first is not None and first.data.startswith(b"\xff\xd8")
    assert first.data_url().startswith("data:image/jpeg;base64,/9j/")
    assert read_preview("job2", outputs_dir=tmp_path, newer_than=first.seq) is None
    clock.now += 1
    writer.offer(jpeg("green", (64, 64)))
    second = read_preview("job2", outputs_dir=tmp_path, newer_than=first.seq)
    assert second is not None and second.seq > first.seq and second.data != first.data
    writer.close()
    assert read_preview("job2", outputs_dir=tmp_path) is None
    writer.close()  # twice is fine


def test_a_frame_that_does_not_decode_is_dropped_not_raised(tmp_path: Path) -> None:
    writer = PreviewWriter("job3", outputs_dir=tmp_path)
    assert not writer.offer(b"not an image")
    assert read_preview("job3", outputs_dir=tmp_path) is None


async def test_offering_from_async_code_writes_off_the_loop(tmp_path: Path) -> None:
    writer = PreviewWriter("job4", outputs_dir=tmp_path)
    assert await writer.aoffer(jpeg("red"))
    assert not await writer.aoffer(jpeg("red"))  # throttled before any decoding
    assert read_preview("job4", outputs_dir=tmp_path) is not None


@pytest.mark.parametrize("bad", ["", "../etc", ".hidden", "a/b"])
def test_a_preview_path_needs_a_plain_job_id(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="job_id"):
        preview_path(bad, outputs_dir=tmp_path)
