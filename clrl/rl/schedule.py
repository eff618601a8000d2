"""When a sequential-Atari run writes its checkpoint: a subscriber of the ``safe_point`` event.

The runner emits ``safe_point`` wherever its state is consistent (between PPO updates, after any
evaluation the update triggered; at start-up; after a finished task) and this schedule decides
whether that point is saved, so the loop itself has no checkpoint policy:

* ``reason="start"`` (the untrained state) and ``reason="task_end"`` (consolidated, evaluated;
  also kept as ``task_XX.pt``): always;
* ``reason="update"``: in the deterministic mode exactly at the points the runner marks ``exact``
  (it re-seeds the training envs there, so a resumed run is bit-exact), also on a signal;
  otherwise every ``every_minutes`` minutes of wall time, and at once when a signal asks the run to
  stop (so SIGINT/SIGTERM lose nothing). A task's last update has no such point: its task end
  follows at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from clrl.events import EventBus

__all__ = ["CheckpointSchedule"]


class CheckpointSchedule:
    """Decides which ``safe_point`` events become checkpoints; ``save(task_file)`` writes one."""

    def __init__(
        self,
        save: Callable[[int | None], None],
        *,
        deterministic: bool,
        every_minutes: float,
        stop_requested: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._save = save
        self.deterministic = bool(deterministic)
        self.every_seconds = 60.0 * float(every_minutes)
        self._stop_requested = stop_requested
        self._clock = clock
        self._last = clock()

    def attach(self, events: EventBus) -> CheckpointSchedule:
        events.subscribe("safe_point", self.on_safe_point)
        return self

    def due(self, exact: bool) -> bool:
        """Whether a point between two updates is saved (``exact``: a resume from it is bit-exact)."""
        if self.deterministic:
            # only at the exact points, also on a signal: a resumed run stays bit-exact (the
            # updates since the last exact point are lost)
            return exact
        return self._clock() - self._last >= self.every_seconds or self._stop_requested()

    def on_safe_point(self, reason: str, task: int, exact: bool = False, **_: Any) -> None:
        if reason not in ("start", "update", "task_end"):
            raise ValueError(f"unknown safe_point reason {reason!r}")
        if reason == "update" and not self.due(exact):
            return
        self._save(task if reason == "task_end" else None)
        self._last = self._clock()
