"""One simulated node's `input/`, `output/` and `temp/` folders, in memory: uploads with
ComfyUI's renaming (`x (1).png` for a different file under a taken name, the same name for the
same bytes), saved outputs with its `<prefix>_<5-digit counter>_.<ext>` names, and the lookups
`/view`, `LoadImage` and its validation make (including `name [output]` annotations)."""

from __future__ import annotations

import hashlib
import posixpath
from typing import Any

from bench.simnode.catalog import IMAGE_EXTENSIONS

FOLDER_TYPES = ("input", "output", "temp")
_ANNOTATIONS = {" [output]": "output", " [input]": "input", " [temp]": "temp"}


class OutsideFolder(ValueError):
    """A subfolder or prefix that would leave its folder (`..`, an absolute path)."""


def normal_subfolder(subfolder: str) -> str:
    """``a/./b/`` → ``a/b``, ``""`` → ``""``; raises OutsideFolder for ``..`` or ``/x``."""
    if not subfolder:
        return ""
    normal = posixpath.normpath(subfolder)
    if normal.startswith("/") or normal == ".." or normal.startswith("../"):
        raise OutsideFolder(subfolder)
    return "" if normal == "." else normal


def annotated(name: str) -> tuple[str, str | None]:
    """``"x.png [output]"`` → ``("x.png", "output")``; no annotation → ``(name, None)``."""
    for suffix, folder_type in _ANNOTATIONS.items():
        if name.endswith(suffix):
            return name[: -len(suffix)], folder_type
    return name, None


class FileStore:
    """Files by ``(folder type, subfolder, name)``; bytes are shared, never copied."""

    def __init__(self) -> None:
        self._files: dict[tuple[str, str, str], bytes] = {}
        self._counters: dict[tuple[str, str, str], int] = {}

    def __len__(self) -> int:
        return len(self._files)

    def get(self, folder_type: str, subfolder: str, name: str) -> bytes | None:
        return self._files.get((folder_type, subfolder, name))

    def digest(self, path: str) -> str | None:
        """sha256 of an annotated input path (``sub/x.png``), None when there is no such file."""
        content = self._lookup(path)
        return None if content is None else hashlib.sha256(content).hexdigest()

    def exists(self, path: str) -> bool:
        """What `LoadImage`'s validation asks: is ``sub/x.png [type]`` (default input) there?"""
        return self._lookup(path) is not None

    def _lookup(self, path: str) -> bytes | None:
        name, folder_type = annotated(path)
        subfolder, _, base = name.rpartition("/")
        try:
            subfolder = normal_subfolder(subfolder)
        except OutsideFolder:
            return None
        return self.get(folder_type or "input", subfolder, base)

    def input_images(self) -> list[str]:
        """The top-level image files of `input/`, sorted (`LoadImage`'s choices)."""
        return sorted(
            name
            for (folder_type, subfolder, name) in self._files
            if folder_type == "input" and not subfolder and name.lower().endswith(IMAGE_EXTENSIONS)
        )

    def upload(
        self, name: str, content: bytes, *, folder_type: str, subfolder: str, overwrite: bool
    ) -> str:
        """Store an upload; returns the name it got. Raises OutsideFolder."""
        folder = normal_subfolder(subfolder)
        stem, dot, extension = name.rpartition(".")
        stem, extension = (stem, dot + extension) if stem else (name, "")
        candidate, index = name, 1
        if not overwrite:
            while (existing := self.get(folder_type, folder, candidate)) is not None:
                if existing == content:
                    return candidate
                candidate = f"{stem} ({index}){extension}"
                index += 1
        self._files[(folder_type, folder, candidate)] = content
        return candidate

    def save(
        self, prefix: str, extension: str, content: bytes, *, folder_type: str = "output"
    ) -> dict[str, Any]:
        """Save under ``<prefix>_<counter>_<extension>`` (a prefix may hold a subfolder);
        returns the `{filename, subfolder, type}` a node's UI output lists."""
        normal = posixpath.normpath(prefix)
        subfolder, _, filename = normal.rpartition("/")
        try:
            subfolder = normal_subfolder(subfolder)
        except OutsideFolder:
            raise Exception(
                "**** ERROR: Saving image outside the output folder is not allowed."
            ) from None
        key = (folder_type, subfolder, filename)
        counter = self._counters.get(key, 1)
        self._counters[key] = counter + 1
        saved = f"{filename}_{counter:05}_{extension}"
        self._files[(folder_type, subfolder, saved)] = content
        return {"filename": saved, "subfolder": subfolder, "type": folder_type}


__all__ = ["FOLDER_TYPES", "FileStore", "OutsideFolder", "annotated", "normal_subfolder"]
