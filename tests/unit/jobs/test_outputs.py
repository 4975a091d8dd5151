"""The output store's housekeeping."""

from __future__ import annotations

from pathlib import Path

from comfyfleet.jobs.outputs import drop_partial_files


def test_temp_files_of_a_killed_download_go_and_the_outputs_stay(tmp_path: Path) -> None:
    (tmp_path / "comfyfleet_00001_.png").write_bytes(b"png")
    (tmp_path / ".comfyfleet_00001_.png.xzljs3ns.part").write_bytes(b"half")
    drop_partial_files(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["comfyfleet_00001_.png"]
