"""Competitive activations and the spec registry against independent references."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from clrl.layers import (
    ACTIVATION_NAMES,
    GNC,
    LWTA,
    ActivationChain,
    Maxout,
    SparseTransform,
    build_activation,
)

# --------------------------------------------------------------------------- references
# gnc and st transcribed from the GNC paper's appendix, section D (D.1 and D.2).


def ref_gnc(a, group_size, num_of_groups):
    shape_0, shape_1 = a.shape
    a = a.reshape(shape_0, group_size, num_of_groups)
    a = torch.nn.functional.normalize(a, p=2, dim=1).reshape(shape_0, shape_1)
    return a


def ref_st(z, group_size, num_of_groups):
    shape_0, shape_1 = z.shape
    r = z.reshape(shape_0, group_size, num_of_groups).detach().clone()
    tr = torch.abs(r) >= torch.mean(torch.abs(r), 1).unsqueeze(1)
    a = z * tr.float().reshape(shape_0, shape_1)
    return a


def ref_st_soft(z, group_size, num_of_groups):
    """Eq. 10 of the appendix, written in the style of D.2 (threshold detached)."""
    shape_0, shape_1 = z.shape
    r = z.reshape(shape_0, group_size, num_of_groups)
    lam = torch.mean(torch.abs(r.detach()), 1).unsqueeze(1)
    a = torch.sign(r) * torch.clamp(torch.abs(r) - lam, min=0)
    return a.reshape(shape_0, shape_1)


def loop_lwta(x, k):
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for start in range(0, x.shape[1], k):
            block = [float(v) for v in x[b, start : start + k]]
            w = block.index(max(block))  # first maximum
            out[b, start + w] = x[b, start + w]
    return out


def loop_maxout(x, k):
    out = torch.zeros(x.shape[0], x.shape[1] // k)
    for b in range(x.shape[0]):
        for j in range(x.shape[1] // k):
            out[b, j] = max(float(v) for v in x[b, j * k : (j + 1) * k])
    return out


GROUPED = [(2, 5), (4, 3), (8, 4)]  # (num_groups J, group_size)


# --------------------------------------------------------------------------- sT and GNC


@pytest.mark.parametrize("J,gs", GROUPED)
def test_st_hard_matches_appendix(J, gs):
    z = torch.randn(16, J * gs, generator=torch.Generator().manual_seed(J))
    out = build_activation(f"st_hard:groups={J}")(z)
    assert torch.equal(out, ref_st(z, gs, J))
    assert (out == 0).any() and (out != 0).any()


@pytest.mark.parametrize("J,gs", GROUPED)
def test_st_soft_matches_eq10(J, gs):
    z = torch.randn(16, J * gs, generator=torch.Generator().manual_seed(J + 1))
    out = build_activation(f"st_soft:groups={J}")(z)
    torch.testing.assert_close(out, ref_st_soft(z, gs, J))
    # hand check of one group: unit i of group j is column i*J + j
    g0 = z[0, 0::J]
    lam = g0.abs().mean()
    expected = torch.sign(g0) * torch.clamp(g0.abs() - lam, min=0)
    torch.testing.assert_close(out[0, 0::J], expected)


@pytest.mark.parametrize("J,gs", GROUPED)
def test_gnc_matches_appendix(J, gs):
    z = torch.randn(16, J * gs, generator=torch.Generator().manual_seed(J + 2))
    out = build_activation(f"gnc:groups={J}")(z)
    torch.testing.assert_close(out, ref_gnc(z, gs, J))
    # interleaved groups have unit norm: columns j, j+J, j+2J, ...
    for j in range(J):
        torch.testing.assert_close(out[:, j::J].norm(dim=1), torch.ones(16))


@pytest.mark.parametrize("J,gs", GROUPED)
def test_chains_match_appendix_both_orders(J, gs):
    z = torch.randn(16, J * gs, generator=torch.Generator().manual_seed(J + 3))
    st_gnc = build_activation(f"st_hard:groups={J}>gnc:groups={J}")
    gnc_st = build_activation(f"gnc:groups={J}>st_hard:groups={J}")
    assert isinstance(st_gnc, ActivationChain)
    torch.testing.assert_close(st_gnc(z), ref_gnc(ref_st(z, gs, J), gs, J))
    torch.testing.assert_close(gnc_st(z), ref_st(ref_gnc(z, gs, J), gs, J))
    soft = build_activation(f"st_soft:groups={J}>gnc:groups={J}")
    torch.testing.assert_close(soft(z), ref_gnc(ref_st_soft(z, gs, J), gs, J))


@pytest.mark.parametrize("spec", ["st_hard:groups=4", "st_soft:groups=4", "gnc:groups=4",
                                  "st_hard:groups=4>gnc:groups=4"])
def test_gradients_match_reference(spec):
    refs = {
        "st_hard:groups=4": lambda z: ref_st(z, 3, 4),
        "st_soft:groups=4": lambda z: ref_st_soft(z, 3, 4),
        "gnc:groups=4": lambda z: ref_gnc(z, 3, 4),
        "st_hard:groups=4>gnc:groups=4": lambda z: ref_gnc(ref_st(z, 3, 4), 3, 4),
    }
    z = torch.randn(6, 12, generator=torch.Generator().manual_seed(0))
    up = torch.randn(6, 12, generator=torch.Generator().manual_seed(1))
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    (build_activation(spec)(z1) * up).sum().backward()
    (refs[spec](z2) * up).sum().backward()
    torch.testing.assert_close(z1.grad, z2.grad)


def test_st_hard_gradient_is_mask_times_upstream():
    z = torch.randn(8, 12, generator=torch.Generator().manual_seed(5), requires_grad=True)
    up = torch.randn(8, 12, generator=torch.Generator().manual_seed(6))
    m = build_activation("st_hard:groups=3")
    (m(z) * up).sum().backward()
    # independent mask: loop over units, group of unit i is i mod 3
    mask = torch.zeros(8, 12)
    for b in range(8):
        for i in range(12):
            members = [abs(float(z.detach()[b, u])) for u in range(12) if u % 3 == i % 3]
            mask[b, i] = float(abs(float(z.detach()[b, i])) >= sum(members) / len(members))
    assert torch.equal(z.grad, mask * up)
    assert torch.equal(m.active_mask(z), mask.bool())


def test_gnc_all_zero_group_is_safe():
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(7))
    z[:, 1::4] = 0.0  # group 1 of 4 is all zero (interleaved)
    z[0] = 0.0  # a whole zero sample
    z.requires_grad_()
    out = GNC(4)(z)
    assert torch.isfinite(out).all()
    assert torch.equal(out[:, 1::4], torch.zeros(3, 2))
    assert torch.equal(out[0], torch.zeros(8))
    out.sum().backward()
    assert torch.isfinite(z.grad).all()
    assert torch.equal(z.grad[:, 1::4], torch.zeros(3, 2))
    # the non-zero groups are untouched by the zero group
    torch.testing.assert_close(out[1:, 0::4], ref_gnc(z.detach()[1:], 2, 4)[:, 0::4])


# --------------------------------------------------------------------------- LWTA, maxout


@pytest.mark.parametrize("k", [2, 3, 4])
def test_lwta_matches_loop(k):
    x = torch.randn(7, 12, generator=torch.Generator().manual_seed(k))
    assert torch.equal(build_activation(f"lwta:block={k}")(x), loop_lwta(x, k))


@pytest.mark.parametrize("k", [2, 3, 4])
def test_maxout_matches_loop(k):
    x = torch.randn(7, 12, generator=torch.Generator().manual_seed(k))
    m = build_activation(f"maxout:block={k}")
    assert isinstance(m, Maxout) and m.block == k
    assert torch.equal(m(x), loop_maxout(x, k))
    assert m.out_width(12) == 12 // k


def test_ties_go_to_first_max():
    x = torch.tensor([[1.0, 1.0, 0.0, 2.0, 2.0, 2.0]])
    assert torch.equal(LWTA(3)(x), torch.tensor([[1.0, 0.0, 0.0, 2.0, 0.0, 0.0]]))
    assert torch.equal(LWTA(3).active_mask(x), torch.tensor([[1, 0, 0, 1, 0, 0]]).bool())
    assert torch.equal(Maxout(3).active_mask(x), torch.tensor([[1, 0, 0, 1, 0, 0]]).bool())


def test_lwta_and_maxout_gradient_flows_to_winner_only():
    x = torch.tensor([[0.5, -1.0, 3.0, 2.0]], requires_grad=True)
    LWTA(2)(x).sum().backward()
    assert torch.equal(x.grad, torch.tensor([[1.0, 0.0, 1.0, 0.0]]))
    x.grad = None
    Maxout(2)(x).sum().backward()
    assert torch.equal(x.grad, torch.tensor([[1.0, 0.0, 1.0, 0.0]]))


# --------------------------------------------------------------------------- conv = dense per position

PER_POSITION = ["relu", "identity", "lwta:block=2", "maxout:block=3", "st_hard:groups=4",
                "st_soft:groups=2", "gnc:groups=3", "ln", "st_hard:groups=4>gnc:groups=4",
                "gnc:groups=2>lwta:block=3", "maxout:block=2>st_hard:groups=2"]


@pytest.mark.parametrize("spec", PER_POSITION)
def test_conv_equals_dense_at_every_position(spec):
    x = torch.randn(3, 12, 4, 5, generator=torch.Generator().manual_seed(11))
    m = build_activation(spec)
    out = m(x)
    mask = m.active_mask(x)
    assert out.shape[1] == m.out_width(12) and mask.shape == x.shape
    for h in range(4):
        for w in range(5):
            torch.testing.assert_close(out[:, :, h, w], m(x[:, :, h, w]))
            assert torch.equal(mask[:, :, h, w], m.active_mask(x[:, :, h, w]))


# --------------------------------------------------------------------------- masks and widths


def test_active_masks():
    x = torch.tensor([[-1.0, 2.0, 0.0, 3.0]])
    assert build_activation("relu").active_mask(x).tolist() == [[False, True, False, True]]
    assert build_activation("identity").active_mask(x).all()
    # mean |x| per interleaved group of 2: group0 {-1, 0} -> .5, group1 {2, 3} -> 2.5
    assert SparseTransform(2).active_mask(x).tolist() == [[True, False, False, True]]
    # maxout:2 winners {2.0, 3.0}; then relu on the pooled outputs (2, 3) keeps both
    chain = build_activation("maxout:block=2>relu")
    assert chain.active_mask(x).tolist() == [[False, True, False, True]]
    # a pooled output killed downstream deactivates its winner too
    y = torch.tensor([[-1.0, -2.0, 0.0, 3.0]])
    assert chain.active_mask(y).tolist() == [[False, False, False, True]]


def test_out_width_composes():
    assert build_activation("maxout:block=2>maxout:block=3>gnc:groups=2").out_width(24) == 4
    for name in ["relu", "bn", "ln", "identity"]:
        assert build_activation(name).out_width(10) == 10


# --------------------------------------------------------------------------- normalizations


def test_bn_dense_and_conv_match_torch():
    torch.manual_seed(0)
    x2, x4 = torch.randn(8, 6), torch.randn(8, 6, 3, 3)
    bn = build_activation("bn")
    torch.testing.assert_close(bn(x2), nn.BatchNorm1d(6)(x2))
    bn4 = build_activation("bn")
    torch.testing.assert_close(bn4(x4), nn.BatchNorm2d(6)(x4))
    torch.testing.assert_close(bn4(x4), nn.BatchNorm2d(6)(x4))  # still works after sizing
    assert sum(p.numel() for p in bn4.parameters()) == 12


def test_gn_uses_interleaved_groups():
    x = torch.randn(4, 6, 2, 3, generator=torch.Generator().manual_seed(2))
    gn = build_activation("gn:groups=2")
    out = gn(x)
    ref = torch.empty_like(x)
    for b in range(4):
        for j in range(2):
            chans = [c for c in range(6) if c % 2 == j]
            v = x[b, chans]
            ref[b, chans] = (v - v.mean()) / torch.sqrt(v.var(unbiased=False) + 1e-5)
    torch.testing.assert_close(out, ref)
    assert [p.shape for p in gn.parameters()] == [torch.Size([6]), torch.Size([6])]


def test_ln_matches_torch():
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(build_activation("ln")(x), nn.LayerNorm(6)(x))


# --------------------------------------------------------------------------- bad specs


@pytest.mark.parametrize(
    "spec,needle",
    [
        ("relux", "did you mean 'relu'"),
        ("lwat:block=2", "did you mean 'lwta'"),
        ("lwta", "missing required key 'block'"),
        ("lwta:block=x", "block='x'"),
        ("lwta:block=0", "block=0"),
        ("lwta:block=-2", "block=-2"),
        ("lwta:block=2.5", "block='2.5'"),
        ("gnc:size=4", "unknown key 'size'"),
        ("relu:block=2", "unknown key 'block'"),
        ("relu>>bn", "empty part"),
        ("", "empty"),
        ("gnc:groups", "'groups' is not of the form"),
        ("relu>st_hrd:groups=2", "'st_hrd'"),
    ],
)
def test_bad_spec_names_bad_part(spec, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        build_activation(spec)


@pytest.mark.parametrize("spec", ["lwta:block=4", "maxout:block=4", "st_hard:groups=4",
                                  "gnc:groups=4", "gn:groups=4"])
def test_indivisible_width_names_both_numbers(spec):
    with pytest.raises(ValueError, match="width 10 .*4"):
        build_activation(spec)(torch.randn(2, 10))


def test_names_and_whitespace():
    assert set(ACTIVATION_NAMES) == {"relu", "lwta", "maxout", "st_hard", "st_soft", "gnc",
                                     "bn", "gn", "ln", "identity"}
    m = build_activation(" st_hard : groups = 2 > gnc:groups=2 ")
    assert isinstance(m[0], SparseTransform) and m[0].hard and m[0].groups == 2
    assert isinstance(m[1], GNC) and m[1].groups == 2
    assert not build_activation("st_soft:groups=3").hard


# --------------------------------------------------------------------------- mutation audit: ties, masks


def test_st_ties_at_the_threshold_by_hand():
    """Eq. 9 keeps ``|z| >= lambda_j`` (the appendix's code D.2 uses ``>=``), eq. 10 gives
    ``max(|z| - lambda_j, 0) = 0`` at ``|z| = lambda_j``. Row 0: interleaved group 0 is
    {1, -1, 1} (lambda = 1: every unit ties), group 1 is {2, 1, 3} (lambda = 2: unit 2 ties);
    row 1 is all zero. ``active_mask`` marks exactly the non-zero outputs.

    Mutations caught: ``>`` instead of ``>=`` in the hard forward; ``>`` in the hard mask and
    ``>=`` in the soft mask (ties wrongly inactive / active)."""
    z = torch.tensor([[1.0, 2.0, -1.0, 1.0, 1.0, 3.0], [0.0] * 6])
    hard, soft = SparseTransform(2, hard=True), SparseTransform(2, hard=False)
    assert hard(z).tolist() == [[1.0, 2.0, -1.0, 0.0, 1.0, 3.0], [0.0] * 6]
    assert torch.equal(hard(z), ref_st(z, 3, 2))
    assert soft(z).tolist() == [[0.0, 0.0, 0.0, 0.0, 0.0, 1.0], [0.0] * 6]
    assert hard.active_mask(z).tolist() == [[True, True, True, False, True, True], [False] * 6]
    assert soft.active_mask(z).tolist() == [[False, False, False, False, False, True], [False] * 6]
    for m in (hard, soft):
        assert torch.equal(m.active_mask(z), m(z) != 0)


def test_gnc_active_mask_is_the_non_zero_inputs():
    """GNC passes every non-zero input (its output is non-zero exactly there); zeros, and a whole
    zero group, are inactive.

    Mutation caught: an all-True GNC mask."""
    x = torch.tensor([[0.0, 1.0, -2.0, 0.0], [3.0, 0.0, 0.0, 0.0]])  # row 1: group 1 {0, 0} all zero
    m = GNC(2)
    assert m.active_mask(x).tolist() == [[False, True, True, False], [True, False, False, False]]
    assert torch.equal(m.active_mask(x), m(x) != 0)


def _loop_double_maxout_relu_mask(x):
    """maxout:2 > maxout:2 > relu by hand: input unit i passes when it wins its pair (first max),
    its pooled unit i // 2 wins the next pair, and the final output is > 0."""
    mask = torch.zeros_like(x, dtype=torch.bool)
    for b in range(x.shape[0]):
        v = [float(t) for t in x[b]]
        p = [max(v[2 * j], v[2 * j + 1]) for j in range(len(v) // 2)]
        q = [max(p[2 * j], p[2 * j + 1]) for j in range(len(p) // 2)]
        for i in range(len(v)):
            j, k = i // 2, i // 4
            wins1 = i == 2 * j + [v[2 * j], v[2 * j + 1]].index(p[j])
            wins2 = j == 2 * k + [p[2 * k], p[2 * k + 1]].index(q[k])
            mask[b, i] = wins1 and wins2 and q[k] > 0
    return mask


def test_chain_mask_lifts_through_two_maxouts():
    """A chain of two maxouts: the final stage's mask stands for ``2 * 2`` input units each, so the
    lift factor must multiply over the stages; checked against a loop over units.

    Mutation caught: the lift factor set to the last stage's block instead of multiplied."""
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(12))
    chain = build_activation("maxout:block=2>maxout:block=2>relu")
    want = _loop_double_maxout_relu_mask(x)
    assert want.any() and not want.all(dim=1).any()
    assert torch.equal(chain.active_mask(x), want)


@pytest.mark.parametrize("train", [True, False])
def test_chain_mask_leaves_batchnorm_statistics_alone(train):
    """``active_mask`` of a chain runs its stages to get each stage's input; on a chain holding
    ``bn`` that forward must not count as a batch: running mean, variance and batch count stay
    what they were, and the chain keeps its mode. The mask is the eval-mode one (running
    statistics, as the analysis records activations): the units whose ``bn > relu`` output is
    non-zero in eval mode.

    Bug caught: the mask's forward pass updated BatchNorm's running statistics (the representation
    monitor computes masks of probe inputs with the trunk back in training mode)."""
    chain = build_activation("bn>relu")
    chain(torch.randn(16, 6, generator=torch.Generator().manual_seed(0)))  # size the lazy BatchNorm
    chain.train(train)
    bn = chain[0]
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1)) * 3 + 1
    mask = chain.active_mask(x)
    assert chain.training == train
    for k, v in bn.state_dict().items():
        assert torch.equal(v, before[k]), k
    chain.eval()
    with torch.no_grad():
        out = chain(x)
    assert torch.equal(mask, out != 0) and mask.any() and not mask.all()


def test_chain_mask_before_the_first_forward_leaves_fresh_statistics():
    """A mask asked before any forward sizes the lazy BatchNorm but leaves its statistics fresh
    (mean 0, variance 1, no batch counted)."""
    chain = build_activation("bn>relu")
    chain.active_mask(torch.randn(8, 4, generator=torch.Generator().manual_seed(2)) + 5)
    bn = chain[0]
    assert torch.equal(bn.running_mean, torch.zeros(4)) and torch.equal(bn.running_var, torch.ones(4))
    assert int(bn.num_batches_tracked) == 0
