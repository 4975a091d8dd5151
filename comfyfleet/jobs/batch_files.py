"""Batch files: the parameter sets of a batch, one per item, as the batch flow and the CLI read
them. One reader for both (flows/batch.py on the server, `comfyfleet batch submit` on the
client).

Formats, chosen by the file's suffix:
- `.csv`: a header row names the parameters, one row per item;
- `.jsonl`: one JSON object per line;
- `.yaml` / `.yml`: a list of mappings;
- `.txt`: one prompt per line (`{"prompt": line}`).

Blank lines are skipped. Values of csv and txt files are text: `typed_items` turns them into the
workflow's parameter types (`"3"` → 3 for an integer), as `--param k=v` values are.

On the server a batch file is a path inside `batch.files_dir` (`resolve_file`): the flow reads
nothing else.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

SUFFIXES = (".csv", ".jsonl", ".yaml", ".yml", ".txt")
TEXT_SUFFIXES = (".csv", ".txt")
"""Formats whose values are all text (JSON and YAML values keep their own types)."""


class BatchFileError(ValueError):
    """A batch file that cannot be read; the message names the file (and line or item)."""


def parse_items(text: str, *, suffix: str, name: str = "<batch file>") -> list[dict[str, Any]]:
    """The parameter sets in `text`, a batch file of type `suffix` (`.csv`, …)."""
    suffix = suffix.lower()
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        items = []
        for row in reader:
            if None in row:
                raise BatchFileError(
                    f"{name}: line {reader.line_num}: more values than the header has columns"
                )
            if any(v is not None and v != "" for v in row.values()):
                items.append({k: v for k, v in row.items() if v is not None})
        return items
    if suffix == ".jsonl":
        items = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BatchFileError(f"{name}: line {number}: not JSON ({exc.msg})") from None
            if not isinstance(item, dict):
                raise BatchFileError(f"{name}: line {number}: expected a JSON object")
            items.append(item)
        return items
    if suffix in (".yaml", ".yml"):
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise BatchFileError(f"{name}: not YAML ({exc})") from None
        loaded = [] if loaded is None else loaded
        if not isinstance(loaded, list):
            raise BatchFileError(f"{name}: expected a YAML list of mappings")
        for index, item in enumerate(loaded):
            if not isinstance(item, dict):
                raise BatchFileError(f"{name}: item {index + 1}: expected a mapping")
        return loaded
    if suffix == ".txt":
        return [{"prompt": line.strip()} for line in text.splitlines() if line.strip()]
    raise BatchFileError(
        f"{name}: unsupported batch file type {suffix or '(none)'!r} (csv, jsonl, yaml, txt)"
    )


def read_items(path: Path) -> list[dict[str, Any]]:
    """The parameter sets of the file at `path` (see the module docstring for the formats)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BatchFileError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise BatchFileError(f"{path}: not UTF-8 text") from None
    return parse_items(text, suffix=path.suffix, name=str(path))


def typed_items(
    items: list[dict[str, Any]], *, suffix: str, parse: Callable[[str, str], Any]
) -> list[dict[str, Any]]:
    """Items of a text format (csv, txt) with each value parsed by `parse(name, text)` (the
    workflow's, e.g. `Workflow.parse_params`); items of other formats as they are."""
    if suffix.lower() not in TEXT_SUFFIXES:
        return items
    return [
        {k: parse(k, v) if isinstance(v, str) else v for k, v in item.items()} for item in items
    ]


def resolve_file(file: str, *, files_dir: Path) -> Path:
    """The server-side batch file `file` (relative to `files_dir`, or an absolute path inside
    it); a path outside `files_dir` is refused."""
    root = files_dir.resolve()
    path = (root / file).resolve()
    if not path.is_relative_to(root):
        raise BatchFileError(f"file: {file!r} is outside batch.files_dir ({root})")
    if not path.is_file():
        raise BatchFileError(f"file: no batch file {file!r} in batch.files_dir ({root})")
    return path
