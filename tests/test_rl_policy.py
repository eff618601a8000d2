"""The multi-head actor-critic, its SB3 policy and the PPO update (no emulator: a fake Atari env)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from _fake_atari import RandomFrames
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv

from clrl.config import PPOConfig, VCLConfig
from clrl.rl.agent import (
    TaskPPO,
    clip_grad_norm,
    collect_states,
    learning_rate_schedule,
    normalize_rollout_advantages,
    value_loss,
)
from clrl.rl.policy import TaskPolicy, build_actor_critic, preprocess

SMALL = dict(channels=(4, 8, 8), hidden=16)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


class FakeAtari(RandomFrames):
    """uint8 (4, 84, 84) frames; reward 1 for action 0; episodes of 12 steps."""

    def step(self, action):
        self.t += 1
        return self._obs(), float(action == 0), self.t >= 12, False, {}


def fake_env(n_actions: int, n_envs: int = 2, seed: int = 0) -> DummyVecEnv:
    env = DummyVecEnv([lambda: FakeAtari(n_actions) for _ in range(n_envs)])
    env.seed(seed)
    return env


def ppo_config(**kw) -> PPOConfig:
    base = dict(n_envs=2, n_steps=8, n_minibatches=2, n_epochs=2, learning_rate=1e-3, ent_coef=0.01, clip_range_vf=0.2)
    base.update(kw)
    return PPOConfig(**base)


def make_model(net, task: int, n_actions: int, **kw) -> TaskPPO:
    if task not in net.actor:
        net.add_task(task, n_actions)
    model = TaskPPO(fake_env(n_actions), net, task, ppo_config(**kw))
    model.reset_envs(seed=task)
    return model


def test_preprocess_scales_uint8_and_leaves_input_alone():
    x = torch.tensor([[0, 51, 255]], dtype=torch.uint8)
    assert torch.allclose(preprocess(x), torch.tensor([[0.0, 0.2, 1.0]]))
    f = torch.tensor([255.0])
    assert preprocess(f).item() == 1.0 and f.item() == 255.0


def test_preprocess_frames_are_channels_last_with_the_same_values():
    frames = torch.randint(0, 256, (3, 4, 6, 5), dtype=torch.uint8)
    out = preprocess(frames)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert out.dtype == torch.float32 and out.shape == frames.shape
    assert torch.equal(out, frames.double().div(255.0).float())
    assert torch.equal(preprocess(frames.float()), out)  # float frames (0..255) give the same input


@pytest.mark.parametrize("n, actions", [(1, 2), (4, 6), (8, 18), (64, 9)])
def test_sample_actions_draws_what_torch_multinomial_draws(n: int, actions: int):
    """Same draws and the same generator state afterwards, from an explicit generator and from
    torch's global one, including rows with zero-probability and single possible actions."""
    from clrl.rl.policy import sample_actions

    for seed in range(60):
        probs = torch.softmax(torch.randn(n, actions, generator=torch.Generator().manual_seed(seed)) * 4, 1)
        probs[0, : actions // 2] = 0.0  # impossible actions are never drawn
        if n > 1:
            probs[1] = 0.0
            probs[1, seed % actions] = 1.0
        g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        expected = torch.multinomial(probs, 1, generator=g1).squeeze(1)
        got = sample_actions(probs, g2)
        assert torch.equal(got, expected)
        assert torch.equal(g1.get_state(), g2.get_state())
        assert (probs.gather(1, got[:, None]) > 0).all()
        torch.manual_seed(seed)
        expected = torch.multinomial(probs, 1).squeeze(1)
        after = torch.rand(3)
        torch.manual_seed(seed)
        assert torch.equal(sample_actions(probs), expected) and torch.equal(torch.rand(3), after)


@pytest.mark.parametrize("method", ["ewc", "mas"])
def test_per_sample_importance_of_the_atari_net_runs_under_vmap_and_matches_the_loop(method):
    """Frames reach the trunk through ``preprocess``; its layout change must not break vmap."""
    from clrl.regularizers import build_regularizer

    torch.manual_seed(0)
    net = build_actor_critic(**SMALL, activation="relu")
    net.add_task(0, 5)
    frames = torch.randint(0, 256, (6, 4, 84, 84), dtype=torch.uint8)
    got = {}
    for per_sample in ("vmap", "loop"):  # "vmap" raises instead of falling back to the loop
        seed = {"seed": 3} if method == "ewc" else {}  # EWC's true Fisher draws actions
        reg = build_regularizer(method, net.trunk, heads=net.actor, per_sample=per_sample, **seed)
        reg.begin_task(0, torch.optim.SGD(net.task_parameters(0), lr=0.0))
        reg.end_task(0, [frames[:4], frames[4:]], lambda x: net.logits(x, 0))
        got[per_sample] = reg.state_dict()
    imp_vmap, imp_loop = (_importance(got[k]) for k in ("vmap", "loop"))
    assert imp_vmap.keys() == imp_loop.keys() and imp_vmap
    for k in imp_vmap:
        assert imp_vmap[k].abs().sum() > 0
        torch.testing.assert_close(imp_vmap[k], imp_loop[k], rtol=1e-4, atol=1e-9)


def _importance(state) -> dict[str, torch.Tensor]:
    """The importance tensors of a quadratic regularizer's state_dict, by parameter name."""
    terms = state["method"]["terms"]
    return {f"{i}.{k}": v for i, term in enumerate(terms) for k, v in term["importance"].items()}


def test_policy_matches_torch_categorical():
    torch.manual_seed(0)
    net = build_actor_critic(**SMALL, activation="relu")
    net.add_task(0, 5)
    policy = TaskPolicy(spaces.Box(0, 255, (4, 84, 84), np.uint8), spaces.Discrete(5), lambda p: 1e-3, net=net, task=0)
    obs = torch.randint(0, 256, (6, 4, 84, 84), dtype=torch.uint8)
    actions = torch.tensor([0, 1, 2, 3, 4, 0])
    values, logp, entropy = policy.evaluate_actions(obs, actions)
    feats = net.trunk(obs.float() / 255)
    dist = torch.distributions.Categorical(logits=net.actor.heads[0](feats))
    assert torch.allclose(logp, dist.log_prob(actions), atol=1e-6)
    assert torch.allclose(entropy, dist.entropy(), atol=1e-6)
    assert torch.allclose(values, net.critic.heads[0](feats), atol=1e-6)
    assert values.shape == (6, 1)
    a, v, lp = policy(obs, deterministic=True)
    assert torch.equal(a, dist.logits.argmax(1))
    assert torch.allclose(lp, dist.log_prob(a), atol=1e-6)


def test_policy_rejects_wrong_action_space():
    net = build_actor_critic(**SMALL, activation="relu")
    net.add_task(0, 5)
    with pytest.raises(ValueError, match="5 outputs but the game has 4"):
        TaskPolicy(spaces.Box(0, 255, (4, 84, 84), np.uint8), spaces.Discrete(4), lambda p: 1e-3, net=net, task=0)
    with pytest.raises(ValueError, match="no heads for task 1"):
        TaskPolicy(spaces.Box(0, 255, (4, 84, 84), np.uint8), spaces.Discrete(4), lambda p: 1e-3, net=net, task=1)


def test_optimizer_holds_trunk_and_current_heads_only():
    net = build_actor_critic(**SMALL, activation="relu")
    m0 = make_model(net, 0, 3)
    m1 = make_model(net, 1, 5)
    ids = {id(p) for g in m1.policy.optimizer.param_groups for p in g["params"]}
    expected = {id(p) for p in [*net.trunk.parameters(), *net.actor.parameters_of(1), *net.critic.parameters_of(1)]}
    assert ids == expected
    assert not ids & {id(p) for p in [*net.actor.parameters_of(0), *net.critic.parameters_of(0)]}
    assert m0.policy.optimizer is not m1.policy.optimizer
    assert m1.action_space.n == 5 and m0.action_space.n == 3


def test_past_heads_stay_bit_identical_while_the_next_task_trains():
    torch.manual_seed(1)
    net = build_actor_critic(**SMALL, activation="relu")
    m0 = make_model(net, 0, 3)
    for j in range(2):
        m0.update(1 - j / 2)
    heads0 = {k: v.clone() for k, v in net.state_dict().items() if k.startswith(("actor.heads.0", "critic.heads.0"))}
    trunk0 = [p.clone() for p in net.trunk.parameters()]
    m1 = make_model(net, 1, 4)
    for j in range(2):
        m1.update(1 - j / 2)
    after = net.state_dict()
    for k, v in heads0.items():
        assert torch.equal(after[k], v), k
    assert any(not torch.equal(a, b) for a, b in zip(trunk0, net.trunk.parameters(), strict=True)), "the trunk must have trained"


def test_learning_rate_decays_linearly_within_a_task():
    cfg = ppo_config(learning_rate=3e-4)
    sched = learning_rate_schedule(cfg)
    J = 4
    assert [sched(1 - j / J) for j in range(J)] == pytest.approx([3e-4, 2.25e-4, 1.5e-4, 0.75e-4])
    assert learning_rate_schedule(ppo_config(learning_rate=3e-4, lr_schedule="constant"))(0.1) == 3e-4
    net = build_actor_critic(**SMALL, activation="relu")
    model = make_model(net, 0, 3, learning_rate=3e-4)
    seen = [model.update(1 - j / J)["learning_rate"] for j in range(2)]
    assert seen == pytest.approx([3e-4, 2.25e-4])


def _manual_ppo_loss(
    model: TaskPPO, net, clip: float, clip_vf: float | None, ent: float, vf: float,
    value_loss: str = "baselines", advantage_norm: str = "minibatch", idx: np.ndarray | None = None,
) -> torch.Tensor:
    """The PPO loss written out from the buffer's numpy arrays (independent of TaskPPO.train),
    on the minibatch ``idx`` of the flattened rollout (default: all of it)."""
    buf = model.rollout_buffer
    idx = np.arange(buf.advantages.size) if idx is None else idx
    a_all = buf.advantages.swapaxes(0, 1).reshape(-1).astype(np.float64)  # SB3's env-major flattening

    def flat(x: np.ndarray, *shape: int) -> torch.Tensor:
        return torch.as_tensor(x.swapaxes(0, 1).reshape(-1, *shape)[idx])

    obs = flat(buf.observations, 4, 84, 84)
    actions = flat(buf.actions).long().flatten()
    old_logp, old_v, returns = flat(buf.log_probs).flatten(), flat(buf.values).flatten(), flat(buf.returns).flatten()

    def standardize(x: np.ndarray, eps: float) -> np.ndarray:  # torch's unbiased std
        return (x - x.mean()) / (np.sqrt(((x - x.mean()) ** 2).sum() / (x.size - 1)) + eps)

    if advantage_norm == "minibatch":  # SB3: over the minibatch, eps 1e-8
        a = standardize(a_all[idx], 1e-8)
    elif advantage_norm == "rollout":  # a2c-ppo-acktr: once over the rollout, eps 1e-5
        a = standardize(a_all, 1e-5)[idx]
    else:
        a = a_all[idx]
    adv = torch.as_tensor(a, dtype=torch.float32)
    feats = net.trunk(obs.float() / 255)
    logits = net.actor.heads[0](feats)
    v = net.critic.heads[0](feats).flatten()
    dist = torch.distributions.Categorical(logits=logits)
    ratio = torch.exp(dist.log_prob(actions) - old_logp)
    pg = -torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv).mean()
    unclipped = (v - returns) ** 2
    clipped = (old_v + (v - old_v).clamp(-clip_vf, clip_vf) - returns) ** 2 if clip_vf is not None else unclipped
    if value_loss == "baselines":  # openai baselines ppo2 / a2c-ppo-acktr: .5 * max(unclipped, clipped)
        vterm = 0.5 * torch.maximum(unclipped, clipped).mean()
    else:  # SB3: F.mse_loss(returns, clipped-or-plain values)
        vterm = clipped.mean()
    return pg + vf * vterm - ent * dist.entropy().mean()


@pytest.mark.parametrize(
    ("clip_vf", "value_loss", "advantage_norm"),
    [(None, "baselines", "minibatch"), (0.2, "baselines", "minibatch"), (None, "sb3", "minibatch"),
     (0.2, "sb3", "rollout"), (None, "baselines", "rollout"), (0.2, "sb3", "none")],
)
def test_ppo_step_equals_adam_on_the_written_out_loss(clip_vf, value_loss, advantage_norm):
    torch.manual_seed(2)
    net = build_actor_critic(**SMALL, activation="relu")
    model = make_model(net, 0, 3, n_minibatches=1, n_epochs=1, clip_range_vf=clip_vf, max_grad_norm=0.05,
                       value_loss=value_loss, advantage_norm=advantage_norm)
    model.collect_rollouts(model.env, model._callback, model.rollout_buffer, n_rollout_steps=model.n_steps)
    twin = copy.deepcopy(net)
    loss = _manual_ppo_loss(model, twin, clip=0.1, clip_vf=clip_vf, ent=0.01, vf=0.5,
                            value_loss=value_loss, advantage_norm=advantage_norm)
    params = twin.task_parameters(0)
    opt = torch.optim.Adam(params, lr=1e-3 * 0.5, eps=1e-5)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 0.05)
    opt.step()
    model._current_progress_remaining = 0.5
    model.train()
    assert model.last_stats["loss"] == pytest.approx(loss.item(), rel=1e-4, abs=1e-6)
    for (name, a), b in zip(net.named_parameters(), twin.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


@pytest.mark.parametrize("advantage_norm", ["minibatch", "rollout", "none"])
def test_advantage_scope_over_two_minibatches_matches_two_written_out_steps(advantage_norm):
    """Per-minibatch and per-rollout standardization differ once there are two minibatches."""
    torch.manual_seed(4)
    net = build_actor_critic(**SMALL, activation="relu")
    model = make_model(net, 0, 3, n_minibatches=2, n_epochs=1, clip_range_vf=None, max_grad_norm=100.0,
                       value_loss="sb3", advantage_norm=advantage_norm)
    model.collect_rollouts(model.env, model._callback, model.rollout_buffer, n_rollout_steps=model.n_steps)
    twin = copy.deepcopy(net)
    params = twin.task_parameters(0)
    opt = torch.optim.Adam(params, lr=1e-3, eps=1e-5)
    np.random.seed(11)
    perm = np.random.permutation(model.rollout_buffer.advantages.size)  # SB3's minibatch order
    for idx in np.split(perm, 2):
        loss = _manual_ppo_loss(model, twin, clip=0.1, clip_vf=None, ent=0.01, vf=0.5, value_loss="sb3",
                                advantage_norm=advantage_norm, idx=idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
    np.random.seed(11)
    model._current_progress_remaining = 1.0
    model.train()
    for (name, a), b in zip(net.named_parameters(), twin.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_value_loss_conventions_weigh_the_squared_error_as_documented():
    v, r, old = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, 1.0, 0.5]), torch.tensor([0.8, -1.0, 0.0])
    mse = (1.0 + 9.0 + 0.0) / 3  # by hand
    assert value_loss(v, r, old, None, "sb3").item() == pytest.approx(mse)
    assert value_loss(v, r, old, None, "baselines").item() == pytest.approx(0.5 * mse)
    # clipped at 0.1 around old: V' = [0.9, -1.1, 0.1]; (V' - R)^2 = [0.81, 4.41, 0.16]
    assert value_loss(v, r, old, 0.1, "sb3").item() == pytest.approx((0.81 + 4.41 + 0.16) / 3)
    # baselines: max with the unclipped [1, 9, 0] -> [1, 9, 0.16], times 0.5
    assert value_loss(v, r, old, 0.1, "baselines").item() == pytest.approx(0.5 * (1 + 9 + 0.16) / 3)
    with pytest.raises(ValueError, match="unknown value-loss convention"):
        value_loss(v, r, old, None, "mse")


def test_rollout_advantage_normalization_by_hand():
    a = np.array([[1.0, 3.0], [5.0, 7.0]])  # mean 4, unbiased std sqrt(20/3)
    out = normalize_rollout_advantages(a)
    assert out.dtype == np.float32 and out.shape == (2, 2)
    assert np.allclose(out, (a - 4.0) / (np.sqrt(20.0 / 3.0) + 1e-5))


def test_clip_grad_norm_by_hand():
    w, b, frozen = torch.zeros(2, requires_grad=True), torch.zeros(1, requires_grad=True), torch.zeros(3)
    w.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])  # norm 5; frozen has no grad
    norm = clip_grad_norm([w, frozen, b], 1.0)
    assert norm.item() == pytest.approx(5.0)
    assert torch.allclose(w.grad, torch.tensor([3.0, 0.0]) / (5 + 1e-6)) and b.grad.item() == pytest.approx(0.8)
    norm = clip_grad_norm([w, b], 10.0)  # within the bound: unchanged
    assert norm.item() == pytest.approx(1.0) and b.grad.item() == pytest.approx(0.8)


@pytest.mark.parametrize("max_norm", [1e-3, 0.5, 1e6])
def test_clip_grad_norm_is_torchs_bit_for_bit(max_norm: float):
    torch.manual_seed(0)
    net = build_actor_critic((8, 8, 8), 32, "relu")
    net.add_task(0, 6)
    params = list(net.task_parameters(0))
    logits, value = net(torch.randint(0, 256, (5, 4, 84, 84), dtype=torch.uint8), 0)
    (logits.logsumexp(1).mean() + value.square().mean()).backward()
    grads = [p.grad.clone() for p in params]
    expected_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    expected = [p.grad.clone() for p in params]
    for p, g in zip(params, grads, strict=True):
        p.grad.copy_(g)
    assert torch.equal(clip_grad_norm(params, max_norm), expected_norm)
    assert all(torch.equal(p.grad, e) for p, e in zip(params, expected, strict=True))
    if max_norm > 1:
        assert all(torch.equal(p.grad, g) for p, g in zip(params, grads, strict=True))


def test_clip_grad_norm_without_gradients_is_zero():
    assert clip_grad_norm([torch.zeros(2, requires_grad=True)], 1.0).item() == 0.0


def test_vcl_loss_trains_the_betas_and_enters_the_loss():
    torch.manual_seed(3)
    net = build_actor_critic(**SMALL, activation="relu")
    net.enable_vcl(gamma=0.5, n=2)
    betas = [b.clone() for b in net.vcl.parameters()]
    model = make_model(net, 0, 3)
    assert {id(p) for p in net.vcl.parameters()} <= {id(p) for g in model.policy.optimizer.param_groups for p in g["params"]}
    stats = model.update(1.0)
    assert stats["vcl_loss"] > 0
    # only the VCL term reaches the betas: they move iff it is in the loss
    assert all(not torch.equal(a, b) for a, b in zip(betas, net.vcl.parameters(), strict=True))


def test_vcl_needs_minibatches_of_2n():
    with pytest.raises(ValueError, match="vcl.n = 5 needs minibatches of at least 2n = 10"):
        PPOConfig(n_envs=2, n_steps=8, n_minibatches=2, vcl=VCLConfig(gamma=0.1, n=5))


def test_collect_states_returns_visited_uint8_batches():
    net = build_actor_critic(**SMALL, activation="relu")
    model = make_model(net, 0, 3)
    batches = collect_states(model, 21, batch_size=8)
    assert [b.shape[0] for b in batches] == [8, 8, 5]
    assert all(b.dtype == torch.uint8 and b.shape[1:] == (4, 84, 84) for b in batches)


ACTIVATIONS = [
    "relu",
    "lwta:block=2",
    "maxout:block=2",
    "st_hard:groups=4",
    "st_soft:groups=4",
    "gnc:groups=4",
    "st_hard:groups=4>gnc:groups=4",
    "bn",
    "gn:groups=4",
    "ln",
    ["relu", "lwta:block=2", "maxout:block=2", "st_soft:groups=4>gnc:groups=4"],
]


@pytest.mark.parametrize("spec", ACTIVATIONS, ids=lambda s: s if isinstance(s, str) else "per-layer")
def test_every_activation_spec_trains_one_update(spec):
    torch.manual_seed(4)
    net = build_actor_critic(channels=(8, 8, 8), hidden=16, activation=spec)
    model = make_model(net, 0, 3)
    before = [p.clone() for p in net.trunk.parameters()]
    stats = model.update(1.0)
    assert np.isfinite(stats["loss"])
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, net.trunk.parameters(), strict=True))


def _gram_is(weight: torch.Tensor, gain: float) -> bool:
    """``W W^T = gain^2 I`` (rows orthogonal) if W has no more rows than columns, else ``W^T W``."""
    w = weight.detach().reshape(weight.shape[0], -1).double()
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    return torch.allclose(gram, gain**2 * torch.eye(gram.shape[0], dtype=torch.float64), atol=1e-5 * max(gain**2, 1e-4))


def test_orthogonal_init_gives_ppo_gains_in_trunk_and_every_tasks_heads():
    from torch import nn

    torch.manual_seed(0)
    net = build_actor_critic(**SMALL, activation="relu", init="orthogonal")
    net.add_task(0, 3)
    net.add_task(1, 5)  # a later task's heads get the same scheme
    layers = [m for m in net.trunk.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert len(layers) == 4
    for m in layers:
        assert _gram_is(m.weight, 2**0.5) and not m.bias.any()
    for t in (0, 1):
        actor, critic = net.actor.heads[t], net.critic.heads[t]
        assert _gram_is(actor.weight, 0.01) and not actor.bias.any()
        assert _gram_is(critic.weight, 1.0) and not critic.bias.any()  # one row: |w| = 1
        assert not _gram_is(actor.weight, 1.0)
    # a tall weight (more rows than columns): the columns are orthogonal instead
    from clrl.nets.init import orthogonal_init_

    tall = orthogonal_init_(nn.Linear(3, 10), 2.0)
    assert _gram_is(tall.weight, 2.0) and tall.weight.shape == (10, 3)


def test_default_init_is_pytorchs_and_unknown_schemes_are_refused():
    torch.manual_seed(5)
    a = build_actor_critic(**SMALL, activation="relu")
    torch.manual_seed(5)
    b = build_actor_critic(**SMALL, activation="relu", init="default")
    from clrl.nets import atari_trunk

    torch.manual_seed(5)
    plain = atari_trunk(channels=SMALL["channels"], hidden=SMALL["hidden"])
    for x, y, z in zip(a.parameters(), b.parameters(), plain.parameters(), strict=True):
        assert torch.equal(x, y) and torch.equal(x, z)
    b.add_task(0, 3)
    assert b.actor.heads[0].bias.abs().sum() > 0 and not _gram_is(b.actor.heads[0].weight, 0.01)
    with pytest.raises(ValueError, match="unknown init scheme"):
        build_actor_critic(**SMALL, activation="relu", init="xavier")


def test_agscl_reinitialization_draws_from_the_orthogonal_scheme():
    from clrl.layers.nodes import fresh_incoming, node_view

    net = build_actor_critic(**SMALL, activation="relu", init="orthogonal")
    layer = node_view(net.trunk)[0]
    fresh = fresh_incoming(layer, torch.Generator().manual_seed(0))
    assert torch.equal(fresh[:, -1], torch.zeros(fresh.shape[0]))  # zero biases
    assert _gram_is(fresh[:, :-1], 2**0.5)


def test_model_init_config_default_and_legacy_resume_default(tmp_path):
    from clrl.config import RLConfig, load_saved_config

    cfg = RLConfig(name="x", kind="rl", tasks={"games": ["Pong"], "steps_per_task": 8})
    assert (cfg.model.init, cfg.train.value_loss, cfg.train.advantage_norm) == ("orthogonal", "sb3", "minibatch")
    # a config.yaml saved before these keys existed resumes with the behaviour it had
    old = tmp_path / "config.yaml"
    old.write_text("name: x\nkind: rl\ntasks: {games: [Pong], steps_per_task: 8}\nmodel: {hidden: 16}\n"
                   "train: {normalize_advantage: true}\n")
    saved = load_saved_config(old)
    assert (saved.model.init, saved.train.value_loss, saved.train.advantage_norm) == ("default", "baselines", "minibatch")
    new = tmp_path / "new.yaml"
    new.write_text("name: x\nkind: rl\ntasks: {games: [Pong], steps_per_task: 8}\nmodel: {init: orthogonal}\n"
                   "train: {value_loss: sb3, normalize_advantage: false}\n")
    saved = load_saved_config(new)
    assert (saved.model.init, saved.train.value_loss, saved.train.advantage_norm) == ("orthogonal", "sb3", "none")


def test_advantage_keys_old_spelling_and_contradictions():
    from clrl.config import config_from_dict
    from clrl.errors import ConfigError

    assert PPOConfig(normalize_advantage=False).advantage_norm == "none"
    assert PPOConfig(normalize_advantage=True).advantage_norm == "minibatch"
    assert PPOConfig(normalize_advantage=True, advantage_norm="rollout").advantage_norm == "rollout"
    c = PPOConfig(advantage_norm="rollout")
    assert c.normalize_advantage is None  # merged: a dumped config never contradicts itself
    assert PPOConfig(**c.model_dump()).advantage_norm == "rollout"
    data = {"name": "x", "kind": "rl", "tasks": {"games": ["Pong"], "steps_per_task": 8},
            "train": {"normalize_advantage": False, "advantage_norm": "rollout"}}
    with pytest.raises(ConfigError, match="contradicts advantage_norm"):
        config_from_dict(data)
