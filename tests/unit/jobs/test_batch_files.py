"""Batch files: one reader for the batch flow and `comfyfleet batch submit`."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfyfleet.jobs.batch_files import (
    BatchFileError,
    parse_items,
    read_items,
    resolve_file,
    typed_items,
)


def test_items_come_from_csv_jsonl_yaml_or_text_files(tmp_path: Path) -> None:
    files = {
        "a.csv": "prompt,steps\na fox,3\n\nan owl,4\n",
        "a.jsonl": '{"prompt": "a fox", "steps": 3}\n\n{"prompt": "an owl"}\n',
        "a.yaml": "- {prompt: a fox}\n- {prompt: an owl}\n",
        "a.YML": "- {prompt: a fox}\n",
        "a.txt": "a fox\n\n an owl \n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert read_items(tmp_path / "a.csv") == [
        {"prompt": "a fox", "steps": "3"}, {"prompt": "an owl", "steps": "4"}
    ]  # fmt: skip
    assert read_items(tmp_path / "a.jsonl") == [
        {"prompt": "a fox", "steps": 3},
        {"prompt": "an owl"},
    ]
    assert read_items(tmp_path / "a.yaml") == [{"prompt": "a fox"}, {"prompt": "an owl"}]
    assert read_items(tmp_path / "a.YML") == [{"prompt": "a fox"}]
    assert read_items(tmp_path / "a.txt") == [{"prompt": "a fox"}, {"prompt": "an owl"}]


def test_a_csv_value_may_hold_commas_and_newlines_when_quoted() -> None:
    text = 'prompt,seed\n"a fox, red\nand small",1\n'
    assert parse_items(text, suffix=".csv") == [{"prompt": "a fox, red\nand small", "seed": "1"}]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.yaml", "prompt: a fox\n", r"a\.yaml: expected a YAML list of mappings"),
        ("a.yaml", "- a fox\n", r"a\.yaml: item 1: expected a mapping"),
        ("a.yaml", "- [unclosed\n", r"a\.yaml: not YAML"),
        ("a.jsonl", '{"prompt": "ok"}\n{"prompt": \n', r"a\.jsonl: line 2: not JSON"),
        ("a.jsonl", '["a list"]\n', r"a\.jsonl: line 1: expected a JSON object"),
        ("a.csv", "prompt\na fox,extra\n", r"a\.csv: line 2: more values than the header"),
        ("a.xml", "<items/>", r"a\.xml: unsupported batch file type '\.xml'"),
    ],
)
def test_unusable_files_say_why_and_where(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(BatchFileError, match=message):
        read_items(tmp_path / name)


def test_a_missing_or_binary_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(BatchFileError, match=r"nope\.txt: No such file"):
        read_items(tmp_path / "nope.txt")
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(BatchFileError, match=r"b\.txt: not UTF-8 text"):
        read_items(tmp_path / "b.txt")


def test_server_side_files_are_read_only_from_the_batch_dir(tmp_path: Path) -> None:
    files_dir = tmp_path / "batch"
    (files_dir / "sub").mkdir(parents=True)
    (files_dir / "sub" / "p.txt").write_text("a fox\n")
    (tmp_path / "secret.txt").write_text("no\n")
    assert resolve_file("sub/p.txt", files_dir=files_dir) == (files_dir / "sub" / "p.txt")
    assert resolve_file(str(files_dir / "sub" / "p.txt"), files_dir=files_dir).is_file()
    for outside in ("../secret.txt", str(tmp_path / "secret.txt"), "/etc/passwd"):
        with pytest.raises(BatchFileError, match=r"file: .* is outside batch\.files_dir"):
            resolve_file(outside, files_dir=files_dir)
    with pytest.raises(BatchFileError, match=r"file: no batch file 'gone\.txt'"):
        resolve_file("gone.txt", files_dir=files_dir)


def test_text_formats_get_the_workflows_types_and_json_keeps_its_own() -> None:
    parse = {"steps": int, "cfg": float}
    items = [{"prompt": "a fox", "steps": "3", "cfg": "7.5"}]
    typed = typed_items(items, suffix=".csv", parse=lambda k, v: parse.get(k, str)(v))
    assert typed == [{"prompt": "a fox", "steps": 3, "cfg": 7.5}]
    assert typed_items(items, suffix=".jsonl", parse=lambda k, v: 0) == items
