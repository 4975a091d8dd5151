"""`comfyfleet nodes drain ID --wait` draws the in-flight jobs ending until none is left."""

from __future__ import annotations

from typing import Any

import pytest

from comfyfleet.cli import nodes as nodes_cli
from comfyfleet.fleet import registry


async def test_drain_wait_draws_the_jobs_ending_until_none_is_left(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    in_flight = [3, 2, 2, 0]  # what the store says at each look
    calls: list[float] = []

    async def drain(client: Any, node_id: str, *, db: Any, wait_s: float = 0.0, **kw: Any) -> int:
        assert node_id == "gpu-2"
        calls.append(wait_s)
        return in_flight.pop(0)

    monkeypatch.setattr(registry, "drain", drain)
    left = await nodes_cli._drain_with_bar(None, None, "gpu-2", timeout=30)  # type: ignore[arg-type]
    assert left == 0
    assert calls[0] == 0.0 and all(0 < w <= nodes_cli.DRAIN_STEP_S for w in calls[1:])
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "drain gpu-2 0/3 3 in flight", "drain gpu-2 1/3 2 in flight", "drain gpu-2 3/3 0 in flight"
    ]  # fmt: skip


async def test_drain_wait_gives_up_at_the_timeout_with_the_count_left(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def drain(client: Any, node_id: str, *, db: Any, wait_s: float = 0.0, **kw: Any) -> int:
        return 2

    monkeypatch.setattr(registry, "drain", drain)
    assert await nodes_cli._drain_with_bar(None, None, "gpu-2", timeout=0.0) == 2  # type: ignore[arg-type]
    assert capsys.readouterr().err.splitlines() == ["drain gpu-2 0/2 2 in flight"]
