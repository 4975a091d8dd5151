"""The batch flow's inputs: parameter sets from a file in `batch.files_dir` or inline, with
defaults."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from comfyfleet.settings import get_settings
from flows.batch import load_items


@pytest.fixture
def files_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("COMFYFLEET_BATCH__FILES_DIR", str(tmp_path))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_defaults_apply_to_every_item_and_an_item_beats_them(files_dir: Path) -> None:
    (files_dir / "more.txt").write_text("an owl\n")
    items = load_items.fn(
        "sd15-basic", [{"prompt": "a fox", "steps": 9}], "more.txt", {"steps": 2, "seed": 1}
    )
    assert items == [
        {"prompt": "a fox", "steps": 9, "seed": 1}, {"prompt": "an owl", "steps": 2, "seed": 1}
    ]  # fmt: skip
    with pytest.raises(ValueError, match="needs `items` or a `file`"):
        load_items.fn("sd15-basic", None, None, {"steps": 2})


def test_the_flow_reads_no_file_outside_the_batch_dir(files_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path.parent / "outside.txt"
    outside.write_text("a fox\n")
    with pytest.raises(ValueError, match=r"file: .* is outside batch\.files_dir"):
        load_items.fn("sd15-basic", None, str(outside), None)


def test_csv_values_take_the_workflows_parameter_types(files_dir: Path) -> None:
    (files_dir / "p.csv").write_text("prompt,steps,cfg\na fox,3,7.5\n")
    assert load_items.fn("sd15-basic", None, "p.csv", None) == [
        {"prompt": "a fox", "steps": 3, "cfg": 7.5}
    ]
