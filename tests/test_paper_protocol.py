"""The paper configs evaluate as AGS-CL Sec. 5.2 says: 30 times per task, 108,000-frame cap."""

from __future__ import annotations

from pathlib import Path

import pytest

from clrl.config import load_config
from clrl.rl.runner import updates_per_task

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("atari_paper_*.yaml"))


def evaluations_per_task(every: int, batch: int, J: int, T: int) -> list[int]:
    """The runner's schedule, replayed: after each update but a task's last, evaluate once the
    global step reaches the next due step; always at a task's end; due steps advance by
    ``every`` past the current step after each evaluation."""
    step, due, out = 0, every, []
    for _ in range(T):
        n = 0
        for u in range(1, J + 1):
            step += batch
            if (u < J and step >= due) or u == J:
                n += 1
                while due <= step:
                    due += every
        out.append(n)
    return out


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_paper_configs_evaluate_30_times_per_task_with_the_108k_cap(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.eval.max_frames == 108_000
    batch = cfg.train.n_envs * cfg.train.n_steps
    counts = evaluations_per_task(cfg.eval.every_steps, batch, updates_per_task(cfg), len(cfg.tasks.games))
    assert counts == [30] * len(cfg.tasks.games)


def test_the_schedule_replay_counts_by_hand() -> None:
    # 10 updates per task, due every 3 updates: mid-task at updates 3, 6, 9, then the end -> 4;
    # the next task's due steps continue from the global count (12 is due at update 2 of task 2)
    assert evaluations_per_task(3, 1, 10, 2) == [4, 4]
    assert evaluations_per_task(100, 1, 10, 2) == [1, 1]
