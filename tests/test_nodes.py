"""The node view: boundaries, incoming groups, initializer re-draws and mean activations."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clrl.layers.nodes import (
    NodeActivity,
    fresh_incoming,
    get_incoming,
    node_view,
    set_incoming,
    zero_outgoing,
)
from clrl.nets import MultiHead, atari_trunk, digits_trunk


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x)


def _small_cnn(act: str = "relu") -> nn.Sequential:
    """A tiny Atari-shaped trunk (fast): conv->conv->conv->flatten->linear."""
    return atari_trunk(channels=(4, 6, 4), hidden=8, activation=act)


def _capture(module: nn.Module, run) -> torch.Tensor:
    out = {}
    h = module.register_forward_hook(lambda m, a, o: out.__setitem__("y", o.detach().clone()))
    try:
        run()
    finally:
        h.remove()
    return out["y"]


def _perturb(layer, node: int) -> None:
    g = get_incoming(layer)
    g[node] = torch.randn(layer.group_size) * 5
    set_incoming(layer, g)


def _check_independent(trunk, heads, layer_idx: int, nodes: list[int], x: torch.Tensor, task=None) -> None:
    """Zeroing the nodes' outgoing slice makes what reads them independent of them; without the
    zeroing the same perturbation must change it (so the check can fail)."""
    layers = node_view(trunk)
    layer = layers[layer_idx]
    reader = layer.next_module if layer.next_module is not None else heads.heads[task]

    def run():
        f = trunk(x)
        if heads is not None:
            heads(f, task)

    torch.manual_seed(1)
    base = copy.deepcopy((trunk, heads))
    # control: the perturbation is visible without zeroing
    y0 = _capture(reader, run)
    for n in nodes:
        _perturb(layer, n)
    assert not torch.equal(_capture(reader, run), y0)
    # with the outgoing slice zeroed it is not
    trunk.load_state_dict(base[0].state_dict())
    if heads is not None:
        heads.load_state_dict(base[1].state_dict())
    mask = torch.zeros(layer.n_nodes, dtype=torch.bool)
    mask[nodes] = True
    zero_outgoing(layer, mask, heads=heads)
    y0 = _capture(reader, run)
    for n in nodes:
        _perturb(layer, n)
    torch.testing.assert_close(_capture(reader, run), y0, rtol=0, atol=0)


def test_conv_to_conv_boundary():
    trunk = _small_cnn()
    layers = node_view(trunk)
    assert layers[0].out_kind == "conv" and layers[1].out_kind == "conv"
    _check_independent(trunk, None, 0, [2], torch.rand(3, 4, 84, 84))
    _check_independent(trunk, None, 1, [0, 5], torch.rand(3, 4, 84, 84))


def test_conv_flatten_linear_boundary():
    trunk = _small_cnn()
    layer = node_view(trunk)[2]
    assert layer.out_kind == "flatten" and layer.spatial == 49
    _check_independent(trunk, None, 2, [1], torch.rand(3, 4, 84, 84))
    # the slice is the channel's H*W block of columns
    mask = torch.tensor([False, True, False, False])
    zero_outgoing(layer, mask)
    w = layer.next_module.weight
    assert torch.all(w[:, 49:98] == 0) and torch.all(w[:, :49] != 0) and torch.all(w[:, 98:] != 0)


def test_linear_to_linear_and_heads_boundaries():
    trunk = digits_trunk(hidden=(16, 12))
    heads = MultiHead(12)
    heads.add_head(0, 3)
    heads.add_head(5, 2)
    layers = node_view(trunk)
    assert [lay.out_kind for lay in layers] == ["linear", "heads"]
    x = torch.rand(7, 64)
    _check_independent(trunk, heads, 0, [3], x, task=0)
    _check_independent(trunk, heads, 1, [4, 7], x, task=5)
    # zero_outgoing on the last layer touches exactly the chosen heads' columns
    mask = torch.zeros(12, dtype=torch.bool)
    mask[2] = True
    zero_outgoing(layers[1], mask, heads=heads, tasks=[0])
    assert torch.all(heads.heads[0].weight[:, 2] == 0) and torch.all(heads.heads[5].weight[:, 2] != 0)


def test_maxout_k_to_one():
    trunk = _small_cnn("maxout:block=2")
    layers = node_view(trunk)
    assert [lay.block for lay in layers] == [2, 2, 2, 2] and [lay.post_width for lay in layers] == [2, 3, 2, 4]
    x = torch.rand(3, 4, 84, 84)
    _check_independent(trunk, None, 1, [2, 3], x)  # nodes 2, 3 form post unit 1 (conv -> conv)
    _check_independent(trunk, None, 2, [0, 1], x)  # conv -> flatten -> linear
    heads = MultiHead(4)
    heads.add_head(0, 3)
    _check_independent(trunk, heads, 3, [6, 7], x, task=0)  # into heads
    # one member alone does not free the shared column
    layer = layers[0]
    assert not layer.unit_mask(torch.tensor([True, False, False, False])).any()
    before = layer.next_module.weight.clone()
    zero_outgoing(layer, torch.tensor([True, False, False, False]))
    assert torch.equal(before, layer.next_module.weight)
    zero_outgoing(layer, torch.tensor([True, True, False, False]))
    assert torch.all(layer.next_module.weight[:, 0] == 0) and torch.all(layer.next_module.weight[:, 1] != 0)


def test_linear_maxout_boundary():
    trunk = digits_trunk(hidden=(12, 6), activation="maxout:block=3")
    assert [lay.post_width for lay in node_view(trunk)] == [4, 2]
    _check_independent(trunk, None, 0, [3, 4, 5], torch.rand(5, 64))


def test_incoming_groups_layout_and_roundtrip():
    trunk = _small_cnn()
    layer = node_view(trunk)[1]
    g = get_incoming(layer)
    assert g.shape == (6, 4 * 16 + 1)
    torch.testing.assert_close(g[4], torch.cat([layer.module.weight[4].flatten(), layer.module.bias[4:5]]), rtol=0, atol=0)
    new = torch.randn_like(g)
    set_incoming(layer, new[[1, 3]], rows=torch.tensor([1, 3]))
    g2 = get_incoming(layer)
    torch.testing.assert_close(g2[[1, 3]], new[[1, 3]], rtol=0, atol=0)
    torch.testing.assert_close(g2[[0, 2, 4, 5]], g[[0, 2, 4, 5]], rtol=0, atol=0)
    g2[0, 0] = 123.0  # a copy, not a view
    assert layer.module.weight[0, 0, 0, 0] != 123.0


def test_fresh_incoming_is_pytorch_default_init():
    for module in (nn.Conv2d(3, 5, 3), nn.Linear(7, 4)):
        layer = node_view(nn.Sequential(module))[0]
        torch.manual_seed(11)
        ref = copy.deepcopy(module)
        ref.reset_parameters()
        expected = get_incoming(node_view(nn.Sequential(ref))[0])
        got = fresh_incoming(layer, torch.Generator().manual_seed(11))
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def _omega_by_hand_linear(x, w, b, block):
    pre = (x @ w.T + b).numpy()  # (B, N)
    out = np.zeros(pre.shape[1])
    for s in range(pre.shape[0]):
        for u in range(pre.shape[1] // block):
            vals = pre[s, u * block : (u + 1) * block]
            win = int(np.argmax(vals))
            y = vals[win] if block > 1 else max(vals[0], 0.0)
            out[u * block + win] += abs(y)
    return out / pre.shape[0]


def test_activity_relu_and_maxout_linear():
    torch.manual_seed(0)
    for act, block in (("relu", 1), ("maxout:block=2", 2)):
        trunk = digits_trunk(hidden=(8, 6), activation=act)
        layers = node_view(trunk)
        x1, x2 = torch.randn(5, 64), torch.randn(4, 64)
        with NodeActivity(layers) as rec, torch.no_grad():
            trunk(x1)
            trunk(x2)
        x = torch.cat([x1, x2])
        l0 = layers[0].module
        expected0 = _omega_by_hand_linear(x, l0.weight.detach(), l0.bias.detach(), block)
        np.testing.assert_allclose(rec.mean()[0].numpy(), expected0, rtol=1e-5, atol=1e-6)
        h = trunk[1](l0(x)).detach()
        l1 = layers[1].module
        expected1 = _omega_by_hand_linear(h, l1.weight.detach(), l1.bias.detach(), block)
        np.testing.assert_allclose(rec.mean()[1].numpy(), expected1, rtol=1e-5, atol=1e-6)
        assert rec.count == 9


def test_activity_conv_mean_over_samples_and_positions():
    torch.manual_seed(0)
    trunk = _small_cnn()
    layers = node_view(trunk)
    x = torch.rand(3, 4, 84, 84)
    with NodeActivity(layers) as rec, torch.no_grad():
        trunk(x)
    c0 = layers[0].module
    a = F.relu(F.conv2d(x, c0.weight, c0.bias, stride=4))  # (3, 4, 20, 20)
    expected = a.permute(1, 0, 2, 3).reshape(4, -1).mean(dim=1)
    torch.testing.assert_close(rec.mean()[0], expected, rtol=1e-5, atol=1e-6)
    # hooks are gone after the with block
    with torch.no_grad():
        trunk(x)
    torch.testing.assert_close(rec.mean()[0], expected, rtol=1e-5, atol=1e-6)


def test_plain_sequential_with_pools_dropout_nested():
    net = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.1)),
        nn.Conv2d(4, 5, 3, padding=1),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(5 * 2 * 2, 7),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(7, 3),
    )
    layers = node_view(net)
    assert [(lay.name, lay.out_kind, lay.spatial) for lay in layers] == [
        ("0.0", "conv", 1),
        ("1", "flatten", 4),
        ("5", "linear", 1),
        ("8", "heads", 1),
    ]
    assert layers[0].post_name == "0.1" and layers[3].post is layers[3].module  # no activation: the layer itself
    net.eval()
    _check_independent(net, None, 1, [2], torch.rand(2, 3, 8, 8))


@pytest.mark.parametrize(
    "net, match",
    [
        (nn.Sequential(nn.Conv2d(4, 4, 3), _Residual()), "_Residual"),
        (nn.Sequential(nn.Linear(4, 4), nn.Conv2d(4, 4, 1)), "Conv2d '1' after"),
        (nn.Sequential(nn.Conv2d(4, 4, 3), nn.Linear(4, 4)), "without nn.Flatten"),
        (nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), "grouped conv '0'"),
        (nn.Sequential(nn.Linear(4, 4), nn.Conv1d(4, 4, 1)), "Conv1d"),
        (nn.Sequential(nn.Linear(4, 5), nn.Linear(4, 3)), "expects 4 inputs"),
    ],
)
def test_unsupported_structures_name_the_module(net, match):
    with pytest.raises(ValueError, match=match):
        node_view(net)


def test_shared_activation_module_is_rejected():
    relu = nn.ReLU()
    with pytest.raises(ValueError, match="used twice"):
        node_view(nn.Sequential(nn.Linear(3, 3), relu, nn.Linear(3, 3), relu))
