"""A real ComfyUI 0.3.75 on this machine (CPU): its own venv, tiny checkpoints, local processes.

Used by the integration tests (tests/fixtures/comfy.py) and by ``make up`` as the embedded
default node (``python -m comfyfleet.local.node run``).
"""

from comfyfleet.local.node.process import (
    DELAY_FACTOR_ENV,
    ComfyUIStartError,
    LocalComfyUI,
    free_port,
)
from comfyfleet.local.node.venv import (
    TINY_CHECKPOINTS,
    ComfyUIInstall,
    InstallError,
    ensure_comfyui_install,
)

__all__ = [
    "DELAY_FACTOR_ENV",
    "TINY_CHECKPOINTS",
    "ComfyUIInstall",
    "ComfyUIStartError",
    "InstallError",
    "LocalComfyUI",
    "ensure_comfyui_install",
    "free_port",
]
