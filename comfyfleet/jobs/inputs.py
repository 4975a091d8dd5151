"""Input files (the image of an image-to-video job, …): stored once, synced to nodes on demand.

The control plane keeps every input once, named by its content hash (`<store>/<sha256>.<ext>`).
A parameter refers to a stored input by the name the node will know it under,
`comfyfleet/<sha256>.<ext>` (a plain relative name, so the workflow contract validates it like
any image name). A node gets the file in its input folder's `comfyfleet/` subfolder, uploaded only
when the node lacks it (checked first), so a file is sent to each node at most once and the graph
needs no rewriting. Operators running flows from Prefect may also pass a local file path, read
only inside `batch.files_dir` (`server_file`); it is stored first.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfyfleet.catalog import Workflow
from comfyfleet.comfyui import ComfyUIClient
from comfyfleet.settings import get_settings

NODE_SUBFOLDER = "comfyfleet"
REF_PREFIX = f"{NODE_SUBFOLDER}/"
ALLOWED_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"})


class InputError(ValueError):
    """An input that cannot be used (unknown ref, unreadable file, unsupported type)."""


def server_file(path: str | Path, *, files_dir: Path | None = None) -> Path:
    """A file on this server that a run may read: only inside `batch.files_dir` (`files_dir`),
    symbolic links resolved first; a relative path is taken inside it. InputError otherwise."""
    root = Path(files_dir if files_dir is not None else get_settings().batch.files_dir)
    root = root.resolve()
    given = Path(path)
    target = (given if given.is_absolute() else root / given).resolve()
    if not target.is_relative_to(root):
        raise InputError(
            f"{str(path)!r}: server files are read only from batch.files_dir ({root}); "
            "put the file there, or upload it"
        )
    return target


@dataclass(frozen=True)
class StoredInput:
    sha256: str
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def ref(self) -> str:
        return f"{REF_PREFIX}{self.name}"


class InputStore:
    """Content-addressed input files under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def put(self, data: bytes, *, suffix: str) -> StoredInput:
        suffix = suffix.lower() if suffix.startswith(".") else f".{suffix.lower()}"
        if suffix not in ALLOWED_SUFFIXES:
            allowed = ", ".join(sorted(ALLOWED_SUFFIXES))
            raise InputError(f"unsupported input type {suffix!r} (allowed: {allowed})")
        digest = hashlib.sha256(data).hexdigest()
        path = self.root / f"{digest}{suffix}"
        if not path.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".part")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        return StoredInput(sha256=digest, path=path)

    def put_file(self, path: Path) -> StoredInput:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read input file {path}: {exc.strerror}") from exc
        return self.put(data, suffix=Path(path).suffix)

    def resolve(self, value: str) -> StoredInput:
        """A parameter value (`comfyfleet/<name>` or a local file path) → the stored input."""
        if value.startswith(REF_PREFIX):
            name = value[len(REF_PREFIX) :]
            path = self.root / name
            if "/" in name or "\\" in name or not path.is_file():
                raise InputError(f"unknown input {value!r}")
            return StoredInput(sha256=path.stem, path=path)
        return self.put_file(server_file(value))


async def sync_input(client: ComfyUIClient, stored: StoredInput) -> str:
    """Make the node hold the input; returns the name to put in the graph (`comfyfleet/<file>`)."""
    if not await client.has_input(stored.name, subfolder=NODE_SUBFOLDER):
        await client.upload_image(stored.path, subfolder=NODE_SUBFOLDER, overwrite=True)
    return f"{NODE_SUBFOLDER}/{stored.name}"


def store_inputs(workflow: Workflow, request: dict[str, Any]) -> dict[str, Any]:
    """Image parameters given as local files (operators running flows from Prefect) go into the
    input store; the request then names them as the node will (`comfyfleet/<sha256>.<ext>`)."""
    store = InputStore(get_settings().store.inputs_dir)
    stored = dict(request)
    for name, spec in workflow.parameters.items():
        value = request.get(name)
        if spec.type == "image" and isinstance(value, str) and Path(value).is_absolute():
            stored[name] = store.put_file(server_file(value)).ref
    return stored


def input_refs(workflow: Workflow, params: dict[str, Any]) -> list[str]:
    """The job's input images, as input store refs (`comfyfleet/<sha256>.<ext>`)."""
    refs = [params.get(name) for name, spec in workflow.parameters.items() if spec.type == "image"]
    return [ref for ref in refs if isinstance(ref, str) and ref.startswith(REF_PREFIX)]
