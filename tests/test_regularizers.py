"""EWC, MAS and fine-tuning as optimizer hooks: importance against explicit loops, hooked steps
against steps with the penalty in the loss, state round trips, the factory's errors."""

from __future__ import annotations

import copy
import io
import json

import pytest
import torch
import torch.nn.functional as F

from clrl.nets import MultiHead, digits_trunk
from clrl.regularizers import HPARAMS, REGULARIZER_NAMES, build_regularizer, validate_hparams


def _model(seed: int = 0, hidden=(6, 5), n_in: int = 4, classes: int = 3):
    torch.manual_seed(seed)
    trunk = digits_trunk(hidden=hidden, in_features=n_in)
    heads = MultiHead(hidden[-1])
    heads.add_head(0, classes)
    heads.add_head(1, classes)
    return trunk, heads


def _data(seed: int, n: int = 24, n_in: int = 4, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_in, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def _trunk_params(trunk):
    return {f"trunk.{n}": p for n, p in trunk.named_parameters()}


def _per_sample_loop(trunk, heads, task, x, fn):
    """The test's own explicit loop: mean over samples of fn(grad of one sample)."""
    params = _trunk_params(trunk)
    acc = {k: torch.zeros_like(p) for k, p in params.items()}
    for i in range(x.shape[0]):
        out = heads(trunk(x[i : i + 1]), task)[0]
        grads = torch.autograd.grad(fn(out, i), list(params.values()))
        for k, g in zip(params, grads, strict=True):
            acc[k] += g
    return {k: v / x.shape[0] for k, v in acc.items()}


def _fisher_loop(trunk, heads, task, x, labels):
    params = _trunk_params(trunk)
    acc = {k: torch.zeros_like(p) for k, p in params.items()}
    for i in range(x.shape[0]):
        logp = torch.log_softmax(heads(trunk(x[i : i + 1]), task)[0], dim=-1)
        grads = torch.autograd.grad(logp[labels[i]], list(params.values()))
        for k, g in zip(params, grads, strict=True):
            acc[k] += g**2
    return {k: v / x.shape[0] for k, v in acc.items()}


def _consolidate(reg, trunk, heads, task, x, y, with_labels=True, batch=8):
    batches = [(x[i : i + batch], y[i : i + batch]) if with_labels else x[i : i + batch] for i in range(0, len(x), batch)]
    reg.end_task(task, iter(batches), lambda b: heads(trunk(b), task))


# ----------------------------------------------------------------------------- importance


@pytest.mark.parametrize("per_sample", ["vmap", "loop"])
def test_empirical_fisher_is_mean_of_squared_per_sample_gradients(per_sample):
    trunk, heads = _model()
    x, y = _data(1)
    reg = build_regularizer("ewc", trunk, heads, fisher="empirical", per_sample=per_sample, chunk_size=5)
    _consolidate(reg, trunk, heads, 0, x, y)
    expected = _fisher_loop(trunk, heads, 0, x, y)
    got = reg.terms[0]["importance"]
    assert set(got) == set(expected)  # heads excluded by default
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(reg.terms[0]["anchor"][k], dict(_trunk_params(trunk))[k].detach(), rtol=0, atol=0)
    # and it is not the square of the mean gradient
    mean_sq = {k: v**2 for k, v in _per_sample_loop(trunk, heads, 0, x, lambda o, i: F.cross_entropy(o[None], y[i : i + 1])).items()}
    assert not torch.allclose(got["trunk.0.weight"], mean_sq["trunk.0.weight"], rtol=1e-2)


def test_true_fisher_samples_labels_from_the_model():
    trunk, heads = _model()
    x, _ = _data(2)
    reg = build_regularizer("ewc", trunk, heads, fisher="true", seed=123)
    _consolidate(reg, trunk, heads, 0, x, None, with_labels=False, batch=len(x))
    # the same draw: categorical(softmax(logits)) with a generator seeded 123
    with torch.no_grad():
        probs = torch.softmax(heads(trunk(x), 0), dim=-1)
    labels = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(123)).squeeze(1)
    expected = _fisher_loop(trunk, heads, 0, x, labels)
    for k, v in expected.items():
        torch.testing.assert_close(reg.terms[0]["importance"][k], v, rtol=1e-5, atol=1e-8)


def test_true_fisher_converges_to_the_expectation_over_the_predictive_distribution():
    trunk, heads = _model()
    x0 = _data(20)[0][:1] * 3
    reg = build_regularizer("ewc", trunk, heads, seed=0, chunk_size=256)
    _consolidate(reg, trunk, heads, 0, x0.repeat(3000, 1), None, with_labels=False, batch=1000)
    params = _trunk_params(trunk)
    logp = torch.log_softmax(heads(trunk(x0), 0)[0], dim=-1)
    exact = {k: torch.zeros_like(p) for k, p in params.items()}
    for c in range(3):
        grads = torch.autograd.grad(logp[c], list(params.values()), retain_graph=True)
        for k, g in zip(params, grads, strict=True):
            exact[k] += logp[c].exp().detach() * g**2
    got = torch.cat([reg.terms[0]["importance"][k].flatten() for k in params])
    ref = torch.cat([exact[k].flatten() for k in params])
    assert ref.sum() > 0
    assert abs(got.sum() / ref.sum() - 1) < 0.08
    assert torch.corrcoef(torch.stack([got, ref]))[0, 1] > 0.97


@pytest.mark.parametrize("norm", ["squared", "l2"])
def test_mas_importance_matches_hand_autograd(norm):
    trunk, heads = _model()
    x, y = _data(3)
    reg = build_regularizer("mas", trunk, heads, norm=norm)
    _consolidate(reg, trunk, heads, 0, x, y)
    params = _trunk_params(trunk)
    acc = {k: torch.zeros_like(p) for k, p in params.items()}
    for i in range(len(x)):
        out = heads(trunk(x[i : i + 1]), 0)[0]
        target = (out**2).sum() if norm == "squared" else out.norm()
        for k, g in zip(params, torch.autograd.grad(target, list(params.values())), strict=True):
            acc[k] += g.abs()
    for k in params:
        torch.testing.assert_close(reg.terms[0]["importance"][k], acc[k] / len(x), rtol=1e-5, atol=1e-8)


def test_mas_accumulation_and_ewc_modes():
    trunk, heads = _model()
    xa, ya = _data(4)
    xb, yb = _data(5)
    regs = {
        "mas_sum": build_regularizer("mas", trunk, heads, accumulate="sum"),
        "mas_mean": build_regularizer("mas", trunk, heads, accumulate="mean"),
        "ewc_sep": build_regularizer("ewc", trunk, heads, fisher="empirical", mode="separate"),
        "ewc_on": build_regularizer("ewc", trunk, heads, fisher="empirical", mode="online", gamma=0.5),
    }
    single = {}
    for r in regs.values():
        _consolidate(r, trunk, heads, 0, xa, ya)
    for name, r in regs.items():
        single[name] = {k: v.clone() for k, v in r.terms[0]["importance"].items()}
    with torch.no_grad():
        for p in trunk.parameters():
            p.add_(0.1 * torch.randn_like(p))
    for r in regs.values():
        _consolidate(r, trunk, heads, 1, xb, yb)
    mas_b = build_regularizer("mas", trunk, heads)
    _consolidate(mas_b, trunk, heads, 1, xb, yb)
    ewc_b = build_regularizer("ewc", trunk, heads, fisher="empirical")
    _consolidate(ewc_b, trunk, heads, 1, xb, yb)
    k = "trunk.2.weight"
    new_mas, new_f = mas_b.terms[0]["importance"][k], ewc_b.terms[0]["importance"][k]
    torch.testing.assert_close(regs["mas_sum"].terms[0]["importance"][k], single["mas_sum"][k] + new_mas)
    torch.testing.assert_close(regs["mas_mean"].terms[0]["importance"][k], (single["mas_mean"][k] + new_mas) / 2)
    torch.testing.assert_close(regs["ewc_on"].terms[0]["importance"][k], 0.5 * single["ewc_on"][k] + new_f)
    assert len(regs["ewc_sep"].terms) == 2 and len(regs["ewc_on"].terms) == 1
    torch.testing.assert_close(regs["ewc_sep"].terms[1]["importance"][k], new_f)
    for r in regs.values():  # the latest anchor is the current weights
        torch.testing.assert_close(r.terms[-1]["anchor"][k], trunk[2].weight.detach(), rtol=0, atol=0)


def test_include_heads():
    trunk, heads = _model()
    x, y = _data(6)
    reg = build_regularizer("ewc", trunk, heads, fisher="empirical", include_heads=True)
    _consolidate(reg, trunk, heads, 0, x, y)
    imp = reg.terms[0]["importance"]
    assert "heads.heads.0.weight" in imp and imp["heads.heads.0.weight"].abs().sum() > 0
    assert imp["heads.heads.1.weight"].abs().sum() == 0  # head 1 is not on task 0's path


# ----------------------------------------------------------------------------- hooked steps


def _optim(kind, params):
    if kind == "sgd":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9)
    if kind == "adam":
        return torch.optim.Adam(params, lr=0.01)
    return torch.optim.Adam(params, lr=3e-4, eps=1e-5)  # SB3's PPO optimizer


@pytest.mark.parametrize("name, kwargs", [
    ("ewc", {"fisher": "empirical", "lamb": 50.0, "mode": "separate"}),
    ("ewc", {"fisher": "empirical", "lamb": 50.0, "mode": "online", "gamma": 0.7}),
    ("mas", {"lamb": 20.0}),
])
@pytest.mark.parametrize("opt_kind", ["sgd", "adam", "ppo_adam"])
def test_hooked_step_equals_penalty_in_the_loss(name, kwargs, opt_kind):
    trunk, heads = _model()
    xa, ya = _data(7)
    xb, yb = _data(8)
    reg = build_regularizer(name, trunk, heads, **kwargs)
    _consolidate(reg, trunk, heads, 0, xa, ya)
    if kwargs.get("mode") == "separate":  # two stored terms
        with torch.no_grad():
            for p in trunk.parameters():
                p.add_(0.05 * torch.randn_like(p))
        _consolidate(reg, trunk, heads, 1, xa * 0.5, ya)
    terms = [({k: v.clone() for k, v in t["importance"].items()}, {k: v.clone() for k, v in t["anchor"].items()}) for t in reg.terms]
    ref_trunk, ref_heads = copy.deepcopy(trunk), copy.deepcopy(heads)
    opt = _optim(opt_kind, list(trunk.parameters()) + list(heads.parameters_of(1)))
    ref_opt = _optim(opt_kind, list(ref_trunk.parameters()) + list(ref_heads.parameters_of(1)))
    reg.begin_task(2, opt)
    lamb = kwargs["lamb"]
    for step in range(4):
        xs, ys = xb[step * 6 : (step + 1) * 6], yb[step * 6 : (step + 1) * 6]
        opt.zero_grad()
        F.cross_entropy(heads(trunk(xs), 1), ys).backward()
        opt.step()
        ref_opt.zero_grad()
        loss = F.cross_entropy(ref_heads(ref_trunk(xs), 1), ys)
        params = _trunk_params(ref_trunk)
        for imp, anchor in terms:
            loss = loss + lamb / 2 * sum((imp[k] * (params[k] - anchor[k]) ** 2).sum() for k in imp)
        loss.backward()
        ref_opt.step()
        for p, q in zip(list(trunk.parameters()) + list(heads.parameters()), list(ref_trunk.parameters()) + list(ref_heads.parameters()), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert reg.steps == 4
    # the penalty actually mattered: a plain step differs
    assert reg.penalty() > 0


@pytest.mark.parametrize("name, kwargs", [
    ("ewc", {"fisher": "empirical", "lamb": 50.0, "mode": "separate"}),
    ("mas", {"lamb": 20.0}),
])
@pytest.mark.parametrize("clipped", [True, False])
def test_penalty_clipped_chooses_whether_gradient_clipping_scales_the_penalty(name, kwargs, clipped):
    """Departure 4, against two explicit references with the loop of the RL runner (backward,
    ``clip_grad_norm_``, step): ``penalty_clipped=True`` equals the penalty *in the loss* (the
    AGS-CL code: clipped together), ``False`` equals the penalty gradient added *after* clipping.
    The clip is active and the two references differ, so each case can fail.

    Mutation caught: ignoring ``penalty_clipped`` (always adding in the pre-step hook), or always
    adding from the gradient hooks."""
    trunk, heads = _model()
    xa, ya = _data(7)
    xb, yb = _data(8)
    reg = build_regularizer(name, trunk, heads, penalty_clipped=clipped, **kwargs)
    _consolidate(reg, trunk, heads, 0, xa, ya)
    with torch.no_grad():
        for p in trunk.parameters():
            p.add_(0.3 * torch.randn_like(p))  # far from the anchor: a large penalty gradient
    terms = [({k: v.clone() for k, v in t["importance"].items()}, {k: v.clone() for k, v in t["anchor"].items()}) for t in reg.terms]
    lamb, max_norm = kwargs["lamb"], 0.05
    refs = {}
    for variant in ("in_loss", "after_clip"):
        rt, rh = copy.deepcopy(trunk), copy.deepcopy(heads)
        refs[variant] = (rt, rh, torch.optim.SGD(list(rt.parameters()) + list(rh.parameters_of(1)), lr=0.1))
    opt = torch.optim.SGD(list(trunk.parameters()) + list(heads.parameters_of(1)), lr=0.1)
    reg.begin_task(1, opt)
    for step in range(3):
        xs, ys = xb[step * 6 : (step + 1) * 6], yb[step * 6 : (step + 1) * 6]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(heads(trunk(xs), 1), ys).backward()
        norm = torch.nn.utils.clip_grad_norm_(list(trunk.parameters()) + list(heads.parameters_of(1)), max_norm)
        assert norm > 2 * max_norm  # clipping is active
        opt.step()
        for variant, (rt, rh, ropt) in refs.items():
            ropt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(rh(rt(xs), 1), ys)
            params = _trunk_params(rt)
            penalty = sum(lamb / 2 * (imp[k] * (params[k] - anchor[k]) ** 2).sum() for imp, anchor in terms for k in imp)
            (loss + penalty if variant == "in_loss" else loss).backward()
            torch.nn.utils.clip_grad_norm_(list(rt.parameters()) + list(rh.parameters_of(1)), max_norm)
            if variant == "after_clip":
                with torch.no_grad():
                    for imp, anchor in terms:
                        for k in imp:
                            params[k].grad.add_(lamb * imp[k] * (params[k] - anchor[k]))
            ropt.step()
    want, other = ("in_loss", "after_clip") if clipped else ("after_clip", "in_loss")
    for p, q in zip(trunk.parameters(), refs[want][0].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert not all(torch.allclose(p, r, atol=1e-4) for p, r in zip(trunk.parameters(), refs[other][0].parameters(), strict=True))
    assert reg.steps == 3


@pytest.mark.parametrize("clipped", [False, True])
def test_params_without_grad_are_left_alone(clipped):
    trunk, heads = _model()
    x, y = _data(9)
    reg = build_regularizer("ewc", trunk, heads, fisher="empirical", include_heads=True, lamb=100.0, penalty_clipped=clipped)
    _consolidate(reg, trunk, heads, 0, x, y)
    with torch.no_grad():
        heads.heads[0].weight.add_(1.0)  # far from its anchor
    opt = torch.optim.Adam(list(trunk.parameters()) + list(heads.parameters()), lr=0.01)
    reg.begin_task(1, opt)
    before = heads.heads[0].weight.detach().clone()
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(heads(trunk(x), 1), y).backward()  # head 0 gets no gradient
    opt.step()
    assert heads.heads[0].weight.grad is None
    assert torch.equal(heads.heads[0].weight, before)
    if clipped:  # the gradient hooks sit on the penalized parameters in the optimizer, until end_task
        assert heads.heads[0].weight._post_accumulate_grad_hooks
        _consolidate(reg, trunk, heads, 1, x, y)
        assert not any(p._post_accumulate_grad_hooks for p in list(trunk.parameters()) + list(heads.parameters()))


def test_end_task_detaches_hooks():
    trunk, heads = _model()
    x, y = _data(10)
    reg = build_regularizer("ewc", trunk, heads, fisher="empirical")
    opt = torch.optim.SGD(trunk.parameters(), lr=0.1)
    reg.begin_task(0, opt)
    assert len(opt._optimizer_step_pre_hooks) == 1
    _consolidate(reg, trunk, heads, 0, x, y)
    assert len(opt._optimizer_step_pre_hooks) == 0
    with pytest.raises(ValueError, match="still running"):
        reg.begin_task(1, opt)
        reg.begin_task(2, opt)


# ----------------------------------------------------------------------------- resume


def _train(trunk, heads, opt, steps, x, y, task=1, offset=0):
    for s in range(offset, offset + steps):
        i = (s * 5) % (len(x) - 5)
        opt.zero_grad()
        F.cross_entropy(heads(trunk(x[i : i + 5]), task), y[i : i + 5]).backward()
        opt.step()


@pytest.mark.parametrize("name, kwargs", [("ewc", {"fisher": "true", "seed": 3, "lamb": 10.0}), ("mas", {"lamb": 5.0}), ("none", {})])
def test_state_dict_round_trip_mid_task_is_bit_identical(name, kwargs):
    trunk, heads = _model()
    xa, ya = _data(11)
    xb, yb = _data(12)
    reg = build_regularizer(name, trunk, heads, **kwargs)
    _consolidate(reg, trunk, heads, 0, xa, ya)
    opt = torch.optim.Adam(list(trunk.parameters()) + list(heads.parameters_of(1)), lr=0.01)
    reg.begin_task(1, opt)
    _train(trunk, heads, opt, 3, xb, yb)
    buf = io.BytesIO()
    torch.save({"reg": reg.state_dict(), "trunk": trunk.state_dict(), "heads": heads.state_dict(), "opt": opt.state_dict()}, buf)
    _train(trunk, heads, opt, 4, xb, yb, offset=3)
    _consolidate(reg, trunk, heads, 1, xb, yb)
    expected = [p.detach().clone() for p in trunk.parameters()]
    expected_sd = reg.state_dict()

    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    trunk2, heads2 = _model(seed=99)
    trunk2.load_state_dict(saved["trunk"])
    heads2.load_state_dict(saved["heads"])
    opt2 = torch.optim.Adam(list(trunk2.parameters()) + list(heads2.parameters_of(1)), lr=0.01)
    opt2.load_state_dict(saved["opt"])
    reg2 = build_regularizer(name, trunk2, heads2, **kwargs)
    reg2.load_state_dict(saved["reg"])
    reg2.begin_task(1, opt2)  # re-attaches to the running task
    _train(trunk2, heads2, opt2, 4, xb, yb, offset=3)
    _consolidate(reg2, trunk2, heads2, 1, xb, yb)
    for p, q in zip(trunk2.parameters(), expected, strict=True):
        assert torch.equal(p, q)
    assert json.dumps(reg2.diagnostics()) == json.dumps(build_and_diag(reg, expected_sd))


def build_and_diag(reg, sd):
    reg.load_state_dict(sd)
    return reg.diagnostics()


# ----------------------------------------------------------------------------- none and diagnostics


def test_none_attaches_nothing_and_reports_the_same_keys():
    trunk, heads = _model()
    x, y = _data(13)
    keys = {}
    for name in REGULARIZER_NAMES:
        reg = build_regularizer(name, trunk, heads)
        opt = torch.optim.SGD(trunk.parameters(), lr=0.01)
        reg.begin_task(0, opt)
        if name == "none":
            assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
        d = reg.diagnostics()
        assert d["overall"]["used_capacity"] == 1.0  # nothing moved yet
        _consolidate(reg, trunk, heads, 0, x, y)
        d = reg.diagnostics()
        json.dumps(d)
        keys[name] = (set(d), set(d["overall"]), set(d["layers"][0]))
        assert set(reg.memory_bytes()) == {"importance", "anchor"}
    common = keys["none"]
    for name, (top, overall, layer) in keys.items():
        assert common[0] <= top and common[1] == overall and common[2] <= layer, name


def test_sparsity_counts_never_active_nodes():
    trunk, heads = _model(hidden=(6, 5))
    with torch.no_grad():
        trunk[0].weight[2].zero_()
        trunk[0].bias[2] = -1.0  # node 2 of layer 0 is dead on every input
    x, y = _data(14)
    reg = build_regularizer("none", trunk, heads)
    _consolidate(reg, trunk, heads, 0, x, y)
    d = reg.diagnostics()
    relu_dead = (torch.relu(trunk[0](x)) == 0).all(dim=0).float().mean().item()
    assert d["layers"][0]["sparsity"] == pytest.approx(relu_dead) and relu_dead >= 1 / 6


def test_works_with_the_sb3_ppo_optimizer():
    sb3 = pytest.importorskip("stable_baselines3")
    model = sb3.PPO("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=16, n_epochs=1, seed=0, device="cpu")
    policy = model.policy
    trunk = policy.mlp_extractor.policy_net  # a plain Sequential of Linear/Tanh
    forward = lambda obs: policy.action_net(trunk(obs))  # noqa: E731
    obs = torch.randn(20, 4)
    for name in ("ewc", "agscl"):
        reg = build_regularizer(name, trunk, seed=0) if name == "ewc" else build_regularizer(name, trunk, seed=0, lamb=10.0)
        reg.begin_task(0, policy.optimizer)
        model.learn(total_timesteps=32)
        assert reg.steps == 2
        reg.end_task(0, [obs], forward)
        reg.begin_task(1, policy.optimizer)
        model.learn(total_timesteps=32, reset_num_timesteps=False)
        assert reg.steps == 2
        reg.end_task(1, [obs], forward)


# ----------------------------------------------------------------------------- factory


def test_factory_names_and_errors():
    trunk, heads = _model()
    assert REGULARIZER_NAMES == ["none", "ewc", "mas", "agscl"]
    assert HPARAMS["agscl"]["mu"] == 0.1 and HPARAMS["ewc"]["fisher"] == "true"
    with pytest.raises(ValueError, match="did you mean 'agscl'"):
        build_regularizer("agcl", trunk)
    with pytest.raises(ValueError, match=r"unknown hyperparameter 'lamda'.*did you mean 'lamb'.*allowed: mu, lamb"):
        build_regularizer("agscl", trunk, lamda=1.0)
    for name, kw, match in [
        ("agscl", {"rho": 1.5}, "'rho' must be <= 1"),
        ("agscl", {"eta": 0.0}, "'eta' must be > 0"),
        ("agscl", {"prox_every": 0}, "'prox_every' must be >= 1"),
        ("agscl", {"prox_every": 2.5}, "'prox_every' must be an integer"),
        ("ewc", {"mode": "offline"}, "'mode' must be one of"),
        ("ewc", {"lamb": -1}, "'lamb' must be >= 0"),
        ("ewc", {"fisher": "exact"}, "'fisher' must be one of"),
        ("mas", {"norm": "l1"}, "'norm' must be one of"),
        ("mas", {"penalty_clipped": 1}, "'penalty_clipped' must be true or false"),
        ("none", {"lamb": 1.0}, "unknown hyperparameter 'lamb'"),
    ]:
        with pytest.raises(ValueError, match=match):
            validate_hparams(name, **kw)
        with pytest.raises(ValueError, match=match):
            build_regularizer(name, trunk, **kw)
    assert validate_hparams("mas", lamb=3.0)["norm"] == "squared"


def test_consolidation_rejects_non_finite_outputs():
    from clrl.errors import TrainingDiverged

    trunk, heads = _model()
    x, y = _data(15)
    with torch.no_grad():
        trunk[0].bias[0] = float("nan")
    reg = build_regularizer("ewc", trunk, heads)
    with pytest.raises(TrainingDiverged, match="non-finite"):
        _consolidate(reg, trunk, heads, 0, x, y)


def test_hooks_bench_smoke():
    from clrl.bench.hooks import format_table, run_hooks_bench

    report = run_hooks_bench(batch=4, steps=2, rounds=2, prox_every=2, channels=(4, 8, 8), hidden=16,
                             consolidation_samples=4, warmup=0)
    res = report["results"]
    assert list(res) == ["adam", "none", "ewc", "mas", "agscl"]
    assert res["adam"]["ratio"] == 1.0 and all(r["ratio"] > 0 for r in res.values())
    assert res["agscl"]["n_prox"] == 2  # one prox per timed block
    assert res["ewc"]["memory_bytes"]["importance"] == report["config"]["trunk_params"] * 4
    assert res["agscl"]["memory_bytes"]["importance"] == (4 + 8 + 8 + 16) * 5  # float32 Omega + uint8 birth
    table = format_table(report)
    n_params, n_nodes = report["config"]["trunk_params"], 4 + 8 + 8 + 16
    assert "x Adam" in table and f"EWC's is {n_params * 4 / (n_nodes * 5):,.0f}x AGS-CL's" in table
    json.dumps(report)


def test_diagnostic_scalars_flatten_numbers_for_tensorboard():
    from clrl.regularizers.base import diagnostic_scalars

    diag = {
        "method": "agscl",
        "overall": {"sparsity": 0.25, "used_capacity": None, "n_nodes": 8},
        "memory_bytes": {"importance": 64, "anchor": 1024},
        "omega": {"mean": 0.5, "layers": [{"name": "0"}]},
        "n_prox": 3,
        "layers": [{"name": "fc", "sparsity": 0.5, "used_capacity": 1.0, "n_nodes": 8}],
        "flag": True,
    }
    assert diagnostic_scalars(diag) == {
        "regularizer/overall/sparsity": 0.25,
        "regularizer/overall/n_nodes": 8.0,
        "regularizer/memory_bytes/importance": 64.0,
        "regularizer/memory_bytes/anchor": 1024.0,
        "regularizer/omega/mean": 0.5,
        "regularizer/n_prox": 3.0,
        "regularizer/fc/sparsity": 0.5,
        "regularizer/fc/used_capacity": 1.0,
    }


# ----------------------------------------------------------------------------- mutation audit


def test_penalty_value_is_half_lambda_times_the_weighted_squared_drift():
    """``penalty()`` (logged as ``diagnostics()["penalty"]``) is ``lamb / 2 * sum_k sum_i
    F_k,i (theta_i - theta*_k,i)^2`` over both stored EWC terms, written out here as a plain
    loop over the stored Fisher values and anchors.

    Mutations caught: ``lamb`` instead of ``lamb / 2``; ``|theta - theta*|`` instead of its square."""
    trunk, heads = _model()
    xa, ya = _data(30)
    lamb = 7.0
    reg = build_regularizer("ewc", trunk, heads, fisher="empirical", lamb=lamb)
    _consolidate(reg, trunk, heads, 0, xa, ya)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in trunk.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    _consolidate(reg, trunk, heads, 1, xa * 0.5, ya)
    with torch.no_grad():
        for p in trunk.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))  # |drift| ~ 0.3: square and abs differ
    params = dict(_trunk_params(trunk))
    total = 0.0
    for term in reg.terms:
        for k, fisher in term["importance"].items():
            for f, p, a in zip(fisher.flatten().tolist(), params[k].detach().flatten().tolist(),
                               term["anchor"][k].flatten().tolist(), strict=True):
                total += f * (p - a) ** 2
    assert len(reg.terms) == 2 and total > 0
    assert reg.penalty() == pytest.approx(lamb / 2 * total, rel=1e-5)
    assert reg.diagnostics()["penalty"] == pytest.approx(lamb / 2 * total, rel=1e-5)


def test_mas_mean_is_the_running_mean_over_three_tasks():
    """``accumulate="mean"``: after three tasks the importance is ``(O_1 + O_2 + O_3) / 3``, each
    ``O_t`` computed by a fresh MAS on that task alone (two tasks cannot tell a running mean from a
    pairwise average).

    Mutation caught: ``(old + new) / 2`` instead of ``(k * old + new) / (k + 1)``."""
    trunk, heads = _model()
    heads.add_head(2, 3)
    reg = build_regularizer("mas", trunk, heads, accumulate="mean")
    singles = []
    for t in range(3):
        x, y = _data(31 + t)
        with torch.no_grad():
            for p in trunk.parameters():
                p.add_(0.2 * torch.randn_like(p))
        _consolidate(reg, trunk, heads, t, x, y)
        alone = build_regularizer("mas", trunk, heads)
        _consolidate(alone, trunk, heads, t, x, y)
        singles.append(alone.terms[0]["importance"])
    got = reg.terms[0]["importance"]
    for k in got:
        torch.testing.assert_close(got[k], (singles[0][k] + singles[1][k] + singles[2][k]) / 3)
    assert not torch.allclose(got["trunk.0.weight"], ((singles[0]["trunk.0.weight"] + singles[1]["trunk.0.weight"]) / 2
                                                      + singles[2]["trunk.0.weight"]) / 2, rtol=1e-3)


def test_max_samples_caps_the_samples_of_a_task_not_of_a_batch():
    """``max_samples=10`` over batches of 8: the Fisher is the mean over exactly the first 10
    samples (8 of the first batch, 2 of the second), from the test's own per-sample loop.

    Mutation caught: capping each batch at ``max_samples`` (all 24 samples used)."""
    trunk, heads = _model()
    x, y = _data(34)
    reg = build_regularizer("ewc", trunk, heads, fisher="empirical", max_samples=10)
    _consolidate(reg, trunk, heads, 0, x, y, batch=8)
    expected = _fisher_loop(trunk, heads, 0, x[:10], y[:10])
    for k, v in expected.items():
        torch.testing.assert_close(reg.terms[0]["importance"][k], v, rtol=1e-5, atol=1e-8)


def test_sparsity_counts_only_exactly_silent_nodes():
    """Sparsity (the share of nodes whose accumulated mean |post-activation| is 0) counts a node
    that outputs exactly 0 and not one that outputs 1e-7 on every input.

    Mutation caught: a tolerance (``<= 1e-6``) instead of ``== 0``."""
    trunk, heads = _model(hidden=(6, 5))
    with torch.no_grad():
        trunk[0].weight[1].zero_()
        trunk[0].bias[1] = 1e-7  # always 1e-7: active
        trunk[0].weight[2].zero_()
        trunk[0].bias[2] = 0.0  # always exactly 0
    x, y = _data(35)
    reg = build_regularizer("none", trunk, heads)
    _consolidate(reg, trunk, heads, 0, x, y)
    dead = (torch.relu(trunk[0](x)) == 0).all(dim=0)
    assert dead[2] and not dead[1]
    assert reg.diagnostics()["layers"][0]["sparsity"] == pytest.approx(float(dead.float().mean()))
