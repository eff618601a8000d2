"""Named training events that both front ends emit and measurements subscribe to.

The RL runner and the supervised trainer announce what just happened; logging, TensorBoard, the
progress display (:mod:`clrl.progress`), checkpoints (:mod:`clrl.rl.schedule`; the supervised
trainer's task-end saver) and the representation analysis (:mod:`clrl.analysis.monitor`) listen,
so a new measurement touches no training loop (the way Avalanche plugins hook into training).
Events and their payloads (keyword arguments; subscribers take ``**payload`` and ignore what
they do not need):

* ``task_start``: task ``task`` begins or resumes training. ``task``, ``step``, ``name``,
  ``total`` (training units of the task: PPO updates; at most ``train.epochs`` epochs in the
  supervised offline regime, 1 pass in the single pass), ``done`` (units already done: a resumed
  task); supervised also ``batches`` (optimizer steps planned).
* ``batch_end``: one optimizer step of the supervised loops. ``task``, ``step`` (batches so far),
  ``loss``. (A PPO update's minibatches are not announced: the update is RL's unit.)
* ``update_end``: one training unit finished (a PPO update; an epoch in the supervised offline
  regime). ``task``, ``step``, ``stats`` (dict of floats); RL also ``seconds`` and ``update``
  (updates done in the task, this one included); supervised also ``epoch`` (within the task).
* ``task_end``: task ``task`` was consolidated (after ``reg.end_task``; the network is the one
  its end-of-task evaluation scores). ``task``, ``step``, ``inputs``: that task's inputs as raw
  uint8 arrays, a list of batches (RL: the consolidation states; supervised: the test images).
* ``evaluation``: a curve point was appended. ``task`` (being trained), ``step``, ``point`` (the
  :class:`clrl.results.CurvePoint`, which subscribers may annotate before it is saved),
  ``end_of_task`` (bool).
* ``safe_point``: the run's state is consistent and may be saved. ``reason`` (``"start"``: before
  any training; ``"update"``: between two updates, after any evaluation the update triggered;
  ``"task_end"``: the task is consolidated and evaluated), ``task`` (the task being trained, or
  about to be: 0 at the start), ``step``; for ``"update"``
  also ``update`` (units done in the task; a task's last update has no such point, its task end
  follows) and ``exact`` (a run resumed from here repeats the uninterrupted one bit for bit: RL's
  deterministic mode re-seeds its envs there). A checkpoint subscriber decides which points it
  saves; the loop stops for a signal only after the subscribers ran.

Subscribers run in the order they subscribed; an exception in one propagates to the loop (a
broken measurement should stop a run, not silently vanish).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["EVENTS", "EventBus"]

EVENTS: tuple[str, ...] = ("task_start", "batch_end", "update_end", "task_end", "evaluation", "safe_point")

Handler = Callable[..., Any]


class EventBus:
    """A tiny synchronous publish/subscribe hub with a fixed set of event names."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = {name: [] for name in EVENTS}

    def _check(self, event: str) -> None:
        if event not in self._handlers:
            raise ValueError(f"unknown training event {event!r}; known: {', '.join(EVENTS)}")

    def subscribe(self, event: str, handler: Handler) -> Handler:
        """Call ``handler(**payload)`` on every ``emit(event, ...)``; returns the handler."""
        self._check(event)
        if not callable(handler):
            raise TypeError(f"handler for {event!r} is not callable: {handler!r}")
        self._handlers[event].append(handler)
        return handler

    def unsubscribe(self, event: str, handler: Handler) -> None:
        self._check(event)
        self._handlers[event] = [h for h in self._handlers[event] if h is not handler]

    def emit(self, event: str, **payload: Any) -> None:
        self._check(event)
        for handler in list(self._handlers[event]):
            handler(**payload)

    def handlers(self, event: str) -> list[Handler]:
        self._check(event)
        return list(self._handlers[event])
