"""The output store: files a job produced, with where they came from.

Layout: `<store.outputs_dir>/<job id>/<attempt id>/<file name>` (one folder per attempt, so a
superseded attempt never overwrites the files of the one that completed the job). Every file is
recorded with its sha256, size, content type, the node that made it and the ComfyUI prompt id.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from pydantic import BaseModel

from comfyfleet.comfyui import ComfyUIClient, OutputFile
from comfyfleet.settings import get_settings


def attempt_dir(job_id: str, attempt_id: str) -> Path:
    """Where an attempt's files go: `<store.outputs_dir>/<job id>/<attempt id>/`."""
    return Path(get_settings().store.outputs_dir) / job_id / attempt_id


class OutputRecord(BaseModel, frozen=True):
    """One stored output file and its provenance."""

    name: str
    path: str
    sha256: str
    size: int
    content_type: str
    node: str
    prompt_id: str
    comfy_node_id: str


def stored_name(filename: str, subfolder: str) -> str:
    """The name a node's output file (`filename` in `subfolder`) gets in the output store."""
    name = f"{subfolder}_{filename}" if subfolder else filename
    return name.replace("/", "_").replace("\\", "_").lstrip(".") or "output"


def keep_only(out_dir: Path, names: set[str]) -> None:
    """Remove every file of an attempt's folder but `names` (the outputs recorded): download temp
    files and whole files left by an earlier holder of the attempt, killed before it recorded
    them (the next holder may get other names for the same outputs, e.g. from a node that ran
    the prompt again). One holder writes an attempt's folder at a time."""
    for path in out_dir.iterdir():
        if path.name not in names and path.is_file():
            path.unlink(missing_ok=True)


async def store_output(
    client: ComfyUIClient, ref: OutputFile, out_dir: Path, *, node: str, prompt_id: str
) -> OutputRecord:
    """Stream one output from the node into `out_dir`; returns its record."""
    out_dir.mkdir(parents=True, exist_ok=True)
    name = stored_name(ref.filename, ref.subfolder)
    downloaded = await client.download(ref, out_dir / name)
    content_type = downloaded.content_type or (
        mimetypes.guess_type(name)[0] or "application/octet-stream"
    )
    return OutputRecord(
        name=name,
        path=str(downloaded.path),
        sha256=downloaded.sha256,
        size=downloaded.size,
        content_type=content_type.split(";")[0].strip(),
        node=node,
        prompt_id=prompt_id,
        comfy_node_id=ref.node_id,
    )
