"""Evaluation of a policy on Atari games, as the AGS-CL code scores its agents.

As the AGS-CL code evaluates: argmax actions (the caller's ``act``), K envs in parallel, full
games with raw rewards and no life-loss terminals, and the score is the mean raw score of the
*first* ``episodes`` games to finish (in env order within a step), each capped at
``max_frames`` emulator frames (a capped game counts as finished with its score so far).
Taking the first finished games slightly favours short games; that is the protocol the paper's
numbers use, so clrl keeps it. Every scored game is kept (``EvalResult.games``) so that a
report can give an interval, not just a mean (:func:`clrl.metrics.bootstrap_ci`).

:func:`evaluate_many` plays several games (an evaluation point's seen tasks) at once, one
thread each: the emulators run in ale-py's C++ worker threads and torch's kernels release the
GIL, so one game's inference overlaps another's emulation (``scripts/bench_eval_point.py``
measures the gain). Each game owns its envs, its ``act`` (and any
generator in it) and its seed, so its result is the same, bit for bit, as when it is played
alone (``tests/test_evaluation.py``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clrl.config import EnvConfig
from clrl.metrics import bootstrap_ci
from clrl.rl.envs import make_vec_env

__all__ = ["EvalJob", "EvalResult", "EvaluationStopped", "Observer", "evaluate", "evaluate_many"]

Act = Callable[[np.ndarray], np.ndarray]
Observer = Callable[[np.ndarray, "list[dict[str, Any]] | None"], None]
"""Called with the first observation batch (infos ``None``), then after every step with the
new batch and the step's infos: a progress bar or a video recorder watches the play with it."""


@dataclass
class EvalResult:
    """``mean`` of the first ``episodes`` finished games' raw ``scores``.

    ``frames``: emulator frames stepped by all envs together (agent steps x frame skip);
    ``lengths``: agent steps of each scored game, in the order of ``scores``; ``games``: each
    scored game as ``{"score", "frames" (its emulator frames), "truncated" (cut by the cap)}``.
    """

    mean: float
    scores: list[float]
    episodes: int
    frames: int
    seconds: float
    lengths: list[int] = field(default_factory=list)
    truncated: int = 0
    games: list[dict[str, Any]] = field(default_factory=list)

    def ci(self, seed: int = 0) -> tuple[float, float]:
        """95% percentile-bootstrap interval of ``mean`` over the scored games (seeded)."""
        return bootstrap_ci(self.scores, seed=seed)


class EvaluationStopped(Exception):
    """A game's play was stopped from outside (another game failed, or the caller was interrupted)."""


@dataclass(frozen=True)
class EvalJob:
    """One game of an evaluation point: its action function, game and env seed."""

    act: Act
    game: str
    seed: int


def evaluate(
    act: Act,
    game: str,
    env: EnvConfig,
    *,
    episodes: int = 10,
    n_envs: int = 10,
    seed: int = 0,
    max_frames: int = 27_000,
    observer: Observer | None = None,
    stop: threading.Event | None = None,
) -> EvalResult:
    """Play ``game`` with ``act`` until ``episodes`` games have finished; see the module docstring.

    ``act`` maps a uint8 batch ``(n_envs, stack, 84, 84)`` to ``n_envs`` integer actions. With a
    deterministic ``act`` the result depends only on ``seed``. The envs are closed on return,
    also when ``act`` (or ``observer``) raises. ``stop``, once set, ends the play at the next
    step with :class:`EvaluationStopped` (how :func:`evaluate_many` stops its other games).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")
    start = time.perf_counter()
    venv = make_vec_env(game, n_envs, env, seed, train=False, max_frames=max_frames)
    games: list[dict[str, Any]] = []
    lengths: list[int] = []
    steps = 0
    try:
        obs = venv.reset()
        if observer is not None:
            observer(obs, None)
        while len(games) < episodes:
            if stop is not None and stop.is_set():
                raise EvaluationStopped(f"evaluation of {game} stopped after {steps} steps")
            actions = np.asarray(act(obs))
            if actions.shape != (n_envs,):
                raise ValueError(
                    f"act must return {n_envs} actions (one per env), got shape {actions.shape}"
                )
            obs, _, _, infos = venv.step(actions)
            steps += 1
            for info in infos:
                ep = info.get("episode")
                if ep is not None and len(games) < episodes:
                    # frames: every agent step of the game (the env's FIRE/NOOP steps after a
                    # reset or a lost life included) x frame skip, as the frame cap counts them
                    games.append({
                        "score": float(ep["r"]),
                        "frames": int(ep["f"]),
                        "truncated": bool(info["TimeLimit.truncated"]),
                    })
                    lengths.append(int(ep["l"]))
            if observer is not None:
                observer(obs, infos)
    finally:
        venv.close()
    scores = [g["score"] for g in games]
    return EvalResult(
        mean=float(np.mean(scores)),
        scores=scores,
        episodes=len(games),
        frames=steps * n_envs * env.frame_skip,
        seconds=time.perf_counter() - start,
        lengths=lengths,
        truncated=sum(g["truncated"] for g in games),
        games=games,
    )


def evaluate_many(
    jobs: Sequence[EvalJob],
    env: EnvConfig,
    *,
    episodes: int = 10,
    n_envs: int = 10,
    max_frames: int = 27_000,
    workers: int | None = None,
    observers: Sequence[Observer | None] | None = None,
) -> list[EvalResult]:
    """:func:`evaluate` for every job, ``workers`` at a time (default: all at once), in job order.

    The jobs must not share mutable state: give each its own ``act`` (its own generator when it
    samples) and put a shared network in eval mode *before* calling, so that no thread toggles
    it. When a job raises, or the caller is interrupted (Ctrl-C arrives in the main thread,
    which waits here), the other games stop at their next step, their envs are closed, and the
    exception is re-raised: a second Ctrl-C does not wait for minutes of games to finish.
    """
    jobs = list(jobs)
    obs_list = list(observers) if observers is not None else [None] * len(jobs)
    if len(obs_list) != len(jobs):
        raise ValueError(f"{len(jobs)} jobs but {len(obs_list)} observers")
    if not jobs:
        return []

    stop = threading.Event()

    def one(k: int) -> EvalResult:
        job = jobs[k]
        return evaluate(job.act, job.game, env, episodes=episodes, n_envs=n_envs, seed=job.seed,
                        max_frames=max_frames, observer=obs_list[k], stop=stop)

    n = len(jobs) if workers is None else max(1, min(int(workers), len(jobs)))
    if n == 1:
        return [one(k) for k in range(len(jobs))]
    pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="clrl-eval")
    futures: list = []
    try:
        futures = [pool.submit(one, k) for k in range(len(jobs))]
        wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f.done() and not f.cancelled() and f.exception() is not None]
        if failed:  # the first job (in job order) that raised, as a sequential loop would
            raise failed[0].exception()
        return [f.result() for f in futures]
    except BaseException:
        stop.set()
        for f in futures:
            f.cancel()
        raise
    finally:
        pool.shutdown(wait=True)
