"""Life-loss semantics of the Atari envs against the baselines' wrappers (issue: evaluation
you can trust): FIRE after every lost life, the frame stack restarted at a life-loss
terminal, reset = no-ops then FIRE, in both backends.

Three kinds of check: real Breakout with a policy that never presses FIRE (it must not stall),
a step-for-step comparison with gymnasium + SB3's ``AtariWrapper`` + ``VecFrameStack`` through
many lost lives, and a scripted fake emulator that pins the exact action sequence and the
score bookkeeping of ``_AtariBatch``.
"""

from __future__ import annotations

import numpy as np
import pytest

from clrl.config import EnvConfig
from clrl.rl.envs import OBS_SIZE, AtariVecEnv, _AtariBatch, make_vec_env
from clrl.rl.evaluation import evaluate

BACKENDS = ["ale_vector", "gymnasium"]


def _noop(obs: np.ndarray) -> np.ndarray:
    return np.zeros(len(obs), dtype=np.int64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_never_fire_policy_games_end_by_lives_not_the_cap(backend: str) -> None:
    """Breakout waits for FIRE after every lost life: with FIRE pressed by the env, a NOOP
    policy loses its 5 lives and the game ends long before the 20,000-frame cap."""
    res = evaluate(_noop, "Breakout", EnvConfig(backend=backend), episodes=2, n_envs=2,
                   max_frames=20_000)
    assert res.episodes == 2 and res.truncated == 0
    assert all(n * 4 < 20_000 for n in res.lengths)


def test_without_fire_reset_the_same_policy_stalls() -> None:
    """The check above can fail: without the FIRE presses the ball is never served again."""
    res = evaluate(_noop, "Breakout", EnvConfig(fire_reset=False), episodes=2, n_envs=2,
                   max_frames=2_000)
    assert res.truncated == 2


def _sb3_reference(n: int):
    import ale_py
    import gymnasium as gym
    from stable_baselines3.common.atari_wrappers import AtariWrapper
    from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack

    gym.register_envs(ale_py)

    def make() -> gym.Env:
        env = gym.make("ALE/Breakout-v5", frameskip=1, repeat_action_probability=0.0)
        return AtariWrapper(env, noop_max=0, frame_skip=4, screen_size=OBS_SIZE,
                            terminal_on_life_loss=True, clip_reward=False)

    return VecFrameStack(DummyVecEnv([make] * n), 4, channels_order="last")


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_sb3_wrappers_step_for_step(backend: str) -> None:
    """Observations, raw rewards and dones equal SB3's ``AtariWrapper`` (EpisodicLifeEnv +
    FireResetEnv) + ``VecFrameStack`` at every step, through many lost lives and game overs.

    No-ops are off in both (their random draws differ by design). In Breakout the gray
    max-pool and SB3's RGB max-pool give the same pixels; in some games (StarGunner,
    DemonAttack) about 0.15% of pixels differ, the one known difference (envs.py docstring)."""
    ref = _sb3_reference(2)
    ours = make_vec_env("Breakout", 2, EnvConfig(backend=backend, noop_max=0), seed=0, train=True)
    try:
        assert np.array_equal(ours.reset(), np.transpose(ref.reset(), (0, 3, 1, 2)))
        rng = np.random.default_rng(0)
        life_losses = games = 0
        for t in range(300):
            actions = rng.choice([0, 2, 3], size=2)  # NOOP, RIGHT, LEFT: never FIRE
            obs, _, done, infos = ours.step(actions)
            r_obs, r_rew, r_done, r_infos = ref.step(actions)
            assert np.array_equal(done, r_done), t
            assert np.array_equal(ours.raw_rewards, r_rew), t
            assert np.array_equal(obs, np.transpose(r_obs, (0, 3, 1, 2))), t
            for i in np.flatnonzero(done):
                term = r_infos[i]["terminal_observation"]
                assert np.array_equal(infos[i]["terminal_observation"], np.transpose(term, (2, 0, 1)))
            life_losses += sum(bool(d) and not i["game_over"] for d, i in zip(done, infos, strict=True))
            games += sum(i["game_over"] for i in infos)
        assert life_losses >= 8 and games >= 2
    finally:
        ours.close()
        ref.close()


# --------------------------------------------------------------------------- scripted emulator


class _FakeEmulators:
    """Scripted emulators: env ``i`` loses a life at each learner step listed in
    ``life_loss_at[i]`` and its game ends when lives reach 0; every agent step pays reward 1
    (so scripted steps are visible in the score) and records its action."""

    def __init__(self, n: int, has_fire: bool, lives: int = 3, life_loss_every: int = 4) -> None:
        self.num_envs = n
        self.has_fire = has_fire
        self.start_lives = lives
        self.every = life_loss_every
        self.actions: list[list[int]] = [[] for _ in range(n)]
        self.resets = [0] * n
        self._lives = np.full(n, lives)
        self._t = np.zeros(n, dtype=int)  # learner-visible steps since the last life loss
        self._pending: dict[int, int] = {}  # sent actions, stepped at recv

    def _frame(self, i: int) -> np.ndarray:
        return np.full((OBS_SIZE, OBS_SIZE), 10 * (len(self.actions[i]) % 25) + 1, np.uint8)

    def reset(self, idx, seeds):
        for i in idx:
            self.resets[i] += 1
            self.actions[i].append(-1)  # marks a reset in the action log
            self._lives[i] = self.start_lives
            self._t[i] = 0
        return np.stack([self._frame(i) for i in idx]), self._lives[idx].copy()

    def send(self, idx, actions):
        for i, a in zip(idx, actions, strict=True):
            self._pending[i] = a

    def recv(self, idx):
        k = len(idx)
        frames = np.zeros((k, OBS_SIZE, OBS_SIZE), np.uint8)
        final = np.zeros_like(frames)
        over = np.zeros(k, bool)
        for n, i in enumerate(idx):
            a = self._pending.pop(i)
            self.actions[i].append(int(a))
            if a == 5:  # the learner's own actions are 5 in these tests
                self._t[i] += 1
                if self._t[i] == np.broadcast_to(self.every, (self.num_envs,))[i]:
                    self._t[i] = 0
                    self._lives[i] -= 1
            frames[n] = self._frame(i)
            if self._lives[i] == 0:
                over[n] = True
                final[n] = frames[n]
                self.reset([i], [None])
                frames[n] = self._frame(i)
        return frames, np.ones(k), over, np.zeros(k, bool), self._lives[idx].copy(), final

    def close(self) -> None:
        pass


def _venv(emu: _FakeEmulators, train: bool = True) -> AtariVecEnv:
    batch = _AtariBatch(emu, frame_stack=4, fire_reset=True, frame_skip=4)
    return AtariVecEnv(batch, "Fake", 6, 4, seed=0, episodic_life=train, clip_rewards=train,
                       max_frames=10_000)


def test_scripted_sequence_with_fire() -> None:
    """reset -> FIRE, 2; each lost life -> NOOP, FIRE, 2; the learner never sees them."""
    emu = _FakeEmulators(1, has_fire=True, lives=3, life_loss_every=4)
    venv = _venv(emu)
    obs = venv.reset()
    assert not obs[0, :3].any() and obs[0, 3].any()  # fresh stack: zeros, then the frame
    dones, infos = [], []
    for _ in range(12):
        obs, rew, done, info = venv.step(np.array([5]))
        dones.append(bool(done[0]))
        infos.append(info[0])
        assert rew[0] == 1.0  # the learner's own step only
        if done[0]:
            assert not obs[0, :3].any()  # the stack restarted at the terminal
            assert infos[-1]["terminal_observation"][:3].any()
    L = [5, 5, 5, 5]
    assert emu.actions[0] == [-1, 1, 2, *L, 0, 1, 2, *L, 0, 1, 2, *L, -1, 1, 2]
    assert dones == [False, False, False, True] * 3
    assert [i["life_lost"] for i in infos] == [False] * 3 + [True] + [False] * 3 + [True] + [False] * 4
    ep = infos[-1]["episode"]
    # 12 learner steps; score counts every agent step of the game: 2 (FIRE reset) + 12 + 2 x 3
    assert ep["l"] == 12 and ep["r"] == 2 + 12 + 2 * 3 and ep["f"] == (2 + 12 + 2 * 3) * 4


def test_scripted_sequence_without_fire_and_in_evaluation() -> None:
    """No FIRE in the action set: a lost life costs one NOOP step; evaluation (no episodic
    life) plays the same steps but ends the learner's episode only at game over."""
    emu = _FakeEmulators(1, has_fire=False, lives=2, life_loss_every=3)
    venv = _venv(emu, train=False)
    venv.reset()
    dones = [bool(venv.step(np.array([5]))[2][0]) for _ in range(6)]
    assert emu.actions[0] == [-1, 5, 5, 5, 0, 5, 5, 5, -1]
    assert dones == [False] * 5 + [True]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_stepping_in_groups_equals_stepping_all_envs(train: bool) -> None:
    """``send_group``/``recv_group`` over groups (0..1, 1..4), interleaved as the pipelined rollout
    interleaves them, give each env what a full ``step`` gives it: observations, rewards, dones,
    infos (scores of games that end after scripted FIRE steps included) and action logs."""
    every = [3, 4, 5, 7]  # envs lose lives at different steps, in both groups
    full_emu, grouped_emu = _FakeEmulators(4, has_fire=True), _FakeEmulators(4, has_fire=True)
    for emu in (full_emu, grouped_emu):
        emu.every = np.array(every)
    full, grouped = _venv(full_emu, train), _venv(grouped_emu, train)
    full.reset()
    grouped.reset()
    ended = 0
    for _ in range(40):
        actions = np.full(4, 5)
        want = full.step(actions)
        grouped.send_group(0, 1, actions[:1])
        grouped.send_group(1, 4, actions[1:])
        second = grouped.recv_group(1, 4)
        first = grouped.recv_group(0, 1)
        for k in range(3):  # obs, rewards, dones
            assert np.array_equal(want[k], np.concatenate([first[k], second[k]])), k
        infos = first[3] + second[3]
        for w, g in zip(want[3], infos, strict=True):
            assert w.keys() == g.keys()
            for key in w:
                if key == "episode":
                    assert {k: v for k, v in w[key].items() if k != "t"} == {k: v for k, v in g[key].items() if k != "t"}
                    ended += 1
                else:
                    assert np.array_equal(w[key], g[key]), key
    assert full_emu.actions == grouped_emu.actions
    assert ended >= 4  # every env finished games
