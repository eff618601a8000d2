"""The live progress display of a run: a subscriber of the training events (:mod:`clrl.events`).

One bar per task (``task_start``), advanced by each ``update_end`` with the steps per second of
this session, and the scores of the latest ``evaluation`` beside it. It only renders on a
terminal (and with ``output.progress``), so logs and CI output stay clean.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from clrl.events import EventBus

__all__ = ["RunProgress"]


class RunProgress:
    """Rich progress bars for a run of ``len(task_names)`` tasks of ``units`` steps per update."""

    def __init__(self, task_names: Sequence[str], units: int, enabled: bool = True, console: Any = None) -> None:
        self.task_names = list(task_names)
        self.units = int(units)
        self.enabled = bool(enabled) and (console is not None or sys.stdout.isatty())
        self._console = console
        self._progress: Any = None
        self._bar: Any = None
        self._done = 0  # updates finished in the task of the bar
        self._t0 = (0.0, 0)  # (clock, updates done) when the bar started
        self.last_eval = "-"

    def attach(self, events: EventBus) -> RunProgress:
        events.subscribe("task_start", self.on_task_start)
        events.subscribe("update_end", self.on_update_end)
        events.subscribe("evaluation", self.on_evaluation)
        return self

    @contextmanager
    def shown(self) -> Iterator[None]:
        """Render the bars while the body runs (nothing off a terminal)."""
        if not self.enabled:
            yield
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps  {task.fields[sps]} steps/s"),
            TimeElapsedColumn(),
            TextColumn("last eval: {task.fields[last_eval]}"),
            console=self._console,
        )
        self._bar = None
        try:
            with self._progress:
                yield
        finally:
            self._progress = None

    def on_task_start(self, task: int, total: int, done: int = 0, **_: Any) -> None:
        self._done = int(done)
        self._t0 = (time.monotonic(), self._done)
        if self._progress is None:
            return
        if self._bar is not None:
            self._progress.remove_task(self._bar)
        self._bar = self._progress.add_task(
            f"task {task + 1}/{len(self.task_names)} {self.task_names[task]}", total=int(total) * self.units,
            completed=self._done * self.units, sps="-", last_eval=self.last_eval,
        )

    def on_update_end(self, **_: Any) -> None:
        self._done += 1
        if self._progress is None or self._bar is None:
            return
        t0, u0 = self._t0
        sps = (self._done - u0) * self.units / max(time.monotonic() - t0, 1e-9)
        self._progress.update(self._bar, completed=self._done * self.units, sps=f"{sps:.0f}", last_eval=self.last_eval)

    def on_evaluation(self, point: Any, **_: Any) -> None:
        self.last_eval = ", ".join(f"{self.task_names[j]} {s:.1f}" for j, s in enumerate(point.scores))
        if self._progress is not None and self._bar is not None:
            self._progress.update(self._bar, last_eval=self.last_eval)
