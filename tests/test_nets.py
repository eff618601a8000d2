"""Output shapes, widths under width-changing activations, and the MultiHead API."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clrl.nets import MultiHead, Trunk, atari_trunk, cifar_trunk, digits_trunk, single_pass_trunk


def _layers(trunk: nn.Module) -> list[nn.Module]:
    return [m for m in trunk if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_atari_trunk_shapes_and_size():
    trunk = atari_trunk()
    assert isinstance(trunk, Trunk) and isinstance(trunk, nn.Sequential)
    assert trunk(torch.rand(3, 4, 84, 84)).shape == (3, 512)
    assert trunk.out_features == 512 and trunk.input_shape == (4, 84, 84)
    # Nature CNN: 32*4*64+32 + 64*32*16+64 + 64*64*9+64 + 3136*512+512 parameters (7x7 maps)
    expected = (32 * 4 * 64 + 32) + (64 * 32 * 16 + 64) + (64 * 64 * 9 + 64) + (64 * 7 * 7 * 512 + 512)
    assert sum(p.numel() for p in trunk.parameters()) == expected
    wide = atari_trunk(channels=(128, 256, 128), hidden=512)
    assert _layers(wide)[3].in_features == 128 * 7 * 7


def test_atari_trunk_maxout_resizes_next_layers():
    trunk = atari_trunk(channels=(32, 64, 64), hidden=512, activation="maxout:block=2")
    convs = _layers(trunk)
    assert [c.in_channels for c in convs[1:3]] == [16, 32]
    assert convs[3].in_features == 32 * 7 * 7
    assert trunk.out_features == 256
    assert trunk(torch.rand(2, 4, 84, 84)).shape == (2, 256)


def test_cifar_trunk_structure():
    trunk = cifar_trunk()
    assert trunk(torch.rand(2, 3, 32, 32)).shape == (2, 256)
    convs = _layers(trunk)
    assert [c.out_channels for c in convs[:6]] == [32, 32, 64, 64, 128, 128]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs[:6])
    assert convs[6].in_features == 128 * 4 * 4
    assert sum(isinstance(m, nn.MaxPool2d) for m in trunk) == 3
    drops = [m.p for m in trunk if isinstance(m, nn.Dropout)]
    assert drops == [0.25, 0.25, 0.25, 0.5]
    assert not any(isinstance(m, nn.Dropout) for m in cifar_trunk(dropout=False))


def test_single_pass_trunk_per_layer_activation():
    spec = "st_hard:groups=32>gnc:groups=32"
    trunk = single_pass_trunk(["relu"] * 4 + [spec])
    assert trunk(torch.rand(2, 3, 32, 32)).shape == (2, 320)
    convs = _layers(trunk)
    assert [c.out_channels for c in convs[:3]] == [160] * 3 and all(c.stride == (2, 2) for c in convs[:3])
    assert convs[3].in_features == 160 * 4 * 4 and convs[4].in_features == 320
    assert trunk.activations[-1] == spec
    # GNC at the last layer: each interleaved group of 10 units has unit norm (or is all zero)
    out = trunk(torch.rand(4, 3, 32, 32)).reshape(4, 10, 32)
    norms = out.norm(dim=1)
    assert torch.all((norms == 0) | ((norms - 1).abs() < 1e-5)) and (norms > 0).any()


def test_digits_trunk_and_lazy_norms():
    trunk = digits_trunk(hidden=(32, 16))
    assert trunk(torch.rand(5, 64)).shape == (5, 16) and trunk.out_features == 16
    bn = digits_trunk(activation="bn>relu")  # lazy BatchNorm gets sized at construction
    assert not any(isinstance(p, nn.parameter.UninitializedParameter) for p in bn.parameters())
    assert bn.training


def test_bad_activation_lists():
    with pytest.raises(ValueError, match="one per layer"):
        atari_trunk(activation=["relu", "relu"])
    with pytest.raises(ValueError):
        digits_trunk(activation="nope")


def test_multihead():
    heads = MultiHead(8)
    heads.add_head(3, 5)
    heads.add_head(-1, 2)
    assert heads.n_heads == 2 and heads.tasks == [3, -1]
    assert isinstance(heads.heads[3], nn.Linear) and heads.heads[3].out_features == 5
    x = torch.randn(4, 8)
    assert heads(x, 3).shape == (4, 5) and heads(x, -1).shape == (4, 2)
    torch.testing.assert_close(heads(x, 3), heads.heads[3](x))
    assert 3 in heads and 7 not in heads
    with pytest.raises(ValueError):
        heads.add_head(3, 5)
    with pytest.raises(KeyError):
        heads(x, 7)
    assert [p.shape for p in heads.parameters_of(-1)] == [(2, 8), (2,)]
    other = MultiHead(8)
    other.load_state_dict(heads.state_dict())  # creates the heads it needs
    assert other.tasks == [3, -1]
    torch.testing.assert_close(other(x, -1), heads(x, -1))
