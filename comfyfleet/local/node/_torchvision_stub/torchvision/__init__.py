"""Placeholder torchvision for a lean ComfyUI venv: importable, but unusable on purpose.

Any public attribute access raises ImportError, so code paths that really need torchvision fail
with a clear message instead of a confusing AttributeError.
"""

from typing import NoReturn

__all__ = ["models", "transforms"]

_MESSAGE = (
    "torchvision is a placeholder in this ComfyUI venv (comfyfleet lean install); "
    "install the real torch+torchvision pair to use {name!r}"
)


def _missing(module: str, name: str) -> NoReturn:
    """Raise the error every public attribute access gets (AttributeError for dunders)."""
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    raise ImportError(_MESSAGE.format(name=f"{module}.{name}"))


# Imported eagerly, before the module __getattr__ exists: `from torchvision import transforms`
# looks the name up as an attribute first.
from torchvision import models, transforms  # noqa: E402


def __getattr__(name: str) -> NoReturn:
    _missing(__name__, name)
