"""The lean rollout path (TaskPPO.collect_rollouts + RolloutStore) against SB3's loop, bit for bit.

Both paths run from the same network weights, the same torch/numpy seeds and the same env seed,
so they draw the same actions; every array of the buffer, the minibatches and the trained
weights must then be identical. Fake envs end episodes by termination *and* by truncation (the
SB3 #633 timeout bootstrap with ``terminal_observation``); a real Atari env with a frame cap does
the same through clrl's vector env.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from _fake_atari import RandomFrames
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.vec_env import DummyVecEnv
from torch.overrides import TorchFunctionMode

import clrl.rl.agent as agent_mod
import clrl.rl.rollout as rollout_mod
from clrl.config import EnvConfig, PPOConfig
from clrl.rl.agent import TaskPPO
from clrl.rl.policy import build_actor_critic, preprocess
from clrl.rl.rollout import RolloutStore

SMALL = dict(channels=(4, 8, 8), hidden=16)
ARRAYS = ("observations", "actions", "rewards", "episode_starts", "values", "log_probs", "advantages", "returns")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


class EndsBothWays(RandomFrames):
    """Random uint8 frames; episodes terminate every 7th step and are truncated every 5th."""

    def step(self, action):
        self.t += 1
        reward = float(self.np_random.normal()) + float(action)
        terminated = self.t % 7 == 0
        truncated = self.t % 5 == 0 and not terminated
        return self._obs(), reward, terminated, truncated, {}


def fake_env(n_envs: int = 3, seed: int = 0) -> DummyVecEnv:
    env = DummyVecEnv([EndsBothWays for _ in range(n_envs)])
    env.seed(seed)
    return env


def ppo_config(**kw) -> PPOConfig:
    base = dict(n_envs=3, n_steps=12, n_minibatches=4, n_epochs=2, learning_rate=1e-3, ent_coef=0.01, clip_range_vf=0.2)
    base.update(kw)
    return PPOConfig(**base)


def twin_models(env_fn, n_actions: int, cfg: PPOConfig, **lean_kw) -> tuple[TaskPPO, TaskPPO]:
    """SB3's loop and the lean loop over copies of one network, envs seeded alike."""
    torch.manual_seed(0)
    net = build_actor_critic(**SMALL, activation="relu")
    net.add_task(0, n_actions)
    sb3 = TaskPPO(env_fn(), net, 0, cfg, lean=False)
    lean = TaskPPO(env_fn(), copy.deepcopy(net), 0, cfg, **lean_kw)
    assert type(sb3.rollout_buffer) is RolloutBuffer and isinstance(lean.rollout_buffer, RolloutStore)
    for m in (sb3, lean):
        m.reset_envs(seed=5)
    return sb3, lean


def collect(model: TaskPPO, seed: int) -> None:
    torch.manual_seed(seed)
    model.collect_rollouts(model.env, model._callback, model.rollout_buffer, n_rollout_steps=model.n_steps)


def assert_same_buffers(a: RolloutBuffer, b: RolloutBuffer) -> None:
    for name in ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert np.array_equal(x, y), name
    assert a.full and b.full and a.pos == b.pos


def assert_same_state(a: TaskPPO, b: TaskPPO) -> None:
    assert np.array_equal(a._last_obs, b._last_obs)
    assert np.array_equal(a._last_episode_starts, b._last_episode_starts)
    assert a.num_timesteps == b.num_timesteps


@pytest.mark.parametrize("separate", [False, True], ids=["cpu-views", "device-copies"])
def test_lean_rollouts_and_updates_equal_sb3_bit_for_bit(separate):
    sb3, lean = twin_models(fake_env, 3, ppo_config(), separate_device=separate)
    for update in range(3):  # the store's arrays are reused, not re-zeroed: later rollouts too
        collect(sb3, seed=10 + update)
        collect(lean, seed=10 + update)
        assert_same_buffers(sb3.rollout_buffer, lean.rollout_buffer)
        assert_same_state(sb3, lean)
        if update == 0:  # the fake env truncated episodes: the #633 bootstrap was exercised
            starts = sb3.rollout_buffer.episode_starts
            assert starts[1:].sum() >= 3
        np.random.seed(update)
        sb3._current_progress_remaining = lean._current_progress_remaining = 1.0
        sb3.train()
        np.random.seed(update)
        lean.train()
        for p, q in zip(sb3.net.parameters(), lean.net.parameters(), strict=True):
            assert torch.equal(p, q)
        assert sb3.last_stats["loss"] == lean.last_stats["loss"]


def test_timeout_bootstrap_adds_gamma_times_the_terminal_value():
    """Independent check of the #633 bootstrap: reward + gamma * V(terminal obs) on truncations only."""
    _, lean = twin_models(fake_env, 3, ppo_config(n_steps=10, n_minibatches=2))
    seen: list[tuple[int, int, np.ndarray, float]] = []
    inner = lean.env.step

    def step(actions):
        obs, rew, dones, infos = inner(actions)
        for i, info in enumerate(infos):
            seen.append((len(seen) // lean.n_envs, i, info.get("terminal_observation"),
                         float(rew[i]), bool(info.get("TimeLimit.truncated", False))))
        return obs, rew, dones, infos

    lean.env.step = step
    collect(lean, seed=1)
    buf = lean.rollout_buffer
    truncations = 0
    for step_i, env_i, term_obs, raw, truncated in seen:
        expected = np.float32(raw)
        if truncated:
            truncations += 1
            with torch.no_grad():
                v = lean.policy.predict_values(torch.from_numpy(term_obs[None]))[0]
            expected = np.float32(expected + np.float32(lean.gamma * v.item()))
        assert buf.rewards[step_i, env_i] == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert truncations == 3 * 2  # steps 5 and 10 of each of the 3 envs


def test_lean_rollout_on_a_capped_atari_game_equals_sb3():
    """clrl's own vector env: frame-cap truncations and life losses carry terminal_observation."""
    from clrl.rl.envs import action_count, make_vec_env

    env_cfg = EnvConfig()
    n_actions = action_count("Boxing", env_cfg)

    def env_fn():
        return make_vec_env("Boxing", 2, env_cfg, 0, train=True, max_frames=40)  # truncated every 10 steps

    sb3, lean = twin_models(env_fn, n_actions, ppo_config(n_envs=2, n_steps=24, n_minibatches=2, rollout_groups=1))
    try:
        collect(sb3, seed=3)
        collect(lean, seed=3)
        assert_same_buffers(sb3.rollout_buffer, lean.rollout_buffer)
        assert_same_state(sb3, lean)
        assert sb3.rollout_buffer.episode_starts.sum() >= 4  # the cap ended games inside the rollout
    finally:
        sb3.env.close()
        lean.env.close()


def test_minibatches_are_sb3s_samples():
    sb3, lean = twin_models(fake_env, 3, ppo_config())
    collect(sb3, seed=2)
    collect(lean, seed=2)
    np.random.seed(7)
    expected = [[s for s in sb3.rollout_buffer.get(9)] for _ in range(2)]
    np.random.seed(7)
    got = [list(e) for e in lean.rollout_buffer.epochs(9, 2)]
    assert len(got) == 2 and [len(e) for e in got] == [4, 4]
    for ex_epoch, got_epoch in zip(expected, got, strict=True):
        for ex, gt in zip(ex_epoch, got_epoch, strict=True):
            for field in ex._fields:
                a, b = getattr(ex, field), getattr(gt, field)
                assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), field


def test_minibatch_observations_come_channels_last_and_preprocess_keeps_them():
    """The rollout is stored channels-last (pixel-major), so no minibatch is transposed: each is
    already in the network's layout (same values as SB3's NCHW samples, above)."""
    _, lean = twin_models(fake_env, 3, ppo_config())
    collect(lean, seed=2)
    buf = lean.rollout_buffer
    step = torch.as_tensor(buf.observations[0])  # what inference reads: one slot, channels-last
    assert step.is_contiguous(memory_format=torch.channels_last)
    for epoch in lean.rollout_buffer.epochs(9, 2):
        for sample in epoch:
            obs = sample.observations
            assert obs.dim() == 4 and obs.is_contiguous(memory_format=torch.channels_last)
            assert obs.contiguous(memory_format=torch.channels_last).data_ptr() == obs.data_ptr()
    # a minibatch of one (here a last one) is read in the plain layout, as SB3's samples are
    *_, last = lean.rollout_buffer.epochs(lean.rollout_buffer.observations.shape[0] * 3 - 1, 1)[0]
    one = last.observations
    assert one.shape[0] == 1 and not one.is_contiguous()
    assert preprocess(one).is_contiguous() and torch.equal(preprocess(one), preprocess(one.contiguous()))


class CountTransfers:
    """Counts calls of rollout.to_device / to_host (in both modules that use them)."""

    def __init__(self, monkeypatch) -> None:
        self.h2d = 0
        self.d2h = 0
        to_device, to_host = rollout_mod.to_device, rollout_mod.to_host

        def counted_h2d(dst, src):
            self.h2d += 1
            return to_device(dst, src)

        def counted_d2h(t):
            self.d2h += 1
            return to_host(t)

        monkeypatch.setattr(rollout_mod, "to_device", counted_h2d)
        monkeypatch.setattr(rollout_mod, "to_host", counted_d2h)
        monkeypatch.setattr(agent_mod, "to_host", counted_d2h)


def test_device_path_transfers_once_per_step_and_once_per_update(monkeypatch):
    """The GPU's copy path, on the CPU: obs uint8 everywhere; one H2D (obs) and one D2H
    (actions) per env step; per rollout one more of each; training adds two H2D, none per minibatch."""
    cfg = ppo_config(n_steps=10, n_minibatches=5, n_epochs=3)
    _, lean = twin_models(fake_env, 3, cfg, separate_device=True)
    buf = lean.rollout_buffer
    assert buf.separate and buf.obs_device.data_ptr() != buf._obs_host.data_ptr()
    assert buf.observations.dtype == np.uint8 and buf.obs_device.dtype == torch.uint8
    count = CountTransfers(monkeypatch)
    collect(lean, seed=0)
    truncations = 3 * 2  # steps 5 and 10
    # obs per step, the last obs, each terminal obs; actions per step, values+log-probs+last
    # values, the bootstraps' values
    assert count.h2d == 10 + 1 + truncations
    assert count.d2h == 10 + 1 + 1
    count.h2d = count.d2h = 0
    lean._current_progress_remaining = 1.0
    seen_obs: list[torch.dtype] = []
    evaluate = lean.policy.evaluate_actions
    lean.policy.evaluate_actions = lambda obs, actions: (seen_obs.append(obs.dtype), evaluate(obs, actions))[1]
    lean.train()
    assert count.h2d == 2 and count.d2h == 0  # packed scalars + permutations; 15 minibatches
    assert seen_obs == [torch.uint8] * 15  # minibatches reach the network as uint8


def test_training_reads_the_device_side_rollout():
    """With a separate device rollout, training reads only the device copies: zeroing the host
    observations after the rollout leaves the trained weights SB3's (a per-minibatch gather
    from the host arrays, i.e. a transfer per minibatch, would train on the zeros)."""
    sb3, lean = twin_models(fake_env, 3, ppo_config(), separate_device=True)
    collect(sb3, seed=10)
    collect(lean, seed=10)
    lean.rollout_buffer._obs_host.fill_(0)
    for model in (sb3, lean):
        np.random.seed(0)
        model._current_progress_remaining = 1.0
        model.train()
    for p, q in zip(sb3.net.parameters(), lean.net.parameters(), strict=True):
        assert torch.equal(p, q)


def test_host_to_device_copies_do_not_wait():
    """``to_device`` asks for an asynchronous copy (from pinned memory a GPU then does not
    synchronize per env step); on the CPU it is a plain copy."""
    seen: list[dict] = []

    class Dst:
        def copy_(self, src, **kwargs):
            seen.append(kwargs)
            return self

    rollout_mod.to_device(Dst(), torch.ones(1))
    assert seen == [{"non_blocking": True}]


class CountHostReads(TorchFunctionMode):
    """Every tensor method that reads a value back to the host (a sync on a GPU)."""

    # the reads themselves, the copies that end on the host (``to("cpu")``, ``np.asarray``), and
    # the ops whose output size depends on values or that check their input on the host
    # (``torch.multinomial`` reads it twice: what ``sample_actions`` avoids)
    NAMES = {"cpu", "item", "numpy", "tolist", "__bool__", "__float__", "__int__", "__index__", "nonzero",
             "to", "__array__", "multinomial", "masked_select", "unique", "argwhere", "repeat_interleave"}

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.NAMES:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


class EndsNever(EndsBothWays):
    def step(self, action):
        obs, reward, _, _, info = super().step(action)
        return obs, reward, False, False, info


@pytest.mark.parametrize("separate", [False, True], ids=["cpu-views", "device-copies"])
def test_one_host_read_per_env_step(separate):
    """Host reads grow by exactly the actions' ``.cpu().numpy()`` per env step: no ``.item()``,
    no value/log-prob copies, no implicit ``bool(tensor)`` inside the step loop."""
    per_rollout = {}
    for n_steps in (4, 8):
        torch.manual_seed(0)
        net = build_actor_critic(**SMALL, activation="relu")
        net.add_task(0, 3)
        env = DummyVecEnv([EndsNever for _ in range(3)])
        model = TaskPPO(env, net, 0, ppo_config(n_steps=n_steps, n_minibatches=1), separate_device=separate)
        model.reset_envs(seed=0)
        with CountHostReads() as mode:
            collect(model, seed=0)
        per_rollout[n_steps] = mode.calls
    probe = CountHostReads()  # the mode sees these methods at all (else the test proves nothing)
    with probe:
        torch.ones(2).cpu().numpy()
        np.asarray(torch.ones(2).to("cpu"))
        torch.multinomial(torch.ones(1, 2), 1)
    assert probe.calls == ["cpu", "numpy", "to", "__array__", "multinomial"]
    extra = list(per_rollout[8])
    for name in per_rollout[4]:
        extra.remove(name)
    assert sorted(extra) == sorted(["cpu", "numpy"] * 4)


def test_store_on_a_device_refuses_host_views():
    box = spaces.Box(0, 255, (4, 84, 84), np.uint8)
    with pytest.raises(ValueError, match="separate=False"):
        RolloutStore(4, box, spaces.Discrete(3), "meta", n_envs=2, separate=False)


def test_store_checks_its_spaces():
    box = spaces.Box(0, 255, (4, 84, 84), np.uint8)
    with pytest.raises(ValueError, match="Discrete"):
        RolloutStore(4, box, spaces.Box(-1, 1, (2,)), "cpu", n_envs=2)
    with pytest.raises(ValueError, match="Box observations"):
        RolloutStore(4, spaces.Discrete(3), spaces.Discrete(3), "cpu", n_envs=2)
    store = RolloutStore(4, box, spaces.Discrete(3), "cpu", n_envs=2)
    with pytest.raises(RuntimeError, match="not complete"):
        store.epochs(2, 1)


def _actions_from_observations(model: TaskPPO, n_actions: int) -> None:
    """Make the policy's action a function of each observation alone (its pixel sum mod n), so
    that any batching of the envs takes the same actions; values and log-probs stay the net's."""
    policy = model.policy

    def forward(obs, deterministic=False):
        logits, values = policy._heads(obs)
        logp = torch.log_softmax(logits, dim=1)
        actions = obs.reshape(len(obs), -1).sum(1, dtype=torch.int64) % n_actions
        return actions, values, logp.gather(1, actions.unsqueeze(1)).squeeze(1)

    policy.forward = forward


@pytest.mark.parametrize(("game", "groups", "n_steps"), [("Boxing", 2, 24), ("Breakout", 3, 64)])
def test_grouped_rollout_gives_sb3s_buffer_for_the_same_actions(game, groups, n_steps):
    """Pipelined groups (inference for one group while the others' emulators step) fill the buffer
    SB3's loop fills for the same actions: observations, actions, rewards and episode starts bit
    for bit; values and log-probs up to the float rounding of a smaller inference batch."""
    from clrl.rl.envs import action_count, make_vec_env

    env_cfg = EnvConfig()
    n_actions = action_count(game, env_cfg)

    def env_fn():  # Boxing: truncated every 10 steps; Breakout: lost lives, FIRE resets, game ends
        return make_vec_env(game, 4, env_cfg, 0, train=True, max_frames=40 if game == "Boxing" else 108_000)

    cfg = ppo_config(n_envs=4, n_steps=n_steps, n_minibatches=2, rollout_groups=groups)
    sb3, lean = twin_models(env_fn, n_actions, cfg)
    for m in (sb3, lean):
        _actions_from_observations(m, n_actions)
    try:
        for rollout in range(2):
            collect(sb3, seed=rollout)
            collect(lean, seed=rollout)
            a, b = sb3.rollout_buffer, lean.rollout_buffer
            for name in ("observations", "actions", "rewards", "episode_starts"):
                assert np.array_equal(getattr(a, name), getattr(b, name)), name
            for name in ("values", "log_probs", "advantages", "returns"):
                np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-5, err_msg=name)
            assert_same_state(sb3, lean)
        assert a.episode_starts[1:].sum() >= 4  # episodes ended inside the rollouts
        assert len(set(a.actions.ravel().tolist())) > 1
    finally:
        sb3.env.close()
        lean.env.close()


def test_grouped_envs_refuse_a_second_send_and_reset_waits_for_the_first():
    from clrl.rl.envs import make_vec_env

    env = make_vec_env("Boxing", 4, EnvConfig(), 0, train=True)
    try:
        env.reset()
        env.send_group(0, 2, np.zeros(2, dtype=np.int64))
        with pytest.raises(RuntimeError, match="before the previous one was received"):
            env.send_group(0, 2, np.zeros(2, dtype=np.int64))
        with pytest.raises(RuntimeError, match="recv without a step sent"):
            env.recv_group(2, 4)
        env.reset()  # the step in flight is waited for, then every env restarts
        env.send_group(0, 4, np.zeros(4, dtype=np.int64))
        obs, *_ = env.recv_group(0, 4)
        assert obs.shape == (4, 4, 84, 84)
    finally:
        env.close()


def test_rollout_threads_apply_to_the_rollout_only():
    """``rollout_threads`` sets torch's threads while the rollout is collected and gives training
    its own back (also when the rollout raises)."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    net = build_actor_critic(**SMALL, activation="relu")
    net.add_task(0, 3)
    model = TaskPPO(fake_env(), net, 0, ppo_config(rollout_threads=1))
    model.reset_envs(seed=0)
    seen: list[int] = []
    policy_forward = model.policy.forward
    model.policy.forward = lambda obs, deterministic=False: (seen.append(torch.get_num_threads()),
                                                             policy_forward(obs, deterministic))[1]
    collect(model, seed=0)
    assert set(seen) == {1} and torch.get_num_threads() == 2

    def broken(obs, deterministic=False):
        raise RuntimeError("inference failed")

    model.policy.forward = broken
    with pytest.raises(RuntimeError, match="inference failed"):
        collect(model, seed=0)
    assert torch.get_num_threads() == 2
