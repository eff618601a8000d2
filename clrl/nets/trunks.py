"""Feature trunks: the Nature/AGS-CL Atari CNN, the AGS-CL CIFAR CNN, the single-pass CIFAR
net of the GNC paper and a small MLP for 8x8 digits.

Every trunk is a flat :class:`Trunk` (an ``nn.Sequential``) of Conv2d/Linear layers, activation
modules from :func:`clrl.layers.build_activation`, pooling, dropout and one ``nn.Flatten``, so
:func:`clrl.layers.nodes.node_view` can list its nodes. ``activation`` is one spec for every
Conv/Linear layer or a sequence with one spec per layer; a width-changing activation (maxout)
shrinks the next layer's input. Layers keep PyTorch's default init, which
:func:`clrl.layers.nodes.fresh_incoming` re-draws for AGS-CL's re-initialization (I.2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from clrl.layers import build_activation

__all__ = ["Trunk", "atari_trunk", "cifar_trunk", "single_pass_trunk", "digits_trunk"]

ActivationArg = str | Sequence[str]


class Trunk(nn.Sequential):
    """A plain sequential feature extractor.

    Attributes: ``out_features`` (the width the heads see), ``input_shape`` (one sample's shape,
    e.g. ``(4, 84, 84)``) and ``activations`` (the spec used after each Conv/Linear layer).
    """

    def __init__(
        self,
        *modules: nn.Module,
        out_features: int,
        input_shape: tuple[int, ...],
        activations: Sequence[str] = (),
    ) -> None:
        super().__init__(*modules)
        self.out_features = int(out_features)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.activations = list(activations)

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, out_features={self.out_features}"


def _specs(activation: ActivationArg, n_layers: int) -> list[str]:
    """One spec per Conv/Linear layer."""
    if isinstance(activation, str):
        return [activation] * n_layers
    specs = list(activation)
    if len(specs) != n_layers:
        raise ValueError(
            f"activation has {len(specs)} specs but the trunk has {n_layers} Conv/Linear layers; "
            "give one spec string for all layers or exactly one per layer"
        )
    for s in specs:
        if not isinstance(s, str):
            raise ValueError(f"activation specs must be strings, got {s!r}")
    return specs


def _width_after(act: nn.Module, width: int) -> int:
    return int(act.out_width(width)) if hasattr(act, "out_width") else width


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    out = (size + 2 * padding - kernel) // stride + 1
    if out <= 0:
        raise ValueError(f"input of size {size} is too small for kernel {kernel} stride {stride}")
    return out


def _finish(modules: list[nn.Module], out_features: int, input_shape: tuple[int, ...], specs: list[str]) -> Trunk:
    """Build the Trunk and size lazy modules (bn/gn/ln) with one dummy eval-mode forward."""
    trunk = Trunk(*modules, out_features=out_features, input_shape=input_shape, activations=specs)
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in trunk.parameters()):
        trunk.eval()
        with torch.no_grad():
            trunk(torch.zeros(2, *input_shape))
        trunk.train()
    return trunk


def _conv_stack(
    in_channels: int,
    size: int,
    convs: Sequence[tuple[int, int, int, int]],
    specs: list[str],
    pool_every: int = 0,
    dropout: float = 0.0,
) -> tuple[list[nn.Module], int, int]:
    """Conv -> activation (-> maxpool -> dropout every ``pool_every`` convs).

    ``convs`` holds ``(out_channels, kernel, stride, padding)``. Returns modules, channel width
    after the last activation and the spatial size."""
    modules: list[nn.Module] = []
    width = in_channels
    for i, ((out_ch, k, s, p), spec) in enumerate(zip(convs, specs, strict=True)):
        modules.append(nn.Conv2d(width, out_ch, kernel_size=k, stride=s, padding=p))
        act = build_activation(spec)
        modules.append(act)
        width = _width_after(act, out_ch)
        size = _conv_out(size, k, s, p)
        if pool_every and (i + 1) % pool_every == 0:
            modules.append(nn.MaxPool2d(2))
            size //= 2
            if dropout > 0:
                modules.append(nn.Dropout(dropout))
    return modules, width, size


def _linear_stack(in_features: int, hidden: Sequence[int], specs: list[str], dropout: float = 0.0) -> tuple[list[nn.Module], int]:
    modules: list[nn.Module] = []
    width = in_features
    for h, spec in zip(hidden, specs, strict=True):
        modules.append(nn.Linear(width, int(h)))
        act = build_activation(spec)
        modules.append(act)
        width = _width_after(act, int(h))
        if dropout > 0:
            modules.append(nn.Dropout(dropout))
    return modules, width


def atari_trunk(
    channels: Sequence[int] = (32, 64, 64),
    hidden: int = 512,
    activation: ActivationArg = "relu",
    in_channels: int = 4,
) -> Trunk:
    """Nature CNN: conv 8x8/4, 4x4/2, 3x3/1 -> flatten -> Linear(hidden).

    Input ``(B, in_channels, 84, 84)`` scaled to [0, 1]. The AGS-CL code's net is
    ``channels=(128, 256, 128)``. ``activation``: one spec or four (conv1-3, fc)."""
    if len(channels) != 3:
        raise ValueError(f"atari_trunk needs 3 conv channel counts, got {tuple(channels)}")
    specs = _specs(activation, 4)
    convs = [(int(channels[0]), 8, 4, 0), (int(channels[1]), 4, 2, 0), (int(channels[2]), 3, 1, 0)]
    modules, width, size = _conv_stack(int(in_channels), 84, convs, specs[:3])
    modules.append(nn.Flatten())
    fc, out = _linear_stack(width * size * size, [int(hidden)], specs[3:])
    return _finish(modules + fc, out, (int(in_channels), 84, 84), specs)


def cifar_trunk(activation: ActivationArg = "relu", dropout: bool = True) -> Trunk:
    """AGS-CL's CIFAR net: 6 conv 3x3 pad 1 (32-32-64-64-128-128), maxpool 2 after every second
    conv, dropout .25 after each pool -> Linear(256) with dropout .5. Input ``(B, 3, 32, 32)``.
    ``activation``: one spec or seven (six convs, fc)."""
    specs = _specs(activation, 7)
    convs = [(c, 3, 1, 1) for c in (32, 32, 64, 64, 128, 128)]
    modules, width, size = _conv_stack(3, 32, convs, specs[:6], pool_every=2, dropout=0.25 if dropout else 0.0)
    modules.append(nn.Flatten())
    fc, out = _linear_stack(width * size * size, [256], specs[6:], dropout=0.5 if dropout else 0.0)
    return _finish(modules + fc, out, (3, 32, 32), specs)


def single_pass_trunk(activation: ActivationArg = "relu") -> Trunk:
    """The single-pass CIFAR-100 net of the GNC paper: three 3x3 stride-2 pad-1 convs of 160
    channels -> Linear(320) -> Linear(320). Input ``(B, 3, 32, 32)``. ``activation``: one spec or
    five (three convs, two fc), e.g. ``["relu"] * 4 + ["st_hard:groups=32>gnc:groups=32"]``."""
    specs = _specs(activation, 5)
    convs = [(160, 3, 2, 1)] * 3
    modules, width, size = _conv_stack(3, 32, convs, specs[:3])
    modules.append(nn.Flatten())
    fc, out = _linear_stack(width * size * size, [320, 320], specs[3:])
    return _finish(modules + fc, out, (3, 32, 32), specs)


def digits_trunk(hidden: Sequence[int] = (64, 64), activation: ActivationArg = "relu", in_features: int = 64) -> Trunk:
    """A small MLP for sklearn's 8x8 digits: input ``(B, 64)`` -> Linear/activation per entry of
    ``hidden``."""
    hidden = [int(h) for h in hidden]
    if not hidden:
        raise ValueError("digits_trunk needs at least one hidden layer")
    specs = _specs(activation, len(hidden))
    modules, out = _linear_stack(int(in_features), hidden, specs)
    return _finish(modules, out, (int(in_features),), specs)
