"""Live progress displays of a run: subscribers of the training events (:mod:`clrl.events`).

:class:`RunProgress` (sequential Atari): one rich bar per task (``task_start``), advanced by each
``update_end`` with the steps per second of this session, and the scores of the latest
``evaluation`` beside it; it only renders on a terminal (and with ``output.progress``), so logs and
CI output stay clean. :class:`TaskBar` (supervised): a tqdm bar per task over its optimizer steps
(``batch_end``), with the epoch's loss and validation accuracy.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from clrl.events import EventBus

__all__ = ["RunProgress", "TaskBar"]


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

    def on_update_end(self, update: int, **_: Any) -> None:
        self._done = int(update)
        if self._progress is None or self._bar is None:
            return
        t0, u0 = self._t0
        sps = (self._done - u0) * self.units / max(time.monotonic() - t0, 1e-9)
        self._progress.update(self._bar, completed=self._done * self.units, sps=f"{sps:.0f}", last_eval=self.last_eval)

    def on_evaluation(self, point: Any, **_: Any) -> None:
        self.last_eval = ", ".join(f"{self.task_names[j]} {s:.1f}" for j, s in enumerate(point.scores))
        if self._progress is not None and self._bar is not None:
            self._progress.update(self._bar, last_eval=self.last_eval)


class TaskBar:
    """The supervised trainer's per-task tqdm bar, fed by the training events: one bar per
    ``task_start`` (its planned optimizer steps), one tick per ``batch_end``, the epoch's loss and
    validation accuracy from ``update_end``, closed at ``task_end`` (also after early stopping)."""

    def __init__(self, n_tasks: int, enabled: bool = True, file: Any = None) -> None:
        self.n_tasks = int(n_tasks)
        self.enabled = bool(enabled)
        self._file = file
        self._bar: Any = None

    def attach(self, events: EventBus) -> TaskBar:
        events.subscribe("task_start", self.on_task_start)
        events.subscribe("batch_end", self.on_batch_end)
        events.subscribe("update_end", self.on_update_end)
        events.subscribe("task_end", self.on_task_end)
        return self

    def on_task_start(self, task: int, name: str, batches: int, **_: Any) -> None:
        from tqdm.auto import tqdm

        self.close()
        self._bar = tqdm(total=int(batches), desc=f"task {task + 1}/{self.n_tasks} {name}", leave=False,
                         dynamic_ncols=True, disable=not self.enabled, file=self._file)

    def on_batch_end(self, **_: Any) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def on_update_end(self, stats: dict[str, float], **_: Any) -> None:
        if self._bar is not None and "train_loss" in stats:
            self._bar.set_postfix(loss=f"{stats['train_loss']:.3f}", val=f"{stats.get('val_acc', float('nan')):.3f}")

    def on_task_end(self, **_: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
