"""Evaluation of a policy on one Atari game, as the AGS-CL code scores its agents.

REFERENCE.md ("Evaluation"): argmax actions (the caller's ``act``), K envs in parallel, full
games with raw rewards and no life-loss terminals, and the score is the mean raw score of the
*first* ``episodes`` games to finish (in env order within a step), each capped at
``max_frames`` emulator frames (a capped game counts as finished with its score so far).
Taking the first finished games slightly favours short games; that is the protocol the paper's
numbers use, so clrl keeps it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from clrl.config import EnvConfig
from clrl.rl.envs import make_vec_env

__all__ = ["EvalResult", "evaluate"]


@dataclass
class EvalResult:
    """``mean`` of the first ``episodes`` finished games' raw ``scores``.

    ``frames``: emulator frames stepped by all envs together (agent steps x frame skip);
    ``lengths``: agent steps of each scored game, in the order of ``scores``.
    """

    mean: float
    scores: list[float]
    episodes: int
    frames: int
    seconds: float
    lengths: list[int] = field(default_factory=list)
    truncated: int = 0


def evaluate(
    act: Callable[[np.ndarray], np.ndarray],
    game: str,
    env: EnvConfig,
    *,
    episodes: int = 10,
    n_envs: int = 10,
    seed: int = 0,
    max_frames: int = 27_000,
) -> EvalResult:
    """Play ``game`` with ``act`` until ``episodes`` games have finished; see the module docstring.

    ``act`` maps a uint8 batch ``(n_envs, stack, 84, 84)`` to ``n_envs`` integer actions. With a
    deterministic ``act`` the result depends only on ``seed``. The envs are closed on return,
    also when ``act`` raises.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")
    start = time.perf_counter()
    venv = make_vec_env(game, n_envs, env, seed, train=False, max_frames=max_frames)
    scores: list[float] = []
    lengths: list[int] = []
    truncated = 0
    steps = 0
    try:
        obs = venv.reset()
        while len(scores) < episodes:
            actions = np.asarray(act(obs))
            if actions.shape != (n_envs,):
                raise ValueError(
                    f"act must return {n_envs} actions (one per env), got shape {actions.shape}"
                )
            obs, _, _, infos = venv.step(actions)
            steps += 1
            for info in infos:
                ep = info.get("episode")
                if ep is not None and len(scores) < episodes:
                    scores.append(float(ep["r"]))
                    lengths.append(int(ep["l"]))
                    truncated += bool(info["TimeLimit.truncated"])
    finally:
        venv.close()
    return EvalResult(
        mean=float(np.mean(scores)),
        scores=scores,
        episodes=len(scores),
        frames=steps * n_envs * env.frame_skip,
        seconds=time.perf_counter() - start,
        lengths=lengths,
        truncated=truncated,
    )
