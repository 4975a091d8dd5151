"""Placeholder `torchvision.models`: importable; any attribute access raises ImportError."""

from typing import NoReturn

from torchvision import _missing

__all__: list[str] = []


def __getattr__(name: str) -> NoReturn:
    _missing(__name__, name)
