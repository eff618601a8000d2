"""Checkpoints and the progress display are subscribers of the training events (clrl.events)."""

from __future__ import annotations

import io
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

import clrl
from clrl.events import EVENTS, EventBus
from clrl.progress import RunProgress
from clrl.rl.schedule import CheckpointSchedule


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _schedule(deterministic: bool, stop=lambda: False, every_minutes: float = 1.0):
    saved: list[int | None] = []
    clock = Clock()
    events = EventBus()
    CheckpointSchedule(saved.append, deterministic=deterministic, every_minutes=every_minutes,
                       stop_requested=stop, clock=clock).attach(events)
    return events, saved, clock


def test_every_declared_event_is_emitted_by_a_front_end():
    """No event name is declared that nothing announces (and emitting an undeclared one raises:
    tests/test_representation.py)."""
    root = Path(clrl.__file__).parent
    sources = "".join(p.read_text() for p in [*root.glob("rl/*.py"), *root.glob("supervised/*.py")])
    emitted = set(re.findall(r"""emit\(\s*["']([a-z_]+)["']""", sources))
    assert emitted == set(EVENTS)


def test_start_and_task_end_always_save_task_end_keeps_the_task_file():
    events, saved, _ = _schedule(deterministic=False)
    events.emit("safe_point", reason="start", task=0, step=0)
    events.emit("safe_point", reason="task_end", task=0, step=100)
    assert saved == [None, 0]


def test_deterministic_mode_saves_exactly_the_exact_points_even_on_a_signal():
    stop = {"now": False}
    events, saved, clock = _schedule(deterministic=True, stop=lambda: stop["now"])
    points = []
    for update in range(1, 9):
        clock.now += 3600  # wall time never matters in this mode
        stop["now"] = update == 4  # a signal between the exact points saves nothing (bit-exact resume)
        before = len(saved)
        events.emit("safe_point", reason="update", task=1, step=update, update=update, exact=update % 3 == 0)
        points.append(len(saved) > before)
    assert points == [False, False, True, False, False, True, False, False]
    assert saved == [None, None]  # update points are not task files


def test_timed_mode_saves_by_minutes_and_at_once_on_a_signal():
    stop = {"now": False}
    events, saved, clock = _schedule(deterministic=False, stop=lambda: stop["now"], every_minutes=1.0)
    points = []
    for update, (dt, signal) in enumerate([(30, False), (31, False), (10, False), (10, True), (59, False)], 1):
        clock.now += dt
        stop["now"] = signal
        before = len(saved)
        events.emit("safe_point", reason="update", task=0, step=update, update=update, exact=update % 2 == 0)
        points.append(len(saved) > before)
    # 61 s after the start: saved; 10 s later: not; a signal: saved; 59 s after that: not yet
    assert points == [False, True, False, True, False]


def test_unknown_reason_is_an_error():
    events, _, _ = _schedule(deterministic=False)
    with pytest.raises(ValueError, match="reason"):
        events.emit("safe_point", reason="sometime", task=0, step=0)


def test_progress_bar_follows_the_events():
    from rich.console import Console

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160, color_system=None)
    events = EventBus()
    progress = RunProgress(["Pong", "Boxing"], units=1024, console=console).attach(events)
    with progress.shown():
        events.emit("task_start", task=1, step=0, name="Boxing", total=4, done=1)
        events.emit("update_end", task=1, step=2048, stats={}, seconds=1.0, update=2)
        events.emit("evaluation", task=1, step=2048, point=SimpleNamespace(scores=[-20.5, 3.25]), end_of_task=False)
        events.emit("update_end", task=1, step=3072, stats={}, seconds=1.0, update=3)
        bar = progress._progress.tasks[0]
        assert (bar.completed, bar.total) == (3 * 1024, 4 * 1024)
    text = out.getvalue()
    assert "task 2/2 Boxing" in text and "Pong -20.5, Boxing 3.2" in text


def test_progress_is_silent_off_a_terminal(capsys):
    events = EventBus()
    progress = RunProgress(["Pong"], units=8).attach(events)  # pytest's stdout is not a terminal
    with progress.shown():
        events.emit("task_start", task=0, step=0, name="Pong", total=2)
        events.emit("update_end", task=0, step=8, stats={}, seconds=1.0, update=1)
    assert not progress.enabled and capsys.readouterr().out == ""


def test_supervised_task_bar_follows_the_events():
    from clrl.progress import TaskBar

    out = io.StringIO()
    events = EventBus()
    bar = TaskBar(2, enabled=True, file=out).attach(events)
    events.emit("task_start", task=0, step=0, name="0-1", total=3, done=0, batches=6)
    for b in range(4):
        events.emit("batch_end", task=0, step=b + 1, loss=0.5)
    events.emit("update_end", task=0, step=1, stats={"train_loss": 0.25, "val_acc": 0.875})
    assert (bar._bar.n, bar._bar.total) == (4, 6)
    assert bar._bar.postfix == "loss=0.250, val=0.875"
    events.emit("task_end", task=0, step=2, inputs=[])  # early stop: the bar closes anyway
    assert bar._bar is None
    assert "task 1/2 0-1" in out.getvalue()


def test_supervised_run_announces_every_batch_and_saves_at_task_ends(tmp_path):
    """The supervised trainer's progress and checkpoints hang on its events: batch_end per
    optimizer step, task_start with the planned steps, a safe_point per finished task."""
    import clrl.supervised.trainer as trainer
    from clrl.config import load_config
    from clrl.rundir import prepare_run_dir

    seen: dict[str, list] = {"task_start": [], "batch_end": [], "safe_point": []}
    real = trainer.TaskBar

    class Spy(real):
        def attach(self, events):
            for name in seen:
                events.subscribe(name, lambda _n=name, **p: seen[_n].append(p))
            return super().attach(events)

    cfg = load_config("configs/split_digits.yaml", ["output.progress=false", "output.figures=false",
                                                    "output.tensorboard=false", "train.epochs=2",
                                                    "tasks.n_tasks=2", "eval.analysis=false"])
    trainer.TaskBar = Spy
    try:
        res = trainer.run_experiment(cfg, prepare_run_dir(cfg, out=tmp_path / "run", overwrite=True))
    finally:
        trainer.TaskBar = real
    assert res.status == "complete"
    planned = sum(p["batches"] for p in seen["task_start"])
    assert len(seen["task_start"]) == 2 and planned == len(seen["batch_end"]) > 0
    assert [p["reason"] for p in seen["safe_point"]] == ["start", "task_end", "task_end"]
    assert [(p["reason"], p["task"]) for p in seen["safe_point"]] == [("start", 0), ("task_end", 0), ("task_end", 1)]
    ckpt = tmp_path / "run" / "checkpoints"
    assert sorted(f.name for f in ckpt.iterdir()) == ["latest.pt", "task_00.pt", "task_01.pt"]
