"""The waiting commands' progress bar: rich on a terminal, plain lines elsewhere."""

from __future__ import annotations

import io

from rich.console import Console

from comfyfleet.cli._progress import Bar


def test_on_a_terminal_the_bar_is_rich_and_ends_at_the_last_count() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    with Bar("batch 1234", console=console) as bar:
        bar.update(1, 4, "3 running")
        bar.update(4, 4, "0 running")
    text = out.getvalue()
    assert "batch 1234" in text and "4/4" in text and "━" in text


def test_off_a_terminal_each_change_is_one_line() -> None:
    out = io.StringIO()
    with Bar("job ab12", console=Console(file=out, force_terminal=False)) as bar:
        bar.update(0, None, "queued")
        bar.update(1, 4, "steps on gpu-1")
        bar.update(1, 4, "steps on gpu-1")
        bar.update(4, 4, "steps on gpu-1")
    assert out.getvalue().splitlines() == [
        "job ab12 0 queued", "job ab12 1/4 steps on gpu-1", "job ab12 4/4 steps on gpu-1"
    ]  # fmt: skip
