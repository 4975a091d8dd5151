"""The progress bar of the commands that wait (`submit --wait`, `batch submit --wait`, `nodes
drain --wait`): a rich bar on stderr when it is a terminal, one plain line per change otherwise
(logs and pipes stay readable)."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any


class Bar:
    """`with Bar("steps") as bar: bar.update(done, total, note)`; `note` (e.g. `on gpu-1`)
    follows the counts."""

    def __init__(self, description: str, *, console: Any = None) -> None:
        from rich.console import Console

        self.description = description
        self.console = console or Console(file=sys.stderr)
        self._progress: Any = None
        self._task: Any = None
        self._last: tuple[int, int | None, str] | None = None

    def __enter__(self) -> Bar:
        if self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=self.console,
            )  # fmt: skip
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=None, note="")
        return self

    def update(self, done: int, total: int | None = None, note: str = "") -> None:
        if (done, total, note) == self._last:
            return
        self._last = (done, total, note)
        if self._progress is not None:
            self._progress.update(self._task, completed=done, total=total, note=note)
            return
        counts = f"{done}/{total}" if total is not None else str(done)
        line = f"{self.description} {counts}" + (f" {note}" if note else "")
        print(line, file=self.console.file, flush=True)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
