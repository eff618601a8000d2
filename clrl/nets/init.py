"""Weight initialization schemes for the actor-critic: PyTorch's default or PPO's orthogonal.

``orthogonal`` is the scheme of openai baselines' ppo2, CleanRL and stable-baselines3's
``ortho_init`` (Engstrom et al. 2020 and Huang et al. 2022 list it among PPO's implementation
details that matter on Atari): every Conv2d/Linear weight is drawn by ``nn.init.orthogonal_``
(Saxe et al. 2014) with a gain of sqrt(2) in the trunk (ReLU), 0.01 in the policy heads (near
uniform first policy) and 1 in the value heads; biases are zero. ``orthogonal_`` flattens a
conv weight to ``(out, in * kh * kw)``, so for a weight ``W`` of that shape ``W W^T = gain^2 I``
when ``out <= in * kh * kw`` (rows orthonormal) and ``W^T W = gain^2 I`` otherwise.

``default`` keeps PyTorch's ``reset_parameters`` (kaiming-uniform, a=sqrt(5)), which is what the
AGS-CL authors' a2c-ppo-acktr code uses for its Atari network.

A module initialized orthogonally also carries ``clrl_init`` (see
:func:`clrl.layers.nodes.fresh_incoming`), so AGS-CL's re-initialization of unimportant nodes
(I.2) draws fresh weights from the same scheme the network started with.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = [
    "INIT_SCHEMES", "TRUNK_GAIN", "POLICY_GAIN", "VALUE_GAIN", "check_scheme", "orthogonal_fill", "orthogonal_init_",
]

InitScheme = Literal["orthogonal", "default"]
INIT_SCHEMES: tuple[str, ...] = ("orthogonal", "default")
TRUNK_GAIN = math.sqrt(2.0)
POLICY_GAIN = 0.01
VALUE_GAIN = 1.0


def orthogonal_fill(weight: Tensor, bias: Tensor | None, generator: torch.Generator | None = None, *, gain: float) -> None:
    """Fill ``weight`` orthogonally with ``gain`` and ``bias`` with zeros, in place."""
    nn.init.orthogonal_(weight, gain=gain, generator=generator)
    if bias is not None:
        nn.init.zeros_(bias)


def orthogonal_init_(module: nn.Module, gain: float) -> nn.Module:
    """Orthogonal weights (``gain``) and zero biases for every Conv2d/Linear inside ``module``."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Conv2d | nn.Linear):
                fill = partial(orthogonal_fill, gain=float(gain))
                fill(layer.weight, layer.bias)
                layer.clrl_init = fill  # AGS-CL re-initialization draws from the same scheme
    return module


def check_scheme(init: str) -> str:
    if init not in INIT_SCHEMES:
        raise ValueError(f"unknown init scheme {init!r}; allowed: {', '.join(INIT_SCHEMES)}")
    return init
