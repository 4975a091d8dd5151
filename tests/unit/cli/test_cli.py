"""The `comfyfleet` command itself: words that share a group, `python -m comfyfleet`."""

from __future__ import annotations

import subprocess
import sys

from comfyfleet.cli import build_parser, group
from tests.unit.catalog.test_catalog import REPO


def test_areas_can_share_a_command_group() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    config = group(subparsers, "config", help="again")  # an area adding to `config`
    leaf = config.add_parser("show")
    leaf.set_defaults(func=lambda args: 7)
    args = parser.parse_args(["config", "show"])
    assert args.func(args) == 7
    assert parser.parse_args(["config", "check"]).func.__name__ == "cmd_config_check"


def test_python_dash_m_comfyfleet_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "comfyfleet", "workflows", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "list" in result.stdout and "check" in result.stdout and "reload" in result.stdout
