"""`comfyfleet nodes refresh ID` asks the gateway to have the node's inventory read again."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from comfyfleet.cli import _gateway, build_parser, main


def test_nodes_refresh_posts_to_the_gateway_and_says_it_was_requested(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args(["--gateway", "http://gw:8000", "nodes", "refresh", "gpu-1"])
    assert args.node_id == "gpu-1" and args.func.__name__ == "cmd_refresh"
    calls: list[tuple[str, str]] = []

    def request(args: argparse.Namespace, method: str, path: str, **kw: Any) -> Any:
        calls.append((method, path))
        return {"node": "gpu-1", "requested_at": "2025-06-01T10:00:00Z"}

    monkeypatch.setattr(_gateway, "request", request)
    assert main(["nodes", "refresh", "gpu-1"]) == 0
    assert calls == [("POST", "/api/v2/admin/nodes/gpu-1/refresh")]
    assert "gpu-1: inventory refresh requested" in capsys.readouterr().out
    assert main(["nodes", "refresh", "gpu-1", "--json"]) == 0
    assert '"requested_at"' in capsys.readouterr().out
