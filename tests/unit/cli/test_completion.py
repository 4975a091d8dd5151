"""Shell completion: `comfyfleet completion SHELL` prints the shell code, and the command
answers the completion protocol (argcomplete) with its words and options."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from comfyfleet.cli import main

REPO = Path(__file__).resolve().parents[3]


def complete(line: str, tmp_path: Path) -> list[str]:
    """What the shell gets for `line` (the cursor at its end)."""
    out = tmp_path / "completions"
    env = {**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
           "_ARGCOMPLETE_STDOUT_FILENAME": str(out), "_ARGCOMPLETE_IFS": "\n"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "comfyfleet"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return sorted(out.read_text().split())


def test_the_command_completes_its_words_and_options(tmp_path: Path) -> None:
    assert complete("comfyfleet batch s", tmp_path) == ["show", "submit"]
    assert "--wait" in complete("comfyfleet batch submit p.csv --", tmp_path)
    assert complete("comfyfleet batch submit p.csv --priority h", tmp_path) == ["high"]
    assert "completion" in complete("comfyfleet ", tmp_path)


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_the_shell_code(shell: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", shell]) == 0
    code = capsys.readouterr().out
    assert "comfyfleet" in code and "_ARGCOMPLETE" in code
