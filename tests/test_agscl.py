"""AGS-CL as optimizer hooks: prox cadence, Omega (eq. 8), I.1 masks, exact freezing, I.2
re-draws, exact resume, and the node activation of competitive layers."""

from __future__ import annotations

import copy
import io
import json

import pytest
import torch
import torch.nn.functional as F

from clrl.layers.nodes import get_incoming, node_view
from clrl.nets import MultiHead, atari_trunk, digits_trunk
from clrl.regularizers import build_regularizer

N_IN = 5


def _model(seed=0, hidden=(8, 6), activation="relu", n_heads=3):
    torch.manual_seed(seed)
    trunk = digits_trunk(hidden=hidden, in_features=N_IN, activation=activation)
    heads = MultiHead(trunk.out_features)
    for t in range(n_heads):
        heads.add_head(t, 3)
    return trunk, heads


def _data(seed, n=40):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, N_IN, generator=g), torch.randint(0, 3, (n,), generator=g)


def _kill(trunk, layer_idx, nodes, bias=-100.0):
    """Make nodes dead on every input: zero incoming weights, a very negative bias."""
    lin = [m for m in trunk if isinstance(m, torch.nn.Linear)][layer_idx]
    with torch.no_grad():
        lin.weight[nodes] = 0
        lin.bias[nodes] = bias


def _train(trunk, heads, opt, task, x, y, steps, offset=0, bs=8):
    for s in range(offset, offset + steps):
        i = (s * bs) % (len(x) - bs)
        opt.zero_grad()
        F.cross_entropy(heads(trunk(x[i : i + bs]), task), y[i : i + bs]).backward()
        opt.step()


def _end(reg, trunk, heads, task, x, bs=16):
    reg.end_task(task, [x[i : i + bs] for i in range(0, len(x), bs)], lambda b: heads(trunk(b), task))


def _groups(trunk):
    return [get_incoming(lay) for lay in node_view(trunk)]


def _relu_means(trunk, x):
    """Mean ReLU output per node of each Linear layer, by hand."""
    out, h = [], x
    with torch.no_grad():
        for m in trunk:
            if isinstance(m, torch.nn.Linear):
                h = torch.relu(h @ m.weight.T + m.bias)
                out.append(h.mean(dim=0))
    return out


def _prox_by_hand(v, thr, c):
    """Lemma 1 written out row by row."""
    out = v.clone()
    for i in range(v.shape[0]):
        d = v[i] - c[i]
        n = float(d.norm())
        out[i] = c[i] if n <= float(thr[i]) else c[i] + (1 - float(thr[i]) / n) * d
    return out


# ----------------------------------------------------------------------------- Omega


def test_omega_is_the_decayed_sum_of_mean_activations():
    trunk, heads = _model()
    xa, ya = _data(1)
    xb, yb = _data(2)
    reg = build_regularizer("agscl", trunk, heads, eta=0.7, rho=0.0, mu=0.0)
    opt = torch.optim.Adam(list(trunk.parameters()) + list(heads.parameters_of(0)), lr=0.01)
    reg.begin_task(0, opt)
    _train(trunk, heads, opt, 0, xa, ya, 5)
    a0 = _relu_means(trunk, xa)
    _end(reg, trunk, heads, 0, xa)
    for o, a in zip(reg.omega, a0, strict=True):
        torch.testing.assert_close(o, a, rtol=1e-5, atol=1e-7)
    opt = torch.optim.Adam(list(trunk.parameters()) + list(heads.parameters_of(1)), lr=0.01)
    reg.begin_task(1, opt)
    _train(trunk, heads, opt, 1, xb, yb, 5)
    a1 = _relu_means(trunk, xb)
    _end(reg, trunk, heads, 1, xb)
    for o, p, a in zip(reg.omega, a0, a1, strict=True):
        torch.testing.assert_close(o, 0.7 * p + a, rtol=1e-5, atol=1e-7)
    g0 = reg.unimportant()
    d = reg.diagnostics()
    for i, layer in enumerate(d["layers"]):
        assert layer["sparsity"] == pytest.approx(float(g0[i].float().mean()))
    assert d["overall"]["sparsity"] == pytest.approx(float(torch.cat(g0).float().mean()))


def test_conv_omega_averages_over_samples_and_positions():
    torch.manual_seed(0)
    trunk = atari_trunk(channels=(4, 6, 4), hidden=8)
    x = torch.rand(6, 4, 84, 84)
    reg = build_regularizer("agscl", trunk, rho=0.0)
    conv = trunk[0]
    with torch.no_grad():
        expected = torch.relu(F.conv2d(x, conv.weight, conv.bias, stride=4)).mean(dim=(0, 2, 3))
    reg.end_task(0, [x[:4], x[4:]], trunk)
    torch.testing.assert_close(reg.omega[0], expected, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- hooked steps


def test_hooked_steps_are_plain_steps_then_prox_at_the_cadence():
    trunk, heads = _model()
    xa, ya = _data(3)
    xb, yb = _data(4)
    _kill(trunk, 0, [0, 1], bias=-0.03)  # dead, and small enough for alpha*mu to zero
    _kill(trunk, 1, [2], bias=-0.03)
    mu, lamb, every = 2.0, 0.5, 3
    reg = build_regularizer("agscl", trunk, heads, mu=mu, lamb=lamb, prox_every=every, rho=0.0)
    reg.end_task(0, [xa], lambda b: heads(trunk(b), 0))
    omega = [o.clone() for o in reg.omega]
    g0 = [o == 0 for o in omega]
    assert g0[0][:2].all() and g0[1][2] and (~g0[0]).sum() > 2
    anchor = _groups(trunk)
    for a, b in zip(reg.anchor, anchor, strict=True):  # anchor = weights after consolidation
        assert torch.equal(a, b)

    ref_trunk, ref_heads = copy.deepcopy(trunk), copy.deepcopy(heads)
    opt = torch.optim.Adam(list(trunk.parameters()) + list(heads.parameters_of(1)), lr=0.02)
    ref_opt = torch.optim.Adam(list(ref_trunk.parameters()) + list(ref_heads.parameters_of(1)), lr=0.02)
    reg.begin_task(1, opt)
    ref_layers = node_view(ref_trunk)
    for step in range(1, 9):
        if step == 5:  # alpha is read at hook time
            opt.param_groups[0]["lr"] = ref_opt.param_groups[0]["lr"] = 0.005
        _train(trunk, heads, opt, 1, xb, yb, 1, offset=step)
        _train(ref_trunk, ref_heads, ref_opt, 1, xb, yb, 1, offset=step)
        with torch.no_grad():
            if step % every == 0:
                alpha = ref_opt.param_groups[0]["lr"]
                for i, layer in enumerate(ref_layers):
                    v = get_incoming(layer)
                    thr = torch.where(g0[i], alpha * mu, alpha * lamb * omega[i])
                    c = torch.where(g0[i][:, None], torch.zeros_like(v), anchor[i])
                    layer.set_incoming(_prox_by_hand(v, thr, c))
            # I.1 by hand: important rows of layer 1 never read G0 units of layer 0;
            # head 0 (finished) never reads G0 units of layer 1
            w1 = ref_layers[1].module.weight
            w1[(~g0[1]).nonzero()[:, 0][:, None], g0[0].nonzero()[:, 0][None, :]] = 0
            ref_heads.heads[0].weight[:, g0[1]] = 0
        for p, q in zip(list(trunk.parameters()) + list(heads.parameters()), list(ref_trunk.parameters()) + list(ref_heads.parameters()), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert reg.n_prox == 2 and reg.steps == 8
    # the prox did something: some G0 group was zeroed by mu
    assert any(bool((get_incoming(lay) == 0).all(dim=1).any()) for lay in node_view(trunk))


# ----------------------------------------------------------------------------- I.1 and freezing


def test_zeroed_weights_stay_zero_and_important_nodes_freeze():
    trunk, heads = _model()
    xa, ya = _data(5)
    xb, yb = _data(6)
    _kill(trunk, 0, [0, 1, 2])
    _kill(trunk, 1, [4])
    reg = build_regularizer("agscl", trunk, heads, mu=0.0, lamb=1e6, rho=1.0, prox_every=1, seed=0)
    opt = torch.optim.Adam(list(trunk.parameters()) + list(heads.parameters_of(0)), lr=0.01)
    reg.begin_task(0, opt)
    _train(trunk, heads, opt, 0, xa, ya, 3)
    _end(reg, trunk, heads, 0, xa)
    g0 = reg.unimportant()
    assert g0[0][:3].all() and g0[1][4] and not g0[1].all()
    imp1 = (~g0[1]).nonzero()[:, 0]
    w1, h0 = trunk[2].weight, heads.heads[0].weight
    assert torch.all(w1[imp1][:, :3] == 0) and torch.all(h0[:, 4] == 0)
    assert torch.all(w1[g0[1]].abs().sum() > 0)  # the G0 row of layer 1 was re-drawn (I.2, rho=1)
    anchor = [a.clone() for a in reg.anchor]

    # train task 1, with the past head 0 wrongly in the optimizer: the mask must still hold
    opt = torch.optim.Adam(list(trunk.parameters()) + list(heads.parameters()), lr=0.05)
    reg.begin_task(1, opt)
    for step in range(12):
        _train(trunk, heads, opt, 1, xb, yb, 1, offset=step)
        _train(trunk, heads, opt, 0, xa, ya, 1, offset=step)  # pressure on head 0 too
        assert torch.all(w1[imp1][:, :3] == 0)
        assert torch.all(h0[:, 4] == 0)
        for i, layer in enumerate(node_view(trunk)):  # huge lambda * Omega: exactly frozen
            imp = ~g0[i]
            assert torch.equal(get_incoming(layer)[imp], anchor[i][imp])
    assert heads.heads[1].weight[:, 4].abs().sum() > 0  # the running task's head is free
    d = reg.diagnostics()
    frozen = float((~torch.cat(g0)).float().mean())  # every important node, and the re-drawn G0 nodes all train
    assert d["overall"]["used_capacity"] == pytest.approx(frozen)
    assert d["overall"]["important_unmoved"] == pytest.approx(frozen)
    moved = [(get_incoming(lay) != a).any(dim=1) for lay, a in zip(node_view(trunk), anchor, strict=True)]
    assert all(torch.equal(m, g) for m, g in zip(moved, g0, strict=True))  # the hand count behind `frozen`
    # the mask is what keeps them at zero: without the hooks the same training regrows them
    reg.detach()
    _train(trunk, heads, opt, 1, xb, yb, 2)
    assert w1[imp1][:, :3].abs().sum() > 0


def test_masks_accumulate_over_tasks():
    """A node that was unimportant when node j became important never feeds j, even after it
    becomes important itself (I.1: 'for all future tasks')."""
    trunk, heads = _model()
    xa, _ = _data(7)
    _kill(trunk, 0, [0])
    reg = build_regularizer("agscl", trunk, heads, rho=1.0, seed=1)
    _end(reg, trunk, heads, 0, xa)
    assert reg.unimportant()[0][0] and reg.born[0][0] > 10**9
    _end(reg, trunk, heads, 1, xa)  # node 0 of layer 0 was re-drawn and is now active
    assert not reg.unimportant()[0][0]
    imp_old = (reg.born[1] == 0).nonzero()[:, 0]
    assert imp_old.numel() > 0
    with torch.no_grad():
        trunk[2].weight.fill_(1.0)
    reg.apply_masks()
    assert torch.all(trunk[2].weight[imp_old, 0] == 0)
    assert torch.all(trunk[2].weight[:, 1:] == 1)


# ----------------------------------------------------------------------------- I.2


def _all_dead_model(seed=0):
    trunk, heads = _model(seed=seed, hidden=(400, 300))
    _kill(trunk, 0, list(range(400)))
    _kill(trunk, 1, list(range(300)))
    return trunk, heads


@pytest.mark.parametrize("rho", [0.0, 0.3, 1.0])
def test_rand_init_redraws_about_rho_of_unimportant_nodes(rho):
    x, _ = _data(8)
    redrawn = []
    for seed in (5, 5, 6):
        trunk, heads = _all_dead_model()
        reg = build_regularizer("agscl", trunk, heads, rho=rho, seed=seed)
        _end(reg, trunk, heads, 0, x)
        assert all(g.all() for g in reg.unimportant())
        groups = _groups(trunk)
        changed = [(g[:, :-1] != 0).any(dim=1) for g in groups]
        redrawn.append((changed, groups))
        for i, layer in enumerate(node_view(trunk)):
            bound = 1 / layer.fan_in**0.5  # PyTorch default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            new = groups[i][changed[i]]
            assert new.numel() == 0 or new.abs().max() <= bound + 1e-7
            assert torch.all(groups[i][~changed[i], -1] == -100.0)  # the others are untouched
            assert torch.equal(reg.anchor[i], groups[i])  # anchor after re-init
            frac = float(changed[i].float().mean())
            assert abs(frac - rho) < 0.08, (i, frac)
    (c5, g5), (c5b, g5b), (c6, _) = redrawn
    assert all(torch.equal(a, b) for a, b in zip(g5, g5b, strict=True))  # same seed: same nodes, same values
    if 0 < rho < 1:
        assert not all(torch.equal(a, b) for a, b in zip(c5, c6, strict=True))


def test_rand_init_with_the_global_rng_is_reproducible():
    x, _ = _data(9)
    out = []
    for _ in range(2):
        trunk, heads = _all_dead_model()
        reg = build_regularizer("agscl", trunk, heads, rho=0.5)
        torch.manual_seed(42)
        _end(reg, trunk, heads, 0, x)
        out.append(_groups(trunk))
    assert all(torch.equal(a, b) for a, b in zip(*out, strict=True))


# ----------------------------------------------------------------------------- resume


def test_state_dict_round_trip_mid_task_is_bit_identical():
    trunk, heads = _model()
    xa, ya = _data(10)
    xb, yb = _data(11)
    _kill(trunk, 0, [3])
    kw = dict(mu=0.5, lamb=2.0, rho=0.5, prox_every=3, seed=7)
    reg = build_regularizer("agscl", trunk, heads, **kw)
    opt = torch.optim.Adam(list(trunk.parameters()) + list(heads.parameters_of(0)), lr=0.01)
    reg.begin_task(0, opt)
    _train(trunk, heads, opt, 0, xa, ya, 4)
    _end(reg, trunk, heads, 0, xa)
    opt = torch.optim.Adam(list(trunk.parameters()) + list(heads.parameters_of(1)), lr=0.01)
    reg.begin_task(1, opt)
    _train(trunk, heads, opt, 1, xb, yb, 4)  # mid-cadence: next prox after step 6

    buf = io.BytesIO()
    torch.save({"reg": reg.state_dict(), "trunk": trunk.state_dict(), "heads": heads.state_dict(), "opt": opt.state_dict()}, buf)

    def rest(trunk, heads, opt, reg):
        _train(trunk, heads, opt, 1, xb, yb, 5, offset=4)
        _end(reg, trunk, heads, 1, xb)
        opt2 = torch.optim.Adam(list(trunk.parameters()) + list(heads.parameters_of(2)), lr=0.01)
        reg.begin_task(2, opt2)
        _train(trunk, heads, opt2, 2, xa, ya, 4)
        return [p.detach().clone() for p in list(trunk.parameters()) + list(heads.parameters())], reg.diagnostics()

    expected, diag = rest(trunk, heads, opt, reg)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    trunk2, heads2 = _model(seed=123)
    trunk2.load_state_dict(saved["trunk"])
    heads2.load_state_dict(saved["heads"])
    opt2 = torch.optim.Adam(list(trunk2.parameters()) + list(heads2.parameters_of(1)), lr=0.01)
    opt2.load_state_dict(saved["opt"])
    reg2 = build_regularizer("agscl", trunk2, heads2, **kw)
    reg2.load_state_dict(saved["reg"])
    reg2.begin_task(1, opt2)
    got, diag2 = rest(trunk2, heads2, opt2, reg2)
    for p, q in zip(got, expected, strict=True):
        assert torch.equal(p, q)
    assert json.dumps(diag) == json.dumps(diag2)


# ----------------------------------------------------------------------------- competitive layers


def test_maxout_credit_goes_to_the_winner():
    trunk, heads = _model(hidden=(8, 6), activation="maxout:block=2")
    x, _ = _data(12)
    lin0 = trunk[0]
    with torch.no_grad():
        lin0.weight[1] = 0
        lin0.bias[1] = -100.0  # node 1 never wins against node 0
        lin0.weight[4:6] = 0
        lin0.bias[4:6] = 0.0  # block 2 outputs exactly 0
    reg = build_regularizer("agscl", trunk, heads, rho=0.0)
    with torch.no_grad():
        pre = x @ lin0.weight.T + lin0.bias
        block_out = pre.view(-1, 4, 2).max(dim=2).values.abs().mean(dim=0)
    reg.end_task(0, [x], lambda b: heads(trunk(b), 0))
    om = reg.omega[0]
    torch.testing.assert_close(om.view(4, 2).sum(dim=1), block_out, rtol=1e-5, atol=1e-6)
    assert om[1] == 0 and om[0] > 0 and om[4] == 0 and om[5] == 0
    w1 = trunk[2].weight  # reads 4 maxout units
    assert torch.all(w1[:, 2] == 0)  # both members of block 2 unimportant
    assert torch.all(w1[:, 0] != 0)  # block 0 has an important winner


@pytest.mark.parametrize("spec", ["lwta:block=2", "st_hard:groups=2", "st_soft:groups=2>gnc:groups=2"])
def test_runs_on_competitive_activations(spec):
    trunk, heads = _model(hidden=(8, 6), activation=spec)
    xa, ya = _data(13)
    reg = build_regularizer("agscl", trunk, heads, mu=0.5, lamb=1e6, prox_every=2, seed=0)
    for task in range(2):
        opt = torch.optim.Adam(list(trunk.parameters()) + list(heads.parameters_of(task)), lr=0.01)
        reg.begin_task(task, opt)
        _train(trunk, heads, opt, task, xa, ya, 4)
        if task == 1:  # important nodes frozen after the prox step, masked entries zero
            for i, layer in enumerate(node_view(trunk)):
                imp = ~reg.unimportant()[i]
                assert torch.equal(get_incoming(layer)[imp], reg.anchor[i][imp])
            keep = reg._keep[0]
            if keep is not None:
                assert torch.all(trunk[2].weight[keep[:, :, 0] == 0] == 0)
        _end(reg, trunk, heads, task, xa)
    json.dumps(reg.diagnostics())


def test_memory_is_per_node():
    trunk = atari_trunk()
    reg = build_regularizer("agscl", trunk)
    reg.end_task(0, [torch.rand(2, 4, 84, 84)], trunk)
    mem = reg.memory_bytes()
    n_nodes = 32 + 64 + 64 + 512
    assert mem["importance"] == n_nodes * (4 + 1)  # Omega float32 + birth uint8
    assert mem["anchor"] == sum(p.numel() for p in trunk.parameters()) * 4


# ----------------------------------------------------------------------------- issue 16: exactly the paper


def _conv_model(seed=0, n_heads=2):
    """conv(2->4, 3x3) -> relu -> conv(4->3, 3x3, stride 2) -> relu -> flatten -> linear(27->6) -> relu
    on 2x9x9 inputs: spatial sizes 7x7 and 3x3, so every layer has its own samples x positions."""
    torch.manual_seed(seed)
    trunk = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 3, stride=2), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(27, 6), torch.nn.ReLU(),
    )
    heads = MultiHead(6)
    for t in range(n_heads):
        heads.add_head(t, 3)
    return trunk, heads


def _conv_data(seed, n=24):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 9, 9, generator=g), torch.randint(0, 3, (n,), generator=g)


def _kill_conv(conv, channels, bias=-100.0):
    with torch.no_grad():
        conv.weight[channels] = 0
        conv.bias[channels] = bias


def test_conv_omega_of_every_layer_is_the_mean_over_samples_and_positions():
    """Every layer of a conv trunk against an independent forward pass: conv layers average
    |relu| over samples and *their own* positions (7x7, then 3x3), the linear layer over samples.

    Mutation caught: dividing every layer's sum by layer 0's count of samples x positions."""
    trunk, heads = _conv_model()
    x, _ = _conv_data(1, n=10)
    reg = build_regularizer("agscl", trunk, heads, rho=0.0)
    c0, c1, lin = trunk[0], trunk[2], trunk[5]
    with torch.no_grad():
        h0 = torch.relu(F.conv2d(x, c0.weight, c0.bias))
        h1 = torch.relu(F.conv2d(h0, c1.weight, c1.bias, stride=2))
        h2 = torch.relu(h1.flatten(1) @ lin.weight.T + lin.bias)
    expected = [h0.mean(dim=(0, 2, 3)), h1.mean(dim=(0, 2, 3)), h2.mean(dim=0)]
    assert [tuple(h.shape[2:]) for h in (h0, h1)] == [(7, 7), (3, 3)]
    reg.end_task(0, [x[:4], x[4:]], lambda b: heads(trunk(b), 0))
    for got, want in zip(reg.omega, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_conv_flatten_linear_mask_holds_channel_blocks_at_zero_while_training():
    """I.1 across conv -> flatten -> linear: torch flattens (C, H, W), so channel u owns columns
    u*9 .. u*9+8 of the linear layer. With lamb = 0 (no freezing) only the mask keeps them at 0,
    while the re-drawn channel is active and its columns get gradients.

    Mutation caught: masking the boundary as if channels were the fastest index (columns u, u+3,
    u+6, ... in ``outgoing_weights`` and ``apply_masks``)."""
    trunk, heads = _conv_model()
    xa, ya = _conv_data(2)
    xb, yb = _conv_data(3)
    _kill_conv(trunk[2], [0])
    reg = build_regularizer("agscl", trunk, heads, mu=0.0, lamb=0.0, rho=1.0, seed=0)
    reg.end_task(0, [xa], lambda b: heads(trunk(b), 0))
    g0 = reg.unimportant()
    assert g0[1].tolist() == [True, False, False]
    imp = (~g0[2]).nonzero()[:, 0]  # important linear rows: born before channel 0, so masked
    assert imp.numel() >= 4
    w = trunk[5].weight
    block = torch.zeros(27, dtype=torch.bool)
    block[0:9] = True  # channel 0's 3x3 positions
    assert torch.all(w[imp][:, block] == 0) and torch.all(w[imp][:, ~block] != 0)
    with torch.no_grad():
        assert bool((torch.relu(trunk[:4](xb))[:, 0] > 0).any())  # the re-drawn channel 0 is active
    start = w.detach().clone()
    opt = torch.optim.Adam(list(trunk.parameters()) + list(heads.parameters_of(1)), lr=0.05)
    reg.begin_task(1, opt)
    for step in range(6):
        _train(trunk, heads, opt, 1, xb, yb, 1, offset=step)
        assert torch.all(w[imp][:, block] == 0), step  # exactly zero, no regrowth
    assert (w[imp][:, ~block] != start[imp][:, ~block]).float().mean() > 0.8  # the free columns did train
    reg.detach()  # without the hooks the same training regrows the block
    _train(trunk, heads, opt, 1, xb, yb, 2)
    assert w[imp][:, block].abs().sum() > 0


def test_rand_init_leaves_important_nodes_alone():
    """I.2 with rho = 1 on a layer with important and unimportant nodes: every G0 node is
    re-drawn, every important node keeps its incoming group bit for bit (layer 1 only loses the
    columns I.1 zeroes, those read from G0 units of layer 0).

    Mutation caught: re-drawing every node with probability rho (dropping ``& g0``)."""
    trunk, heads = _model()
    x, _ = _data(14)
    _kill(trunk, 0, [0, 3, 5])
    _kill(trunk, 1, [1])
    before = _groups(trunk)
    reg = build_regularizer("agscl", trunk, heads, rho=1.0, seed=3)
    _end(reg, trunk, heads, 0, x)
    g0 = reg.unimportant()
    assert g0[0].nonzero()[:, 0].tolist() == [0, 3, 5] and g0[1][1] and (~g0[1]).sum() >= 3
    after = _groups(trunk)
    expected1 = before[1].clone()
    expected1[:, [0, 3, 5]] = 0  # I.1: outgoing weights of layer 0's G0 units
    assert torch.equal(after[0][~g0[0]], before[0][~g0[0]])
    assert torch.equal(after[1][~g0[1]], expected1[~g0[1]])
    for i in range(2):  # rho = 1: every G0 node re-drawn (the killed ones had bias -100)
        assert torch.all(after[i][g0[i], -1] != -100.0)


def test_mask_before_prox_lands_a_row_within_its_threshold_exactly_on_the_anchor():
    """Departure 1: a node whose free drift is 0.8x ``alpha * lamb * Omega`` lands exactly on
    its anchor although Adam-like regrowth put large values in its masked entries; one with
    1.25x drift is shrunk by Lemma 1 on its free entries only.

    Mutation caught: running the prox before re-applying the I.1 mask in ``_post_step``."""
    trunk, heads = _model()
    x, _ = _data(15)
    _kill(trunk, 0, [0, 1])
    alpha, lamb = 0.01, 3.0
    reg = build_regularizer("agscl", trunk, heads, mu=0.0, lamb=lamb, rho=0.0, prox_every=1)
    _end(reg, trunk, heads, 0, x)
    layer = node_view(trunk)[1]
    imp = (~reg.unimportant()[1]).nonzero()[:, 0]
    j, k = int(imp[0]), int(imp[1])
    anchor = reg.anchor[1]
    free = torch.ones(anchor.shape[1], dtype=torch.bool)
    free[[0, 1]] = False  # columns from layer 0's G0 units: masked for important rows
    assert torch.all(anchor[imp][:, ~free] == 0)
    thr = alpha * lamb * reg.omega[1]
    g = torch.Generator().manual_seed(0)
    v = anchor.clone()
    for row, factor in ((j, 0.8), (k, 1.25)):
        d = torch.randn(int(free.sum()), generator=g)
        v[row, free] += d / d.norm() * factor * thr[row]
        v[row, ~free] = 5.0  # regrown masked entries
    layer.set_incoming(v)
    opt = torch.optim.SGD(trunk.parameters(), lr=alpha)
    reg.begin_task(1, opt)
    opt.zero_grad(set_to_none=True)
    opt.step()  # no gradients: only the hooks act
    got = get_incoming(layer)
    assert torch.equal(got[j], anchor[j])
    diff = v[k] - anchor[k]
    diff[~free] = 0
    want = anchor[k] + (1 - thr[k] / diff.norm()) * diff
    torch.testing.assert_close(got[k], want, rtol=1e-6, atol=1e-7)
    assert not torch.equal(got[k], anchor[k])


@pytest.mark.parametrize("model", ["mlp", "conv"])
def test_old_task_outputs_are_unchanged_under_a_freezing_lambda(model):
    """With lamb = 1e9 every important node is frozen, I.1 cuts what they read from G0 nodes and
    the finished head reads no G0 unit, so task 0's outputs on its consolidation inputs stay what
    training made them, through consolidation (G0 nodes were silent on them) and task 1's
    training (re-drawn G0 nodes and all).

    Mutations caught: I.2 re-drawing important nodes; the finished head's columns of G0 units
    not zeroed and held (no ``head_born``)."""
    if model == "mlp":
        trunk, heads = _model()
        (xa, ya), (xb, yb) = _data(16), _data(17)
        _kill(trunk, 0, [0, 1])
        _kill(trunk, 1, [3])  # a G0 node in the layer the finished head reads
    else:
        trunk, heads = _conv_model()
        (xa, ya), (xb, yb) = _conv_data(16), _conv_data(17)
        _kill_conv(trunk[0], [1])
        _kill_conv(trunk[5], [2])  # works on Linear rows too
    reg = build_regularizer("agscl", trunk, heads, mu=0.5, lamb=1e9, rho=1.0, prox_every=1, seed=0)
    opt = torch.optim.Adam(list(trunk.parameters()) + list(heads.parameters_of(0)), lr=0.02)
    reg.begin_task(0, opt)
    _train(trunk, heads, opt, 0, xa, ya, 4)
    with torch.no_grad():
        old = heads(trunk(xa), 0)  # as trained: consolidation (I.1, I.2) must not change it either
    _end(reg, trunk, heads, 0, xa)
    assert any(g.any() for g in reg.unimportant()) and not all(g.all() for g in reg.unimportant())
    opt = torch.optim.Adam(list(trunk.parameters()) + list(heads.parameters_of(1)), lr=0.05)
    reg.begin_task(1, opt)
    _train(trunk, heads, opt, 1, xb, yb, 8)
    with torch.no_grad():
        torch.testing.assert_close(heads(trunk(xa), 0), old, rtol=0, atol=1e-6)
        assert not torch.allclose(heads(trunk(xb), 1), heads(trunk(xb), 1) * 0)  # task 1 did learn something


@pytest.mark.parametrize("spec", ["bn>relu", "relu>ln", "gn:groups=2>relu"])
def test_normalization_layers_are_refused_naming_the_module(spec):
    """Departure 2: norms hold parameters and statistics outside every node group, so AGS-CL
    refuses them; EWC and MAS accept them.

    Mutation caught: dropping the check in ``AGSCL.__init__``."""
    trunk, heads = _model(activation=spec)
    with pytest.raises(ValueError, match=r"agscl: trunk module '1\.\d' \((BatchNorm|LayerNorm|GroupNorm)\) is a normalization layer"):
        build_regularizer("agscl", trunk, heads)
    build_regularizer("ewc", trunk, heads)


def test_why_norms_are_refused_batchnorm_moves_old_outputs_under_a_freezing_lambda(monkeypatch):
    """The reason for the refusal, shown: with the check bypassed, ``bn>relu`` lets task 0's
    outputs move under lamb = 1e9 (BatchNorm's affine parameters train freely and its running
    statistics follow task 1), where the same run with ``relu`` keeps them (test above)."""
    from clrl.regularizers import agscl as agscl_mod

    monkeypatch.setattr(agscl_mod, "check_no_norms", lambda trunk: None)
    trunk, heads = _model(activation="bn>relu")
    (xa, ya), (xb, yb) = _data(16), _data(17)
    reg = build_regularizer("agscl", trunk, heads, mu=0.5, lamb=1e9, rho=1.0, prox_every=1, seed=0)
    opt = torch.optim.Adam(list(trunk.parameters()) + list(heads.parameters_of(0)), lr=0.02)
    reg.begin_task(0, opt)
    _train(trunk, heads, opt, 0, xa, ya, 4)
    _end(reg, trunk, heads, 0, xa)
    trunk.eval()
    with torch.no_grad():
        old = heads(trunk(xa), 0)
    trunk.train()
    opt = torch.optim.Adam(list(trunk.parameters()) + list(heads.parameters_of(1)), lr=0.05)
    reg.begin_task(1, opt)
    _train(trunk, heads, opt, 1, xb * 3 + 1, yb, 8)
    trunk.eval()
    with torch.no_grad():
        assert (heads(trunk(xa), 0) - old).abs().max() > 1e-2


def test_used_capacity_and_important_unmoved_against_a_hand_count():
    """Departure 3 and the one-sided bounds: layer 0 has 8 nodes, two simply zero (w = 0, b = 0:
    G0, never move), one dead with bias -100 (G0, moved by the mu prox), five important
    (frozen); layer 1 has three dead nodes (G0, non-zero groups, moved by the mu prox) and three
    important. The paper's used capacity counts unmoved nodes, (7 + 3) / 14; important-and-
    unmoved counts (5 + 3) / 14.

    Mutations caught: counting important-and-unmoved without the importance filter; counting
    used capacity among important nodes only."""
    trunk, heads = _model()
    xa, ya = _data(18)
    xb, yb = _data(19)
    _kill(trunk, 0, [0, 1], bias=0.0)
    _kill(trunk, 0, [2])
    _kill(trunk, 1, [4])
    reg = build_regularizer("agscl", trunk, heads, mu=0.5, lamb=1e9, rho=0.0, prox_every=1)
    reg.begin_task(0, torch.optim.Adam(list(trunk.parameters()) + list(heads.parameters_of(0)), lr=0.01))
    _end(reg, trunk, heads, 0, xa)
    d = reg.diagnostics()
    assert d["overall"]["important_unmoved"] == 0.0  # nothing was important during task 0
    g0 = reg.unimportant()
    assert g0[0].nonzero()[:, 0].tolist() == [0, 1, 2] and g0[1].nonzero()[:, 0].tolist() == [2, 3, 4]
    assert torch.all(_groups(trunk)[1][g0[1]].abs().sum(dim=1) > 0)  # the mu prox will move them
    opt = torch.optim.Adam(list(trunk.parameters()) + list(heads.parameters_of(1)), lr=0.05)
    reg.begin_task(1, opt)
    _train(trunk, heads, opt, 1, xb, yb, 5)
    for diag in (reg.diagnostics(), None):
        if diag is None:  # after end_task the figures of task 1 are kept
            _end(reg, trunk, heads, 1, xb)
            diag = reg.diagnostics()
        l0, l1 = diag["layers"]
        assert l0["used_capacity"] == pytest.approx(7 / 8) and l1["used_capacity"] == pytest.approx(3 / 6)
        assert l0["important_unmoved"] == pytest.approx(5 / 8) and l1["important_unmoved"] == pytest.approx(3 / 6)
        assert diag["overall"]["used_capacity"] == pytest.approx(10 / 14)
        assert diag["overall"]["important_unmoved"] == pytest.approx(8 / 14)


def test_births_use_the_narrowest_integer_and_old_checkpoints_load():
    """Departure 5: one uint8 birth per node (5 bytes per node with Omega: the Nature CNN's state
    is 1/~2,000 of EWC's Fisher, not 1/835); it widens past 254 consolidations; an int64 state
    with the old 2**62 'never' loads.

    Mutation caught: keeping int64 births."""
    from clrl.regularizers.agscl import _birth_dtype, _narrow_births

    assert [_birth_dtype(n) for n in (0, 1, 254, 255, 32766, 32767)] == [
        torch.uint8, torch.uint8, torch.uint8, torch.int16, torch.int16, torch.int32]
    wide = _narrow_births([torch.tensor([0, 3, 2**62])], 300)[0]
    assert wide.dtype == torch.int16 and wide.tolist() == [0, 3, 2**15 - 1]
    trunk, heads = _model()
    x, _ = _data(20)
    _kill(trunk, 0, [2])
    reg = build_regularizer("agscl", trunk, heads, rho=0.0)
    _end(reg, trunk, heads, 0, x)
    assert all(b.dtype == torch.uint8 for b in reg.born)
    assert reg.born[0].tolist() == [0, 0, 255, 0, 0, 0, 0, 0]
    sd = reg.state_dict()
    sd["method"]["born"] = [torch.where(b == 255, torch.tensor(2**62), b.long()) for b in sd["method"]["born"]]
    reg2 = build_regularizer("agscl", trunk, heads, rho=0.0)
    reg2.load_state_dict(sd)
    assert all(torch.equal(a, b) for a, b in zip(reg2.born, reg.born, strict=True))
    assert [k is None or torch.equal(k, m) for k, m in zip(reg2._keep, reg._keep, strict=True)] == [True, True]


# ----------------------------------------------------------------------------- issue 13: no per-step transfers


class _Watch:
    """Counts, while active, Python-level ``Tensor.to/cuda/cpu`` calls (each is a potential
    host/device copy), device synchronizations (``aten._local_scalar_dense``: ``.item()``,
    ``bool(t)``) and copies whose source and result sit on different devices."""

    def __init__(self, monkeypatch):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        watch = self
        self.calls, self.syncs, self.cross = [], 0, 0
        for name in ("to", "cuda", "cpu"):
            real = getattr(torch.Tensor, name)

            def spy(t, *a, _real=real, _name=name, **k):
                if watch.active:
                    watch.calls.append(_name)
                return _real(t, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, spy)

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                if func is torch.ops.aten._local_scalar_dense.default:
                    watch.syncs += 1
                if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
                    devs = {t.device for t in tree_leaves((args, out)) if isinstance(t, torch.Tensor) and t.dim() > 0}
                    watch.cross += len(devs) > 1
                return out

        self.mode = Mode()
        self.active = False

    def __enter__(self):
        self.active = True
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)
        self.active = False


_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _DEVICES)
def test_agscl_step_hook_makes_no_host_device_copies_or_syncs(device, monkeypatch):
    """The post-step hook (I.1 masks on trunk and past head, then the prox step) only touches
    tensors that already live on the parameters' device: no ``.to``/``.cuda``/``.cpu`` call, no
    synchronization, no cross-device copy per optimizer step (issue 13). On a CUDA machine the
    same test also runs on the GPU.

    Mutations caught: ``cols.to(w.device)`` in ``apply_masks`` (the old per-step copy of the head
    column indices); Omega/anchor moved with ``.to(v.device)`` in ``prox_now``; the
    ``threshold >= 0`` check (a sync) left on in ``prox_now``."""
    trunk, heads = _model()
    x, y = _data(21)
    _kill(trunk, 0, [0, 1])
    _kill(trunk, 1, [2])
    reg = build_regularizer("agscl", trunk, heads, mu=0.5, lamb=2.0, prox_every=1, seed=0)
    _end(reg, trunk, heads, 0, x)
    trunk.to(device)
    heads.to(device)
    x, y = x.to(device), y.to(device)
    opt = torch.optim.Adam(list(trunk.parameters()) + list(heads.parameters_of(1)), lr=0.01)
    reg.begin_task(1, opt)  # moves Omega, births, anchor and masks once
    assert reg._keep[0] is not None and reg._head_cols  # both kinds of mask are exercised
    assert all(t.device.type == device for t in reg.omega + reg.anchor + [k for k in reg._keep if k is not None])
    watch = _Watch(monkeypatch)
    for step in range(3):
        _train(trunk, heads, opt, 1, x, y, 1, offset=step)  # the hooked step works on the device
        with watch:
            reg._post_step(opt)  # the hook again, watched: masks, then a prox step
    assert reg.n_prox == 6
    assert watch.calls == [] and watch.syncs == 0 and watch.cross == 0


@pytest.mark.parametrize("device", _DEVICES)
@pytest.mark.parametrize("clipped", [False, True])
def test_quadratic_penalty_makes_no_host_device_copies_or_syncs(device, clipped, monkeypatch):
    """EWC's penalty gradient (pre-step hook, or the gradient hooks of ``penalty_clipped``) adds
    device tensors to device tensors: nothing moved, nothing synchronized."""
    trunk, heads = _model()
    x, y = _data(22)
    reg = build_regularizer("ewc", trunk, heads, fisher="empirical", penalty_clipped=clipped)
    reg.end_task(0, [(x, y)], lambda b: heads(trunk(b), 0))
    trunk.to(device)
    heads.to(device)
    reg.load_state_dict(reg.state_dict())  # importance and anchors follow the parameters' device
    x, y = x.to(device), y.to(device)
    opt = torch.optim.SGD(list(trunk.parameters()) + list(heads.parameters_of(1)), lr=0.01)
    reg.begin_task(1, opt)
    watch = _Watch(monkeypatch)
    loss = F.cross_entropy(heads(trunk(x), 1), y)
    opt.zero_grad(set_to_none=True)
    with watch:
        loss.backward()
        reg._pre_step(opt)
    assert watch.calls == [] and watch.syncs == 0 and watch.cross == 0


# ----------------------------------------------------------------------------- mutation audit: G0, I.1, I.2


def test_a_tiny_positive_omega_is_important():
    """Eq. (1): ``G0 = {n : Omega_n = 0}`` exactly, with no tolerance. A node whose ReLU output is
    1e-7 on every input has Omega = 1e-7 > 0: it is important (born at task 0, its outgoing
    weights kept, and the prox keeps it at its anchor instead of zeroing it with ``alpha * mu``);
    a node with output exactly 0 is in G0.

    Mutations caught: ``Omega <= 1e-6`` instead of ``== 0`` in ``unimportant`` or in the cached
    G0 masks the prox step reads."""
    trunk, heads = _model()
    x, _ = _data(23)
    _kill(trunk, 0, [2], bias=1e-7)  # weights 0, bias 1e-7: output 1e-7 on every input
    _kill(trunk, 0, [3], bias=0.0)  # output exactly 0
    w1_before = trunk[2].weight.detach().clone()
    reg = build_regularizer("agscl", trunk, heads, mu=0.5, lamb=1.0, rho=0.0)
    _end(reg, trunk, heads, 0, x)
    assert float(reg.omega[0][2]) == pytest.approx(1e-7, rel=1e-3)
    g0 = reg.unimportant()[0]
    assert not g0[2] and g0[3]
    assert int(reg.born[0][2]) == 0
    w1 = trunk[2].weight
    imp1 = ~reg.unimportant()[1]
    assert torch.equal(w1[:, 2], w1_before[:, 2])  # I.1 leaves an important node's column alone
    assert torch.all(w1[imp1][:, 3] == 0)  # and zeroes the G0 node's
    anchor = reg.anchor[0].clone()
    reg.prox_now(lr=1.0)  # alpha * mu = 0.5 would zero node 2's group (norm 1e-7) if it were in G0
    assert torch.equal(get_incoming(node_view(trunk)[0])[2], anchor[2])
    assert float(trunk[0].bias.detach()[2]) == pytest.approx(1e-7, rel=1e-6)


def test_zero_init_zeroes_every_outgoing_weight_of_g0_nodes_at_consolidation():
    """(I.1) ``theta_{n,i} = 0 if i in G0``: at consolidation *every* outgoing weight of a G0
    node is zeroed, also those into G0 nodes of the next layer (which the I.1 mask does not hold;
    with rho = 0 they are not re-drawn either), and the finished head's column of a G0 unit.
    Nothing else changes.

    Mutation caught: dropping ``zero_outgoing`` of the trunk layers in ``_consolidate`` (the masks
    then zero only the rows of important nodes)."""
    trunk, heads = _model()
    x, _ = _data(24)
    _kill(trunk, 0, [0, 1])
    with torch.no_grad():
        trunk[2].bias[4] = -100.0  # dead, but its incoming weights (some read G0 units) are non-zero
    w1, h0 = trunk[2].weight, heads.heads[0].weight
    w1_before, h0_before = w1.detach().clone(), h0.detach().clone()
    reg = build_regularizer("agscl", trunk, heads, rho=0.0)
    _end(reg, trunk, heads, 0, x)
    g0 = reg.unimportant()
    assert g0[0][[0, 1]].all() and g0[1][4] and not g0[0].all() and not g0[1].all()
    want_w1 = w1_before.clone()
    want_w1[:, g0[0]] = 0  # all rows, the G0 row 4 included
    want_h0 = h0_before.clone()
    want_h0[:, g0[1]] = 0
    assert torch.equal(w1, want_w1)
    assert torch.equal(h0, want_h0)
    assert torch.all(w1_before[4, [0, 1]] != 0)  # so the G0 row's entries did have something to zero


def test_rand_init_gives_each_node_its_own_row_of_pytorchs_default_init():
    """(I.2) A re-drawn node gets *its own* row of a fresh PyTorch default init drawn from the
    seeded generator after the layer's coin flips: the reference is ``nn.Linear.reset_parameters``
    run on torch's global RNG set to that generator state. Important nodes keep their rows.

    Mutation caught: writing the first ``k`` fresh rows into the ``k`` re-drawn nodes."""
    trunk, heads = _model()
    x, _ = _data(25)
    _kill(trunk, 0, [1, 4, 6])
    before = get_incoming(node_view(trunk)[0])
    seed = 5
    reg = build_regularizer("agscl", trunk, heads, rho=1.0, seed=seed)
    _end(reg, trunk, heads, 0, x)
    g0 = reg.unimportant()[0]
    assert g0.nonzero()[:, 0].tolist() == [1, 4, 6]
    g = torch.Generator().manual_seed(seed)
    torch.rand(8, generator=g)  # layer 0's coin flips come first
    ref = copy.deepcopy(trunk[0])
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(g.get_state())
        ref.reset_parameters()
    want = torch.cat([ref.weight.detach(), ref.bias.detach().unsqueeze(1)], dim=1)
    after = get_incoming(node_view(trunk)[0])
    assert torch.equal(after[g0], want[g0])
    assert torch.equal(after[~g0], before[~g0])


def test_prox_skips_layers_outside_the_optimizer():
    """A trunk layer whose weight is not in the optimizer is not trained, so the prox step leaves
    it alone (no alpha to read); the trained layer is proxed with its group's learning rate: its
    G0 node (norm below ``alpha * mu``) is zeroed while the frozen layer's G0 node keeps its group.

    Mutation caught: proxing layers outside the optimizer with some default alpha."""
    trunk, heads = _model()
    x, _ = _data(26)
    _kill(trunk, 0, [0], bias=-0.01)
    with torch.no_grad():
        trunk[2].weight[1] = 0.001
        trunk[2].bias[1] = -0.01  # G0 (dead) with a small non-zero group
    reg = build_regularizer("agscl", trunk, heads, mu=1.0, lamb=1.0, rho=0.0)
    _end(reg, trunk, heads, 0, x)
    g0 = reg.unimportant()
    assert g0[0][0] and g0[1][1]
    before = _groups(trunk)
    opt = torch.optim.SGD(list(trunk[2].parameters()) + list(heads.parameters_of(1)), lr=0.5)
    reg.begin_task(1, opt)
    opt.zero_grad(set_to_none=True)
    opt.step()  # no gradients: only the hooks act
    after = _groups(trunk)
    assert torch.equal(after[0], before[0])  # layer 0 is not in the optimizer
    assert float(before[1][1].norm()) <= 0.5 * 1.0  # within alpha * mu of 0 ...
    assert torch.equal(after[1][1], torch.zeros_like(after[1][1]))  # ... so zeroed
    assert reg.n_prox == 1


def test_births_widen_at_the_255th_consolidation_keeping_never_as_never():
    """At the 255th consolidation the uint8 births (sentinel 255 = never important) widen to int16:
    the old sentinel must become int16's sentinel, not a birth at consolidation 255 (which would
    make never-important nodes look born and lift their I.1 masks).

    Mutation caught: ``b > n_consolidations`` instead of ``>=`` in ``_narrow_births``."""
    from clrl.regularizers.agscl import _narrow_births

    got = _narrow_births([torch.tensor([0, 254, 255], dtype=torch.uint8)], 255)[0]
    assert got.dtype == torch.int16 and got.tolist() == [0, 254, 2**15 - 1]
