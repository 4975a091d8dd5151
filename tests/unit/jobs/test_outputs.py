"""The output store's housekeeping."""

from __future__ import annotations

from pathlib import Path

from comfyfleet.jobs.outputs import keep_only


def test_what_an_earlier_holder_of_the_attempt_left_goes_and_the_outputs_stay(
    tmp_path: Path,
) -> None:
    (tmp_path / "comfyfleet_00002_.png").write_bytes(b"png")  # recorded by this holder
    (tmp_path / ".comfyfleet_00001_.png.xzljs3ns.part").write_bytes(b"half")  # killed mid-download
    (tmp_path / "comfyfleet_00001_.png").write_bytes(b"png")  # killed before recording it
    keep_only(tmp_path, {"comfyfleet_00002_.png"})
    assert [p.name for p in tmp_path.iterdir()] == ["comfyfleet_00002_.png"]
