"""Locally competitive activations and the normalizations they are chained with.

Every module here works on dense features ``(B, N)`` and on conv maps ``(B, C, *spatial)``;
on conv maps the competition runs over channels at each spatial position. Each module has

* ``out_width(in_width)``: the feature/channel width it outputs (maxout divides by its block,
  all others keep it), and
* ``active_mask(x_in)``: a bool tensor shaped like the module's *input* that marks the units
  which pass signal for that input (the "submask" of Srivastava et al. 2015, sec. 3).

Two layouts of units are used, as in the papers:

* LWTA and maxout compete in **contiguous** blocks of ``k`` units: units ``[j*k, (j+1)*k)``.
* sT and GNC (and ``gn``) use **interleaved** groups: unit ``i`` is in group ``i mod J``. This is
  the reshape ``(B, group_size, num_groups)`` of the GNC appendix, section D.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

__all__ = [
    "ReLU",
    "Identity",
    "LWTA",
    "Maxout",
    "SparseTransform",
    "GNC",
    "BatchNorm",
    "GroupNorm",
    "LayerNorm",
]


# ----------------------------------------------------------------------------- helpers


def _flat_channels(x: Tensor) -> tuple[Tensor, torch.Size | None]:
    """View ``(B, C, *spatial)`` as ``(B * prod(spatial), C)``; ``(B, N)`` is returned as is."""
    if x.dim() < 2:
        raise ValueError(f"expected input of shape (B, N) or (B, C, ...), got {tuple(x.shape)}")
    if x.dim() == 2:
        return x, None
    y = x.movedim(1, -1)
    return y.reshape(-1, y.shape[-1]), y.shape


def _unflat_channels(y: Tensor, shape: torch.Size | None) -> Tensor:
    """Inverse of :func:`_flat_channels`; the channel width of ``y`` may differ (maxout)."""
    if shape is None:
        return y
    return y.reshape(*shape[:-1], y.shape[-1]).movedim(-1, 1)


def _check_divisible(width: int, k: int, what: str) -> None:
    if width % k != 0:
        raise ValueError(f"width {width} is not divisible by {what} {k}")


class _Activation(nn.Module):
    """Mixin defaults: width preserved, every unit active."""

    def out_width(self, in_width: int) -> int:
        return in_width

    def active_mask(self, x_in: Tensor) -> Tensor:
        return torch.ones_like(x_in, dtype=torch.bool)


# ----------------------------------------------------------------------------- ReLU, identity


class ReLU(nn.ReLU):
    """torch's ReLU plus the activation API; a unit is active when its input is > 0."""

    def out_width(self, in_width: int) -> int:
        return in_width

    def active_mask(self, x_in: Tensor) -> Tensor:
        return x_in > 0


class Identity(_Activation):
    """No-op; every unit passes (its mask is all True)."""

    def forward(self, x: Tensor) -> Tensor:
        return x


# ----------------------------------------------------------------------------- LWTA, maxout


class LWTA(_Activation):
    """Local winner-take-all (Srivastava et al. 2013/2015): in each contiguous block of ``block``
    units only the largest passes, the others output 0. Ties go to the first maximum
    (``torch.argmax``), so the result is deterministic. Gradient flows to the winner only."""

    def __init__(self, block: int) -> None:
        super().__init__()
        self.block = int(block)

    def extra_repr(self) -> str:
        return f"block={self.block}"

    def _winners(self, x: Tensor) -> Tensor:
        flat, shape = _flat_channels(x)
        _check_divisible(flat.shape[1], self.block, "block")
        blocks = flat.reshape(flat.shape[0], -1, self.block)
        win = F.one_hot(blocks.argmax(dim=-1), self.block).bool()
        return _unflat_channels(win.reshape(flat.shape), shape)

    def forward(self, x: Tensor) -> Tensor:
        return x * self._winners(x.detach())

    def active_mask(self, x_in: Tensor) -> Tensor:
        return self._winners(x_in.detach())


class Maxout(_Activation):
    """Maxout (Goodfellow et al. 2013): each contiguous block of ``block`` units outputs its
    maximum, so the width is divided by ``block``. The submask marks the winning unit
    (first maximum on ties), as in Srivastava et al. 2015, sec. 3.1."""

    def __init__(self, block: int) -> None:
        super().__init__()
        self.block = int(block)

    def extra_repr(self) -> str:
        return f"block={self.block}"

    def out_width(self, in_width: int) -> int:
        _check_divisible(in_width, self.block, "block")
        return in_width // self.block

    def forward(self, x: Tensor) -> Tensor:
        flat, shape = _flat_channels(x)
        _check_divisible(flat.shape[1], self.block, "block")
        blocks = flat.reshape(flat.shape[0], -1, self.block)
        idx = blocks.detach().argmax(dim=-1, keepdim=True)
        return _unflat_channels(blocks.gather(-1, idx).squeeze(-1), shape)

    def active_mask(self, x_in: Tensor) -> Tensor:
        flat, shape = _flat_channels(x_in.detach())
        _check_divisible(flat.shape[1], self.block, "block")
        blocks = flat.reshape(flat.shape[0], -1, self.block)
        win = F.one_hot(blocks.argmax(dim=-1), self.block).bool()
        return _unflat_channels(win.reshape(flat.shape), shape)


# ----------------------------------------------------------------------------- sT and GNC


def _grouped(flat: Tensor, groups: int) -> Tensor:
    """``(M, C) -> (M, C // J, J)``: unit i lands in group ``i mod J`` (GNC appendix, D)."""
    _check_divisible(flat.shape[1], groups, "groups")
    return flat.reshape(flat.shape[0], -1, groups)


class SparseTransform(_Activation):
    """Sparse-coding transform sT (GNC appendix, B.2, eqs. 9-10).

    The threshold of group j is the mean magnitude of its units, lambda_j = mean_i |z_j,i|, and
    is a constant in backprop (detached, as in the appendix's code D.2).

    * hard (eq. 9): keep z where |z| >= lambda_j, else 0; the gradient is mask * upstream.
    * soft (eq. 10): sign(z) * max(|z| - lambda_j, 0).

    A unit is active when its output is non-zero.
    """

    def __init__(self, groups: int, hard: bool = True) -> None:
        super().__init__()
        self.groups = int(groups)
        self.hard = bool(hard)

    def extra_repr(self) -> str:
        return f"groups={self.groups}, hard={self.hard}"

    def _threshold(self, g: Tensor) -> Tensor:
        return g.detach().abs().mean(dim=1, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        flat, shape = _flat_channels(x)
        g = _grouped(flat, self.groups)
        t = self._threshold(g)
        if self.hard:
            out = g * (g.detach().abs() >= t)
        else:
            out = torch.sign(g) * torch.clamp(g.abs() - t, min=0.0)
        return _unflat_channels(out.reshape(flat.shape), shape)

    def active_mask(self, x_in: Tensor) -> Tensor:
        flat, shape = _flat_channels(x_in.detach())
        g = _grouped(flat, self.groups)
        t = self._threshold(g)
        keep = (g.abs() >= t) if self.hard else (g.abs() > t)
        keep = keep & (g != 0)
        return _unflat_channels(keep.reshape(flat.shape), shape)


class GNC(_Activation):
    """Group-wise neuron normalization (GNC appendix, eq. 7 and code D.1): each interleaved group
    is divided by its L2 norm.

    An all-zero group (e.g. after ReLU or sT) has no direction; it outputs 0 and gets a zero
    gradient instead of the 1/eps blow-up of ``F.normalize``. For any non-zero group the result
    equals ``F.normalize(., dim=group)``. A unit is active when its input is non-zero.
    """

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = int(groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"

    def forward(self, x: Tensor) -> Tensor:
        flat, shape = _flat_channels(x)
        g = _grouped(flat, self.groups)
        sq = (g * g).sum(dim=1, keepdim=True)
        nonzero = sq > 0
        # where() on both sides keeps sqrt and 1/norm away from 0, so no inf * 0 in backward.
        norm = torch.sqrt(torch.where(nonzero, sq, torch.ones_like(sq)))
        scale = torch.where(nonzero, 1.0 / norm, torch.zeros_like(norm))
        out = g * scale
        return _unflat_channels(out.reshape(flat.shape), shape)

    def active_mask(self, x_in: Tensor) -> Tensor:
        _check_divisible(x_in.shape[1], self.groups, "groups")
        return x_in != 0


# ----------------------------------------------------------------------------- normalizations


class BatchNorm(nn.LazyBatchNorm1d, _Activation):
    """BatchNorm over features of ``(B, N)`` or channels of ``(B, C, *spatial)``, sized on the
    first forward (run one dummy batch before building the optimizer)."""

    cls_to_become = None  # stay this class after sizing, so 4-D inputs keep working

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected (B, N) or (B, C, ...) input, got {tuple(input.shape)}")


class _LazyAffine(LazyModuleMixin, _Activation):
    """Per-channel affine weight/bias, sized on the first forward."""

    cls_to_become = None

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = float(eps)
        self.weight = UninitializedParameter()
        self.bias = UninitializedParameter()

    def reset_parameters(self) -> None:
        if not self.has_uninitialized_params():
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def initialize_parameters(self, x: Tensor) -> None:  # called by LazyModuleMixin
        if self.has_uninitialized_params():
            with torch.no_grad():
                self.weight.materialize((x.shape[1],), dtype=x.dtype, device=x.device)
                self.bias.materialize((x.shape[1],), dtype=x.dtype, device=x.device)
                self.reset_parameters()

    def _affine(self, y: Tensor) -> Tensor:
        view = (1, -1) + (1,) * (y.dim() - 2)
        return y * self.weight.view(view) + self.bias.view(view)


class GroupNorm(_LazyAffine):
    """GroupNorm (Wu & He 2018) with interleaved groups (unit i in group i mod J, like GNC):
    statistics over the group's channels and all spatial positions, then a per-channel affine."""

    def __init__(self, groups: int, eps: float = 1e-5) -> None:
        super().__init__(eps)
        self.groups = int(groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}, eps={self.eps}"

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[0], x.shape[1]
        _check_divisible(c, self.groups, "groups")
        spatial = x.shape[2:]
        # (B, C//J, J, *sp) -> (B, J, C//J, *sp): torch's contiguous groups = our interleaved ones
        perm = x.reshape(b, c // self.groups, self.groups, *spatial).transpose(1, 2)
        y = F.group_norm(perm.reshape(b, c, *spatial), self.groups, eps=self.eps)
        y = y.reshape(b, self.groups, c // self.groups, *spatial).transpose(1, 2).reshape(x.shape)
        return self._affine(y)


class LayerNorm(_LazyAffine):
    """LayerNorm over the features of ``(B, N)``; on ``(B, C, *spatial)`` over the channels at
    each position separately (the "channels-first" LayerNorm), then a per-channel affine."""

    def forward(self, x: Tensor) -> Tensor:
        flat, shape = _flat_channels(x)
        y = F.layer_norm(flat, (flat.shape[1],), self.weight, self.bias, self.eps)
        return _unflat_channels(y, shape)
