"""Atari vector envs (clrl.rl.envs) and evaluation (clrl.rl.evaluation).

Every semantic test runs on both backends. Games and caps are chosen so that each test needs
a few hundred agent steps: Breakout (5 lives, a random player loses one every ~25 steps),
SpaceInvaders (raw rewards 5..30 per alien), Pong (6 actions).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from clrl.config import EnvConfig
from clrl.errors import ConfigError, UserError
from clrl.rl.envs import AtariVecEnv, action_count, make_vec_env
from clrl.rl.evaluation import EvalResult, evaluate

BACKENDS = ["ale_vector", "gymnasium"]


def _threads() -> int:
    """OS threads of this process (the C++ workers are invisible to ``threading``)."""
    return len(os.listdir("/proc/self/task"))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def _cfg(backend: str, **kw) -> EnvConfig:
    return EnvConfig(backend=backend, **kw)


def _rollout(venv: AtariVecEnv, steps: int, seed: int = 0) -> dict[str, list]:
    """Step ``venv`` with seeded random actions; record everything it returns."""
    rng = np.random.default_rng(seed)
    rec: dict[str, list] = {"obs": [venv.reset()], "rew": [], "raw": [], "done": [], "infos": []}
    for _ in range(steps):
        obs, rew, done, infos = venv.step(rng.integers(0, venv.action_space.n, venv.num_envs))
        rec["obs"].append(obs)
        rec["rew"].append(rew)
        rec["raw"].append(venv.raw_rewards.copy())
        rec["done"].append(done)
        rec["infos"].append(infos)
    return rec


# --------------------------------------------------------------------------- spaces, errors


def test_spaces_and_dtypes(backend: str) -> None:
    with make_vec_env("Pong", 2, _cfg(backend), seed=0, train=True) as venv:
        assert venv.num_envs == 2
        assert venv.observation_space.shape == (4, 84, 84)
        assert venv.observation_space.dtype == np.uint8
        assert venv.observation_space.low.min() == 0 and venv.observation_space.high.max() == 255
        assert venv.action_space.n == 6
        obs = venv.reset()
        assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
        # the stack starts from zeros: only the newest frame is filled after reset
        assert (obs[:, :3] == 0).all() and obs[:, 3].any()
        obs, rew, done, infos = venv.step(np.zeros(2, dtype=np.int64))
        assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
        assert rew.shape == (2,) and rew.dtype == np.float32
        assert done.shape == (2,) and done.dtype == bool
        assert len(infos) == 2 and all("lives" in i for i in infos)
        # every step hands out fresh arrays (SB3 and the tests keep references to them)
        obs2 = venv.step(np.zeros(2, dtype=np.int64))[0]
        assert not np.shares_memory(obs, obs2)


def test_frame_stack_option(backend: str) -> None:
    with make_vec_env("Pong", 1, _cfg(backend, frame_stack=2), seed=0, train=True) as venv:
        assert venv.observation_space.shape == (2, 84, 84)
        assert venv.reset().shape == (1, 2, 84, 84)


@pytest.mark.parametrize("stack", [1, 2, 3, 4, 5])
def test_frame_stack_is_pixel_major_and_shifts_like_a_plain_stack(stack: int) -> None:
    """The stack lives in (n, H, W, stack) memory and is shifted by moving every byte one place
    (``_AtariBatch._push``); an independent plain (n, stack, H, W) stack, shifted by slicing,
    must hold the same frames after every push, for any stack size and env range."""
    from clrl.rl.envs import _AtariBatch

    class _Frames:  # just enough of an emulator for the stack: 3 envs, no FIRE
        num_envs, has_fire = 3, False

    batch = _AtariBatch(_Frames(), stack, fire_reset=False, frame_skip=4)
    plain = np.zeros((3, stack, 84, 84), dtype=np.uint8)
    rng = np.random.default_rng(stack)
    for lo, hi in [(0, 3), (1, 3), (0, 1), (0, 3), (2, 3), (0, 2)] * 2:
        frames = rng.integers(0, 256, (hi - lo, 84, 84), dtype=np.uint8)
        batch._push(lo, hi, frames)
        plain[lo:hi, :-1] = plain[lo:hi, 1:].copy()
        plain[lo:hi, -1] = frames
        assert np.array_equal(batch.stack, plain)
    assert batch.stack.strides == (84 * 84 * stack, 1, 84 * stack, stack)


def test_observations_come_channels_last(backend: str) -> None:
    """What the env hands out is already the network's input layout (no transpose at inference:
    ``preprocess`` keeps the memory), and copies made as SB3 makes them keep it."""
    import torch

    from clrl.rl.policy import preprocess

    with make_vec_env("Breakout", 3, _cfg(backend), seed=0, train=True) as venv:
        for obs in (venv.reset(), venv.step(np.ones(3, dtype=np.int64))[0]):
            assert obs.shape == (3, 4, 84, 84)
            x = torch.as_tensor(obs)
            assert x.is_contiguous(memory_format=torch.channels_last)
            assert x.contiguous(memory_format=torch.channels_last).data_ptr() == x.data_ptr()
            assert np.array(obs).strides == obs.strides
            assert torch.equal(preprocess(x), preprocess(torch.as_tensor(np.ascontiguousarray(obs))))


def test_action_count() -> None:
    assert action_count("Breakout", EnvConfig()) == 4
    assert action_count("boxing", EnvConfig()) == 18
    assert action_count("Pong", EnvConfig(full_action_space=True)) == 18
    with make_vec_env("Pong", 1, EnvConfig(full_action_space=True), seed=0, train=False) as venv:
        assert venv.action_space.n == 18
        venv.reset()
        venv.step(np.array([17]))  # the full set is really accepted


@pytest.mark.parametrize("name", ["Boxng", "NotAGame"])
def test_unknown_game(name: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_vec_env(name, 1, EnvConfig(), seed=0, train=True)
    assert isinstance(err.value, UserError)
    if name == "Boxng":
        assert "Boxing" in str(err.value)


def test_bad_actions_are_rejected(backend: str) -> None:
    """Out-of-range actions would throw inside a C++ worker thread: refuse them up front."""
    with make_vec_env("Breakout", 2, _cfg(backend), seed=0, train=True) as venv:
        venv.reset()
        with pytest.raises(ValueError, match="actions must lie"):
            venv.step(np.array([0, 4]))
        with pytest.raises(ValueError, match="expected 2 actions"):
            venv.step(np.array([0, 1, 2]))
        venv.step(np.array([0, 3]))


# --------------------------------------------------------------------------- auto-reset, caps


def test_frame_cap_truncates_and_autoresets(backend: str) -> None:
    """A 102-frame cap ends every game after ceil(102 / 4) = 26 agent steps, as a truncation
    (FIRE reset off: its two agent steps would count towards the cap)."""
    cfg = _cfg(backend, fire_reset=False)
    with make_vec_env("Boxing", 2, cfg, seed=3, train=True, max_frames=102) as venv:
        rec = _rollout(venv, 30)
    dones = np.array(rec["done"])
    assert not dones[:25].any()
    assert dones[25].all() and not dones[26:].any()
    for i, info in enumerate(rec["infos"][25]):
        assert info["TimeLimit.truncated"] is True and info["game_over"] is False
        assert info["episode"]["l"] == 26
        term = info["terminal_observation"]
        assert term.shape == (4, 84, 84) and term.dtype == np.uint8
        # the returned obs is the first of a new game (zero-padded stack), the terminal one is not
        new = rec["obs"][26][i]
        assert (new[:3] == 0).all() and term[:3].any()
        assert not np.array_equal(term, new)
        # the raw score over the capped game is what the episode reports
        raw = sum(r[i] for r in rec["raw"][:26])
        assert info["episode"]["r"] == pytest.approx(raw)
    # no info outside a done carries a terminal observation or an episode
    assert all("terminal_observation" not in inf for row in rec["infos"][:25] for inf in row)


def test_default_cap_comes_from_config(backend: str) -> None:
    with make_vec_env(
        "Boxing", 1, _cfg(backend, max_frames_per_episode=40, fire_reset=False), seed=0, train=False
    ) as venv:
        assert venv.max_frames == 40
        rec = _rollout(venv, 10)
    assert [bool(d[0]) for d in rec["done"]] == [False] * 9 + [True]


# --------------------------------------------------------------------------- episodic life, raw scores


def _life_rollout(backend: str, train: bool, steps: int = 450) -> dict[str, list]:
    with make_vec_env("Breakout", 2, _cfg(backend), seed=1, train=train) as venv:
        return _rollout(venv, steps, seed=1)


def test_episodic_life_in_training(backend: str) -> None:
    """A lost life is a terminal for the learner and restarts the frame stack (VecFrameStack at
    a done), but the same game goes on (no reset: lives keep counting down)."""
    rec = _life_rollout(backend, train=True)
    life_losses = games = 0
    for t, (done, infos) in enumerate(zip(rec["done"], rec["infos"], strict=True)):
        prev = rec["infos"][t - 1] if t else None
        for i, info in enumerate(infos):
            before = prev[i]["lives"] if prev else 5
            if done[i] and not info["game_over"]:
                life_losses += 1
                assert 0 < info["lives"] < before  # lost a life, has lives left
                assert "episode" not in info  # not a finished game
                # the stack restarts: zeros, then the frame after the NOOP/FIRE/2 soft reset;
                # the terminal observation is the full stack the learner last saw
                nxt, term = rec["obs"][t + 1][i], info["terminal_observation"]
                assert not nxt[:3].any() and nxt[3].any()
                assert term[:3].any() and not np.array_equal(term, nxt)
            elif done[i]:
                games += 1
                assert "episode" in info and info["lives"] == 5  # a new game has started
            else:
                assert info["lives"] >= before
    assert life_losses >= 8 and games >= 2
    # Breakout: lives 5 -> 4, 3, 2, 1 are life-loss terminals, the fifth loss ends the game,
    # so every finished game is exactly 4 learner-only terminals and then the game over
    for i in range(2):
        kinds = "".join(
            "G" if rec["infos"][t][i]["game_over"] else "L"
            for t in range(len(rec["done"]))
            if rec["done"][t][i]
        )
        *complete, _partial = kinds.split("G")
        assert complete and all(seg == "LLLL" for seg in complete), kinds


def test_eval_env_has_no_life_terminals_and_raw_rewards(backend: str) -> None:
    rec = _life_rollout(backend, train=False)
    for done, infos in zip(rec["done"], rec["infos"], strict=True):
        for i, info in enumerate(infos):
            assert bool(done[i]) == info["game_over"]  # only game over ends an eval episode
    assert np.array_equal(np.array(rec["rew"]), np.array(rec["raw"]).astype(np.float32))
    assert sum(d.sum() for d in rec["done"]) >= 2


def test_raw_score_and_clipped_training_rewards(backend: str) -> None:
    """SpaceInvaders pays 5..30 per alien: the learner sees sign(r), the episode the raw sum."""
    with make_vec_env(
        "SpaceInvaders", 2, _cfg(backend), seed=0, train=True, max_frames=1200
    ) as venv:
        rec = _rollout(venv, 310)
    rew, raw = np.array(rec["rew"]), np.array(rec["raw"])
    assert set(np.unique(rew)) <= {-1.0, 0.0, 1.0}
    assert np.array_equal(rew, np.sign(raw).astype(np.float32))
    assert raw.max() > 1  # otherwise clipping would be invisible and this test could not fail
    # raw score of each full game (cap 1200 frames = 300 steps, lives lost in between)
    for i in range(2):
        ends = [t for t in range(len(rec["infos"])) if "episode" in rec["infos"][t][i]]
        assert ends, "no game finished"
        start = 0
        for end in ends:
            ep = rec["infos"][end][i]["episode"]
            assert ep["r"] == pytest.approx(raw[start : end + 1, i].sum())
            assert ep["l"] == end + 1 - start
            assert ep["r"] > rew[start : end + 1, i].sum()  # unclipped, larger than the clipped sum
            start = end + 1


# --------------------------------------------------------------------------- determinism, seeding


def _trace(
    backend: str, seed: int, n_envs: int = 2, steps: int = 80, game: str = "Breakout", **kw
) -> dict[str, np.ndarray]:
    cfg = _cfg(backend, **kw)
    with make_vec_env(game, n_envs, cfg, seed=seed, train=True) as venv:
        rec = _rollout(venv, steps, seed=7)
    return {
        "obs": np.array(rec["obs"]),
        "raw": np.array(rec["raw"]),
        "done": np.array(rec["done"]),
        "lives": np.array([[i["lives"] for i in row] for row in rec["infos"]]),
    }


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("sticky", [0.0, 0.25])
def test_same_seed_same_trajectory(backend: str, sticky: float) -> None:
    # SpaceInvaders moves during the reset no-ops (Breakout waits for FIRE, so its no-ops,
    # which now come before the FIRE as in the baselines, change nothing there)
    a = _trace(backend, seed=5, sticky_actions=sticky, game="SpaceInvaders")
    b = _trace(backend, seed=5, sticky_actions=sticky, game="SpaceInvaders")
    c = _trace(backend, seed=6, sticky_actions=sticky, game="SpaceInvaders")
    assert _same(a, b)
    assert not np.array_equal(a["obs"], c["obs"])  # the seed matters


def test_batch_size_does_not_change_an_envs_dynamics() -> None:
    """Each env owns its emulator, RNG and C++ worker thread: env i (seed + i) plays the same
    game whether it runs beside one other env or beside three."""
    rng = np.random.default_rng(3)
    actions = rng.integers(0, 4, (60, 4))
    traces = []
    for n in (2, 4):
        with make_vec_env("Breakout", n, EnvConfig(), seed=11, train=True) as venv:
            obs = [venv.reset()[:2]]
            for a in actions[:, :n]:
                obs.append(venv.step(a)[0][:2])
        traces.append(np.array(obs))
    assert np.array_equal(traces[0], traces[1])


def test_seed_then_reset_is_reproducible(backend: str) -> None:
    with make_vec_env("Breakout", 2, _cfg(backend), seed=0, train=True) as venv:
        first = venv.reset()
        for _ in range(30):
            venv.step(np.ones(2, dtype=np.int64))
        assert venv.seed(0) == [0, 1]
        assert np.array_equal(venv.reset(), first)
        venv.seed(123)
        after = [venv.reset()] + [venv.step(np.full(2, 2))[0] for _ in range(20)]
        venv.seed(123)
        again = [venv.reset()] + [venv.step(np.full(2, 2))[0] for _ in range(20)]
        assert all(np.array_equal(x, y) for x, y in zip(after, again, strict=True))


def test_huge_seeds_are_folded() -> None:
    """SB3 seeds up to 2**32; the C++ envs take non-negative int32 seeds."""
    with make_vec_env("Pong", 2, EnvConfig(), seed=2**32 - 1, train=True) as venv:
        assert all(0 <= s < 2**31 for s in venv.seed(2**32 - 1))
        venv.reset()


def test_backends_agree_bit_for_bit() -> None:
    """Without random no-ops the emulator is deterministic, so both backends must give the very
    same observations, raw rewards, terminals and lives, across life losses, game overs and a
    frame-cap truncation (cap 520 frames = 130 agent steps, FIRE resets included)."""
    traces = []
    for backend in BACKENDS:
        with make_vec_env(
            "Breakout", 2, _cfg(backend, noop_max=0), seed=0, train=True, max_frames=520
        ) as venv:
            rec = _rollout(venv, 230)
        kinds = [
            [("G" if i["game_over"] else "T" if i["TimeLimit.truncated"] else "L") for i in row]
            for row in rec["infos"]
        ]
        traces.append(
            (np.array(rec["obs"]), np.array(rec["raw"]), np.array(rec["done"]), np.array(kinds))
        )
    (obs_a, raw_a, done_a, kind_a), (obs_g, raw_g, done_g, kind_g) = traces
    assert np.array_equal(obs_a, obs_g)
    assert np.array_equal(raw_a, raw_g) and np.array_equal(done_a, done_g)
    assert np.array_equal(kind_a[done_a], kind_g[done_g])
    assert set(kind_a[done_a]) == {"L", "G", "T"}  # all three kinds of terminal were compared


# --------------------------------------------------------------------------- lifecycle, SB3


def test_close_stops_threads() -> None:
    base = _threads()
    venv = make_vec_env("Pong", 4, EnvConfig(num_threads=3), seed=0, train=True)
    venv.reset()
    assert _threads() > base
    venv.close()
    venv.close()  # idempotent
    assert _threads() == base
    with pytest.raises(RuntimeError, match="closed"):
        venv.reset()


def test_sb3_ppo_learns_on_it_and_logs_raw_scores() -> None:
    """SB3 PPO takes the env as is; its ep_info_buffer gets raw full-game scores."""
    import torch
    from stable_baselines3 import PPO

    torch.set_num_threads(1)
    venv = make_vec_env("Boxing", 2, EnvConfig(fire_reset=False), seed=0, train=True, max_frames=64)
    try:
        model = PPO("CnnPolicy", venv, n_steps=32, batch_size=32, n_epochs=1, seed=0, device="cpu")
        model.learn(64)
        assert len(model.ep_info_buffer) >= 4  # games of 16 steps, 64 steps per env
        assert all(ep["l"] == 16 for ep in model.ep_info_buffer)
    finally:
        venv.close()


# --------------------------------------------------------------------------- evaluate()


def _random_act(n_actions: int, seed: int):
    rng = np.random.default_rng(seed)
    return lambda obs: rng.integers(0, n_actions, len(obs))


def test_evaluate_counts_the_first_k_games(backend: str) -> None:
    """Independent count: replay the same envs and actions, take the first 3 finished games."""
    cfg = _cfg(backend)
    res = evaluate(
        _random_act(4, 0), "Breakout", cfg, episodes=3, n_envs=2, seed=4, max_frames=2000
    )
    assert isinstance(res, EvalResult)
    assert res.episodes == 3 and len(res.scores) == 3

    act = _random_act(4, 0)
    finished: list[tuple[float, int]] = []
    steps = 0
    with make_vec_env("Breakout", 2, cfg, seed=4, train=False, max_frames=2000) as venv:
        obs = venv.reset()
        while len(finished) < 3:
            obs, _, done, infos = venv.step(act(obs))
            steps += 1
            finished += [(i["episode"]["r"], i["episode"]["l"]) for i in infos if "episode" in i]
    assert res.scores == [r for r, _ in finished[:3]]
    assert res.lengths == [n for _, n in finished[:3]]
    assert res.mean == pytest.approx(np.mean([r for r, _ in finished[:3]]))
    assert res.frames == steps * 2 * 4
    assert res.seconds > 0


def test_evaluate_frame_cap_and_determinism(backend: str) -> None:
    """A 40-frame cap ends every game after 10 steps: 2 envs give games in pairs; K=5 takes 5
    (FIRE reset off: its two agent steps would count towards the cap)."""
    cfg = _cfg(backend, fire_reset=False)
    const = lambda obs: np.zeros(len(obs), dtype=np.int64)  # noqa: E731
    res = evaluate(const, "Boxing", cfg, episodes=5, n_envs=2, seed=0, max_frames=40)
    assert res.episodes == 5 and res.lengths == [10] * 5 and res.truncated == 5
    assert res.frames == 30 * 2 * 4
    again = evaluate(const, "Boxing", cfg, episodes=5, n_envs=2, seed=0, max_frames=40)
    assert again.scores == res.scores
    a = evaluate(_random_act(4, 1), "Breakout", cfg, episodes=2, n_envs=2, seed=9, max_frames=400)
    b = evaluate(_random_act(4, 1), "Breakout", cfg, episodes=2, n_envs=2, seed=9, max_frames=400)
    assert a.scores == b.scores and a.frames == b.frames


def test_evaluate_closes_envs_and_checks_act() -> None:
    base = _threads()
    with pytest.raises(ValueError, match="one per env"):
        evaluate(lambda obs: np.zeros(3, dtype=np.int64), "Pong", EnvConfig(), episodes=1, n_envs=2)
    assert _threads() == base

    def boom(obs: np.ndarray) -> np.ndarray:
        raise KeyError("policy failed")

    with pytest.raises(KeyError):
        evaluate(boom, "Pong", EnvConfig(), episodes=1, n_envs=2)
    assert _threads() == base
    evaluate(
        lambda obs: np.zeros(len(obs), dtype=np.int64),
        "Pong",
        EnvConfig(),
        episodes=2,
        n_envs=2,
        max_frames=8,
    )
    assert _threads() == base
