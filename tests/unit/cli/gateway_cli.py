"""For the tests of the commands that talk to the gateway: a run of `comfyfleet …` with its
output (their config dir and gateway: the `cli_env` fixture)."""

from __future__ import annotations

import io
import sys

import pytest

from comfyfleet.cli import main


def run(argv: list[str], capsys: pytest.CaptureFixture[str], stdin: str = "") -> tuple[int, str]:
    old = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        code = main(argv)
    finally:
        sys.stdin = old
    out = capsys.readouterr()
    return code, out.out + out.err
