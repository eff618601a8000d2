"""The RL core's statistics and sampling paths against independent computations (numpy by hand,
``torch.multinomial``, the env's own observations), where the bit-for-bit comparisons with SB3
cannot tell: those run the same code on both sides (a mutation audit found these untested)."""

from __future__ import annotations

import ale_py
import gymnasium as gym
import numpy as np
import pytest
import torch
from _fake_atari import RandomFrames
from gymnasium import spaces
from gymnasium.utils import seeding
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv
from torch.nn import functional as F

from clrl.config import PPOConfig
from clrl.metrics import bootstrap_ci
from clrl.rl.agent import TaskPPO, collect_states, normalize_rollout_advantages
from clrl.rl.envs import AtariVecEnv, _AtariBatch, _NoopReset
from clrl.rl.evaluation import EvalResult
from clrl.rl.policy import TaskPolicy, build_actor_critic
from clrl.rl.schedule import CheckpointSchedule

SMALL = dict(channels=(4, 8, 8), hidden=16)
N_ACTIONS = 3

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


class Fake(RandomFrames):
    """Random frames; reward 1 for action 0 plus noise; episodes of 5 steps."""

    def step(self, action):
        self.t += 1
        return self._obs(), float(action == 0) + float(self.np_random.normal()), self.t >= 5, False, {}


def _model(advantage_norm: str = "none", value_loss: str = "sb3", **kw) -> TaskPPO:
    torch.manual_seed(3)
    net = build_actor_critic(**SMALL, activation="relu")
    net.add_task(0, N_ACTIONS)
    cfg = PPOConfig(n_envs=2, n_steps=8, n_minibatches=2, n_epochs=1, learning_rate=1e-3, ent_coef=0.01,
                    vf_coef=0.5, clip_range=0.1, clip_range_vf=None, advantage_norm=advantage_norm,
                    value_loss=value_loss, **kw)
    env = DummyVecEnv([lambda: Fake(N_ACTIONS) for _ in range(2)])
    model = TaskPPO(env, net, 0, cfg)
    model.reset_envs(seed=1)
    return model


def _standardize(a: np.ndarray, eps: float) -> np.ndarray:
    return (a - a.mean()) / (a.std(ddof=1) + eps)


# advantage scale per mode: small enough that each mode's epsilon (1e-8 per minibatch, 1e-5 over
# the rollout) moves the standardized advantages, so a wrong epsilon or std shows in the loss
SCALES = {"none": 1.0, "minibatch": 1e-8, "rollout": 1e-5}


@pytest.mark.parametrize("advantage_norm", list(SCALES))
def test_update_statistics_equal_numpy_by_hand(advantage_norm: str) -> None:
    """One epoch of two minibatches at learning rate 0 (the linear schedule at progress 0), so
    both minibatches see the same network: every statistic is then a mean over SB3's minibatches
    of numpy formulas on one forward pass of the whole rollout. The old log-probabilities are
    perturbed so that the ratios fall on both sides of the clip range."""
    model = _model(advantage_norm)
    model.collect_rollouts(model.env, model._callback, model.rollout_buffer, n_rollout_steps=model.n_steps)
    buf = model.rollout_buffer
    rng = np.random.default_rng(0)
    buf.log_probs += rng.uniform(-0.4, 0.4, buf.log_probs.shape).astype(np.float32)  # in place: training reads it
    buf.advantages[...] = (buf.advantages * SCALES[advantage_norm]).astype(np.float32)

    def flat(x: np.ndarray) -> np.ndarray:  # SB3's env-major flattening
        return np.ascontiguousarray(x.swapaxes(0, 1)).reshape(x.shape[0] * x.shape[1], *x.shape[2:])

    obs = flat(buf.observations)
    actions = flat(buf.actions).reshape(-1).astype(np.int64)
    old_logp, adv_all = flat(buf.log_probs).astype(np.float64), flat(buf.advantages).astype(np.float64)
    returns = flat(buf.returns).astype(np.float64)
    with torch.no_grad():
        logits, v = model.net(torch.from_numpy(obs), 0)
    logp_all = F.log_softmax(logits.double(), dim=1).numpy()
    values = v.double().numpy().reshape(-1)
    logp = logp_all[np.arange(len(actions)), actions]
    entropy = -(np.exp(logp_all) * logp_all).sum(axis=1)
    if advantage_norm == "rollout":
        adv_all = _standardize(adv_all, 1e-5)

    np.random.seed(7)
    perm = np.random.permutation(len(actions))  # SB3's minibatch order (RolloutBuffer.get)
    per: dict[str, list[float]] = {k: [] for k in ("policy_loss", "value_loss", "entropy", "approx_kl",
                                                   "clip_fraction", "loss")}
    for idx in np.split(perm, 2):
        adv = _standardize(adv_all[idx], 1e-8) if advantage_norm == "minibatch" else adv_all[idx]
        log_ratio = logp[idx] - old_logp[idx]
        ratio = np.exp(log_ratio)
        pg = -np.minimum(adv * ratio, adv * np.clip(ratio, 0.9, 1.1)).mean()
        vl = ((values[idx] - returns[idx]) ** 2).mean()
        ent = entropy[idx].mean()
        per["policy_loss"].append(pg)
        per["value_loss"].append(vl)
        per["entropy"].append(ent)
        per["approx_kl"].append(((ratio - 1) - log_ratio).mean())  # Schulman's k3 estimator, as SB3
        per["clip_fraction"].append((np.abs(ratio - 1) > 0.1).mean())
        per["loss"].append(pg - 0.01 * ent + 0.5 * vl)
    want = {k: float(np.mean(x)) for k, x in per.items()}
    want["explained_variance"] = float(1 - np.var(flat(buf.returns) - flat(buf.values)) / np.var(flat(buf.returns)))

    np.random.seed(7)
    model._current_progress_remaining = 0.0
    before = [p.detach().clone() for p in model.net.parameters()]
    model.train()
    assert all(torch.equal(a, b) for a, b in zip(before, model.net.parameters(), strict=True)), "lr 0: no change"
    got = model.last_stats
    assert got["learning_rate"] == 0.0
    assert 0 < want["clip_fraction"] < 1  # the data exercises the clip on both sides of it
    # the clipped and unclipped terms differ, and the ratio reaches both ends of the clip range
    ratio = np.exp(logp - old_logp)
    assert (ratio > 1.1).any() and (ratio < 0.9).any()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-9), key


def test_rollout_standardization_epsilon_and_bessel_by_hand() -> None:
    """A std of the order of the epsilon: [0, 2e-5] has mean 1e-5 and unbiased std sqrt(2) 1e-5,
    so the result is +-1e-5 / (sqrt(2) 1e-5 + 1e-5) = +-1 / (1 + sqrt(2))."""
    out = normalize_rollout_advantages(np.array([0.0, 2e-5]))
    assert out == pytest.approx([-1 / (1 + np.sqrt(2)), 1 / (1 + np.sqrt(2))], rel=1e-6)


def test_rollout_advantages_are_gae_by_hand() -> None:
    """GAE (Schulman et al. 2016, eq. 16) written out over the stored rewards and values with
    SB3's convention (``episode_starts[t + 1]`` cuts the trace after step t; the rollout's last
    step bootstraps from V(last observation) unless that env just finished), at a gamma and
    lambda that tell each other apart."""
    model = _model(gamma=0.9, gae_lambda=0.7)
    for _ in range(5):  # 5 x 8 steps: the last rollout starts mid-episode and ends on a done
        model.collect_rollouts(model.env, model._callback, model.rollout_buffer, n_rollout_steps=model.n_steps)
    buf = model.rollout_buffer
    assert buf.episode_starts[1:].any()
    with torch.no_grad():
        last_v = model.net(torch.as_tensor(model._last_obs), 0)[1].double().numpy().reshape(-1)
    last_done = model._last_episode_starts.astype(np.float64)
    assert last_done.all()
    r, v = buf.rewards.astype(np.float64), buf.values.astype(np.float64)
    starts = buf.episode_starts.astype(np.float64)
    adv = np.zeros_like(r)
    run = np.zeros(r.shape[1])
    for t in reversed(range(r.shape[0])):
        alive = 1.0 - (last_done if t == r.shape[0] - 1 else starts[t + 1])
        next_v = last_v if t == r.shape[0] - 1 else v[t + 1]
        run = r[t] + 0.9 * next_v * alive - v[t] + 0.9 * 0.7 * alive * run
        adv[t] = run
    assert np.allclose(buf.advantages, adv, atol=1e-5)
    assert np.allclose(buf.returns, adv + v, atol=1e-5)


def test_drained_episodes_are_the_monitored_raw_returns_once() -> None:
    """``drain_episodes`` hands each finished episode once, with the return the env paid over it
    (here the stored rewards: no clipping, no timeouts) and its length."""
    torch.manual_seed(3)
    net = build_actor_critic(**SMALL, activation="relu")
    net.add_task(0, N_ACTIONS)
    env = DummyVecEnv([lambda: Monitor(Fake(N_ACTIONS)) for _ in range(2)])
    model = TaskPPO(env, net, 0, PPOConfig(n_envs=2, n_steps=8, n_minibatches=2))
    model.reset_envs(seed=1)
    model.collect_rollouts(model.env, model._callback, model.rollout_buffer, n_rollout_steps=model.n_steps)
    r = model.rollout_buffer.rewards
    got = model.drain_episodes()
    assert [e["l"] for e in got] == [5.0, 5.0]  # env order within the step that ended both
    assert [e["r"] for e in got] == pytest.approx([float(r[:5, 0].sum()), float(r[:5, 1].sum())], rel=1e-5)
    assert model.drain_episodes() == []


def _policy() -> tuple[TaskPolicy, torch.Tensor]:
    torch.manual_seed(0)
    net = build_actor_critic(**SMALL, activation="relu")
    net.add_task(0, 5)
    policy = TaskPolicy(spaces.Box(0, 255, (4, 84, 84), np.uint8), spaces.Discrete(5), lambda p: 1e-3,
                        net=net, task=0)
    return policy, torch.randint(0, 256, (64, 4, 84, 84), dtype=torch.uint8)


def test_rollout_actions_are_torch_multinomial_draws_from_the_policy() -> None:
    """The rollout step samples pi(.|s) (not its argmax): the same draws as
    ``torch.multinomial`` on the policy's probabilities from the same seed."""
    policy, obs = _policy()
    with torch.no_grad():
        logp = F.log_softmax(policy.net.logits(obs, 0), dim=1)
        torch.manual_seed(5)
        actions, _, log_probs = policy(obs)
        torch.manual_seed(5)
        want = torch.multinomial(logp.exp(), 1).squeeze(1)
    assert torch.equal(actions, want)
    assert torch.allclose(log_probs, logp.gather(1, want[:, None]).squeeze(1))
    assert not torch.equal(actions, logp.argmax(1))  # near-uniform heads: sampling is visible


def test_evaluation_actor_argmax_and_sampled_by_hand() -> None:
    policy, obs = _policy()
    net = policy.net
    with torch.no_grad():
        logits = net.logits(obs, 0)
    greedy = net.actor_fn(0, deterministic=True)(obs.numpy())
    assert np.array_equal(greedy, logits.argmax(1).numpy())
    sampled = net.actor_fn(0, deterministic=False, generator=torch.Generator().manual_seed(3))(obs.numpy())
    want = torch.multinomial(F.softmax(logits, dim=1), 1, generator=torch.Generator().manual_seed(3)).squeeze(1)
    assert np.array_equal(sampled, want.numpy())
    assert not np.array_equal(sampled, greedy)


def test_collect_states_are_the_visited_observations_in_order() -> None:
    """The states are the env's observations as the policy meets them (current one first), cut at
    ``n``, and the model goes on from the last observation the env returned."""
    model = _model()
    model.reset_envs(seed=2)
    seen = [np.array(model._last_obs)]
    inner = model.env.step

    def step(actions):
        out = inner(actions)
        seen.append(np.array(out[0]))
        return out

    model.env.step = step
    states = collect_states(model, 5, batch_size=2)
    assert [len(s) for s in states] == [2, 2, 1]
    assert torch.equal(torch.cat(states), torch.from_numpy(np.concatenate(seen)[:5]))
    assert np.array_equal(model._last_obs, seen[-1])


def test_eval_result_interval_uses_its_seed() -> None:
    scores = [float(x) for x in np.random.default_rng(0).normal(100.0, 30.0, 20)]
    res = EvalResult(mean=float(np.mean(scores)), scores=scores, episodes=20, frames=0, seconds=0.0)
    assert res.ci(seed=3) == bootstrap_ci(scores, seed=3)
    assert res.ci(seed=3) != res.ci(seed=4)


class _CountingAle:
    def __init__(self, over_at: int | None) -> None:
        self.noops, self.resets, self._over_at = 0, 0, over_at

    def act(self, action) -> None:
        assert action == ale_py.Action.NOOP
        self.noops += 1

    def game_over(self) -> bool:
        return self._over_at is not None and self.noops == self._over_at

    def reset_game(self) -> None:
        self.resets += 1


class _AleStub(gym.Env):
    observation_space = spaces.Box(0, 255, (1,), np.uint8)
    action_space = spaces.Discrete(2)

    def __init__(self, over_at: int | None = None) -> None:
        self.ale = _CountingAle(over_at)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, dtype=np.uint8), {}


def test_gymnasium_noop_reset_draws_0_to_noop_max_minus_1_from_the_envs_generator() -> None:
    """The gymnasium backend's no-ops are the C++ env's rule, k ~ U{0..noop_max-1}, drawn from
    the env's own seeded generator (gymnasium's ``np_random(seed)``), restarting a game that ends."""
    counts = []
    for seed in range(150):
        env = _NoopReset(_AleStub(), noop_max=30)
        env.reset(seed=seed)
        want = int(seeding.np_random(seed)[0].integers(0, 30))
        assert env.unwrapped.ale.noops == want
        counts.append(want)
    assert min(counts) == 0 and max(counts) == 29
    env = _NoopReset(_AleStub(over_at=1), noop_max=30)
    env.reset(seed=int(np.flatnonzero(np.array(counts) > 1)[0]))
    assert env.unwrapped.ale.resets == 1
    none = _NoopReset(_AleStub(), noop_max=0)
    none.reset(seed=0)
    assert none.unwrapped.ale.noops == 0


def test_timed_checkpoints_are_due_once_the_interval_has_passed() -> None:
    """Outside the deterministic mode an update point is saved once ``every_minutes`` of wall
    time have passed since the last save (the boundary included), and the interval restarts there."""
    now = [0.0]
    saved: list[int | None] = []
    sched = CheckpointSchedule(saved.append, deterministic=False, every_minutes=1.0,
                               stop_requested=lambda: False, clock=lambda: now[0])
    now[0] = 59.5
    assert not sched.due(False)
    now[0] = 60.0
    assert sched.due(False)
    sched.on_safe_point("update", 0)
    now[0] = 119.5
    sched.on_safe_point("update", 0)
    now[0] = 120.0
    sched.on_safe_point("update", 0)
    assert saved == [None, None]


class _LivesScript:
    """One fake emulator whose lives after learner step t are ``lives[t]``; no FIRE in its set."""

    num_envs, has_fire = 1, False

    def __init__(self, lives: list[int]) -> None:
        self.seq, self.t, self.actions = lives, 0, []

    def reset(self, idx, seeds):
        self.t = 0
        return np.zeros((1, 84, 84), np.uint8), np.array([self.seq[0]])

    def send(self, idx, actions) -> None:
        self.actions += [int(a) for a in actions]

    def recv(self, idx):
        self.t += self.actions[-1] == 5  # the learner's action; the scripted NOOP changes nothing
        frame = np.full((1, 84, 84), self.t, np.uint8)
        return (frame, np.zeros(1), np.zeros(1, bool), np.zeros(1, bool), np.array([self.seq[self.t]]),
                np.zeros_like(frame))

    def close(self) -> None:
        pass


def test_a_bonus_life_is_tracked_so_the_next_loss_is_a_life_loss() -> None:
    """Lives 3 -> 4 (a bonus) -> 4 -> 3: the drop back to 3 is a lost life (``EpisodicLifeEnv``
    compares with the lives of the previous step), with its NOOP step and the learner's done."""
    emu = _LivesScript([3, 3, 4, 4, 3, 3])
    venv = AtariVecEnv(_AtariBatch(emu, frame_stack=4, fire_reset=True, frame_skip=4), "Fake", 6, 4, seed=0,
                       episodic_life=True, clip_rewards=True, max_frames=10_000)
    venv.reset()
    steps = [venv.step(np.array([5])) for _ in range(5)]
    assert [int(s[3][0]["lives"]) for s in steps] == [3, 4, 4, 3, 3]
    assert [bool(s[2][0]) for s in steps] == [False, False, False, True, False]
    assert emu.actions == [5, 5, 5, 5, 0, 5]
