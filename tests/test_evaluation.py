"""Per-game evaluation records and concurrent evaluation (clrl.rl.evaluation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clrl.config import EnvConfig
from clrl.metrics import bootstrap_ci
from clrl.rl.envs import action_count, make_vec_env
from clrl.rl.evaluation import EvalJob, evaluate, evaluate_many
from clrl.rl.policy import build_actor_critic

GAMES = ["Boxing", "Breakout", "Seaquest"]


# as the CPU configs run (train.torch_threads: 1): torch's workers and the emulators' threads
# would otherwise fight over a small machine's cores
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _const(obs: np.ndarray) -> np.ndarray:
    return np.zeros(len(obs), dtype=np.int64)


def test_every_scored_game_is_kept_with_its_frames_and_cap_flag() -> None:
    """Independent replay: the same envs and actions, episode infos collected by hand."""
    cfg = EnvConfig()
    rng = np.random.default_rng(0)
    res = evaluate(lambda o: rng.integers(0, 4, len(o)), "Breakout", cfg, episodes=3, n_envs=2, seed=4,
                   max_frames=600)
    rng = np.random.default_rng(0)
    want = []
    with make_vec_env("Breakout", 2, cfg, seed=4, train=False, max_frames=600) as venv:
        obs = venv.reset()
        while len(want) < 3:
            obs, _, _, infos = venv.step(rng.integers(0, 4, len(obs)))
            want += [{"score": i["episode"]["r"], "frames": i["episode"]["f"],
                      "truncated": i["TimeLimit.truncated"]} for i in infos if "episode" in i]
    assert res.games == want[:3]
    assert [g["score"] for g in res.games] == res.scores
    assert res.truncated == sum(g["truncated"] for g in res.games)
    assert res.ci() == bootstrap_ci(res.scores, seed=0)
    # the cap counts every agent step, the FIRE reset's two included: 40 frames in all
    capped = evaluate(_const, "Boxing", cfg, episodes=2, n_envs=2, seed=0, max_frames=40)
    assert capped.games == [{"score": s, "frames": 40, "truncated": True} for s in capped.scores]


def test_observer_sees_the_first_batch_and_every_step() -> None:
    seen: list[tuple[tuple, bool]] = []
    res = evaluate(_const, "Boxing", EnvConfig(), episodes=2, n_envs=2, seed=0, max_frames=40,
                   observer=lambda obs, infos: seen.append((obs.shape, infos is None)))
    assert seen[0] == ((2, 4, 84, 84), True)
    assert all(not first for _, first in seen[1:])
    assert len(seen) - 1 == res.frames // (2 * 4)  # one call per step


def _net():
    torch.manual_seed(0)
    net = build_actor_critic([8, 16, 16], 32, "relu")
    for j, g in enumerate(GAMES):
        net.add_task(j, action_count(g, EnvConfig()))
    return net.eval()


def _jobs(net, deterministic: bool) -> list[EvalJob]:
    return [
        EvalJob(net.actor_fn(j, deterministic=deterministic, generator=torch.Generator().manual_seed(10 + j)),
                g, seed=100 + j)
        for j, g in enumerate(GAMES)
    ]


@pytest.mark.parametrize("deterministic", [False, True])
def test_concurrent_games_equal_one_at_a_time_bit_for_bit(deterministic: bool) -> None:
    net = _net()
    kw = {"episodes": 2, "n_envs": 2, "max_frames": 1000}
    alone = [evaluate(j.act, j.game, EnvConfig(), seed=j.seed, **kw) for j in _jobs(net, deterministic)]
    together = evaluate_many(_jobs(net, deterministic), EnvConfig(), **kw)
    serial = evaluate_many(_jobs(net, deterministic), EnvConfig(), workers=1, **kw)
    for a, b, c in zip(alone, together, serial, strict=True):
        assert a.games == b.games == c.games
        assert a.frames == b.frames == c.frames
    assert len({tuple(r.scores) for r in alone}) > 1, "three different games should not all score alike"


def test_evaluate_many_reraises_and_checks_observers() -> None:
    def boom(obs: np.ndarray) -> np.ndarray:
        raise KeyError("policy failed")

    jobs = [EvalJob(_const, "Boxing", 0), EvalJob(boom, "Pong", 1)]
    with pytest.raises(KeyError):
        evaluate_many(jobs, EnvConfig(), episodes=1, n_envs=2, max_frames=40)
    with pytest.raises(ValueError, match="observers"):
        evaluate_many(jobs, EnvConfig(), observers=[None])
    assert evaluate_many([], EnvConfig()) == []


class _Counting:
    def __init__(self, fail_at: int | None = None, then=None) -> None:
        self.calls, self.fail_at, self.then = 0, fail_at, then

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls == self.fail_at:
            self.then()
        return _const(obs)


def test_a_failing_game_stops_the_others_at_their_next_step() -> None:
    """A full Boxing game is about 1,780 agent steps; the game beside a failing one stops long
    before (it would otherwise be played to its end before the error is seen)."""
    def boom() -> None:
        raise KeyError("policy failed")

    long_game, failing = _Counting(), _Counting(fail_at=5, then=boom)
    jobs = [EvalJob(long_game, "Boxing", 0), EvalJob(failing, "Pong", 1)]
    with pytest.raises(KeyError):
        evaluate_many(jobs, EnvConfig(), episodes=1, n_envs=1, max_frames=27_000)
    assert long_game.calls < 1000


def test_an_interrupt_stops_every_game() -> None:
    """SIGINT in the main thread (waiting in evaluate_many) stops the games at once."""
    import signal
    import threading

    class Interrupted(Exception):
        pass

    def handler(signum, frame):
        raise Interrupted

    main = threading.main_thread().ident
    games = [_Counting(fail_at=5, then=lambda: signal.pthread_kill(main, signal.SIGINT)), _Counting()]
    jobs = [EvalJob(games[0], "Boxing", 0), EvalJob(games[1], "Boxing", 1)]
    old = signal.signal(signal.SIGINT, handler)
    try:
        with pytest.raises(Interrupted):
            evaluate_many(jobs, EnvConfig(), episodes=1, n_envs=1, max_frames=27_000)
    finally:
        signal.signal(signal.SIGINT, old)
    assert max(g.calls for g in games) < 1000
