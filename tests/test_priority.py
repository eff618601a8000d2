"""The emulators' worker threads start below the learner's priority (clrl.rl.priority)."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from clrl.config import EnvConfig
from clrl.rl.envs import make_vec_env
from clrl.rl.priority import MAX_NICE, build_with_lower_priority, per_thread_nice, thread_nice

linux_only = pytest.mark.skipif(not per_thread_nice(), reason="per-thread nice values are Linux's")


def _nice_of_tasks() -> dict[int, int]:
    """Nice value of every OS thread of this process (the C++ workers are invisible to ``threading``).

    Read from ``/proc/self/task/<tid>/stat`` field 19, not through ``os.getpriority``: an
    independent way to see what the scheduler holds.
    """
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except FileNotFoundError:  # a thread that just ended
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        out[int(tid)] = int(fields[16])  # field 19 of stat; fields here start at field 3
    return out


def _started_thread_nice() -> int:
    """Starts a thread and reports its nice value: what a C++ worker started here would get."""
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(thread_nice()))
    t.start()
    t.join()
    return seen[0]


@linux_only
def test_threads_started_by_build_inherit_the_lower_priority() -> None:
    base = thread_nice()
    assert build_with_lower_priority(_started_thread_nice, 3) == min(MAX_NICE, base + 3)
    assert build_with_lower_priority(_started_thread_nice, 50) == MAX_NICE  # capped
    assert thread_nice() == base  # the caller keeps its priority
    assert _started_thread_nice() == base


def test_zero_levels_build_here_and_errors_reach_the_caller() -> None:
    here = threading.get_native_id()
    assert build_with_lower_priority(threading.get_native_id, 0) == here
    if per_thread_nice():
        assert build_with_lower_priority(threading.get_native_id, 2) != here

    def fails() -> None:
        raise ValueError("no ROM")

    for levels in (0, 2):
        with pytest.raises(ValueError, match="no ROM"):
            build_with_lower_priority(fails, levels)


@linux_only
@pytest.mark.parametrize("levels", [0, 7])
def test_vec_env_workers_run_at_the_configured_nice(levels: int) -> None:
    base = thread_nice()
    before = _nice_of_tasks()
    venv = make_vec_env("Pong", 3, EnvConfig(emulator_nice=levels), seed=0, train=True)
    try:
        for _ in range(100):  # the builder thread has been joined; its OS thread may linger a moment
            new = {tid: n for tid, n in _nice_of_tasks().items() if tid not in before}
            if len(new) <= 3:
                break
            time.sleep(0.01)
        assert len(new) == 3  # one C++ worker per env
        assert set(new.values()) == {min(MAX_NICE, base + levels)}
        assert _nice_of_tasks()[threading.get_native_id()] == base
        venv.reset()
        for _ in range(3):
            venv.step(np.zeros(3, dtype=np.int64))
    finally:
        venv.close()


def test_priority_does_not_change_what_the_envs_give() -> None:
    """Same seed, same actions: the same frames, rewards and dones at nice 0 and 10."""
    runs = []
    for levels in (0, 10):
        venv = make_vec_env("Breakout", 2, EnvConfig(emulator_nice=levels), seed=3, train=True)
        try:
            rng = np.random.default_rng(0)
            frames = [venv.reset()]
            for _ in range(60):
                obs, rew, done, _ = venv.step(rng.integers(0, 4, size=2))
                frames += [obs, rew, done]
            runs.append(frames)
        finally:
            venv.close()
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)
