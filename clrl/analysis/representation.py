"""Measures of a representation on a fixed set of inputs: effective rank, dormant units, drift
and the overlap of the units different tasks use.

Conventions shared with :mod:`clrl.analysis.submasks`: a layer's activations are ``(N, U)`` or,
for conv layers, ``(N, C, *spatial)``; a *unit* is an index along dim 1 (a conv channel), and its
statistics pool samples and positions. Competitive layers decide winners per position over
channels (:mod:`clrl.layers.competitive`); the masks they return already encode that, so the
functions here only aggregate.

* :func:`effective_rank`: srank of Kumar et al. 2021 (sec. 3), ``min{k : sum_{i<=k} s_i /
  sum_i s_i >= 1 - delta}`` over the singular values ``s`` of the ``(N, d)`` feature matrix.
* :func:`dormant_share`: ReDo's tau-dormant units (Sokar et al. 2023, def. 3.1): unit i is
  dormant when ``E|h_i| / ((1/U) sum_k E|h_k|) <= tau``; ``tau = 0`` counts the units that are
  exactly silent. With ``mask`` (the submask), ``h`` is the activity of *active* units only: for
  LWTA and maxout "active" means winning, so a unit that never wins is dormant however large its
  pre-activation.
* :func:`drift`: the submask flip rate of the same inputs between two moments (Srivastava et al.
  2015, Fig. 4, applied across tasks): 0 means the same subnetwork serves them.
* :func:`feature_change`: ``||F_now - F_ref||_F / ||F_ref||_F``.
* :func:`jaccard` / :func:`overlap_matrix`: ``|A & B| / |A | B|`` of the sets of units tasks use.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "effective_rank",
    "singular_values",
    "unit_scores",
    "dormant_units",
    "dormant_share",
    "unit_activity",
    "unit_flip_rate",
    "drift",
    "feature_change",
    "jaccard",
    "overlap_matrix",
    "jaccard_matrix",
]


def _units_view(x: Tensor) -> Tensor:
    """``(N, U)`` or ``(N, C, *spatial)`` -> ``(U, N * positions)``."""
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"expected activations of shape (N, U) or (N, C, ...) with N > 0, got {tuple(x.shape)}")
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def singular_values(features: Tensor) -> Tensor:
    """Singular values (float64, descending) of ``features`` flattened to ``(N, d)``."""
    f = torch.as_tensor(features).detach().flatten(1).double()
    return torch.linalg.svdvals(f)


def effective_rank(features: Tensor, delta: float = 0.01) -> int:
    """srank_delta of ``features`` ``(N, d)`` (Kumar et al. 2021, sec. 3): the fewest leading
    singular values holding ``1 - delta`` of their sum. 0 for an all-zero matrix."""
    if not 0.0 <= float(delta) < 1.0:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    s = singular_values(features)
    cum = torch.cumsum(s, 0)
    total = cum[-1] if cum.numel() else torch.tensor(0.0, dtype=torch.float64)
    if not bool(total > 0):
        return 0
    return int(torch.searchsorted(cum, (1.0 - float(delta)) * total).item()) + 1


def unit_scores(activations: Tensor, mask: Tensor | None = None) -> Tensor:
    """``E|h_i|`` per unit over samples (and positions), float64; ``h = activations * mask``."""
    a = activations.detach().double().abs()
    if mask is not None:
        if mask.shape != activations.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} differs from activations {tuple(activations.shape)}")
        a = a * mask.to(a.device).bool()
    return _units_view(a).mean(dim=1)


def dormant_units(activations: Tensor, tau: float, mask: Tensor | None = None) -> Tensor:
    """Bool per unit: tau-dormant (ReDo def. 3.1). All units are dormant when all are silent."""
    if float(tau) < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    score = unit_scores(activations, mask)
    mean = score.mean()
    if not bool(mean > 0):
        return torch.ones_like(score, dtype=torch.bool)
    return score / mean <= float(tau)


def dormant_share(activations: Tensor, tau: float, mask: Tensor | None = None) -> float:
    """Share of tau-dormant units of a layer over a batch of inputs (see :func:`dormant_units`)."""
    return dormant_units(activations, tau, mask).double().mean().item()


def unit_activity(activation: nn.Module, pre: Tensor, out: Tensor, mask: Tensor) -> Tensor:
    """What each input-side unit passes on, zero where the submask says it is not active.

    Width-preserving activations: their output restricted to active units (ReLU: the ReLU
    output; LWTA: the winner's value, losers 0; sT: the kept values). Width-changing ones
    (maxout, alone or chained): each block's output, placed on its active unit (the channel
    blocks are contiguous, :class:`clrl.layers.competitive.Maxout`). For a bare maxout that is
    the winner's pre-activation; in a chain such as ``maxout>gnc`` it is the value after the
    whole chain, what the next layer reads."""
    if out.shape == pre.shape:
        return out * mask
    block = pre.shape[1] // out.shape[1]
    return out.repeat_interleave(block, dim=1) * mask


def unit_flip_rate(mask_a: Tensor, mask_b: Tensor) -> Tensor:
    """Per unit, the share of (sample, position) entries whose activity flipped; float64."""
    if mask_a.shape != mask_b.shape:
        raise ValueError(f"mask shapes differ: {tuple(mask_a.shape)} vs {tuple(mask_b.shape)}")
    return _units_view(mask_a.bool() != mask_b.bool()).double().mean(dim=1)


def drift(mask_ref: Tensor, mask_now: Tensor, units: Tensor | None = None) -> float | None:
    """Submask flip rate between two snapshots of the same inputs, over all units or only the
    units where ``units`` (bool, one per unit) is True; None when that selects no unit."""
    per_unit = unit_flip_rate(mask_ref, mask_now)
    if units is not None:
        units = torch.as_tensor(units, dtype=torch.bool, device=per_unit.device)
        if units.shape != per_unit.shape:
            raise ValueError(f"units must have shape {tuple(per_unit.shape)}, got {tuple(units.shape)}")
        if not bool(units.any()):
            return None
        per_unit = per_unit[units]
    return per_unit.mean().item()


def feature_change(ref: Tensor, now: Tensor) -> float:
    """Relative Frobenius change ``||now - ref|| / ||ref||``; NaN when ``ref`` is all zero."""
    if ref.shape != now.shape:
        raise ValueError(f"feature shapes differ: {tuple(ref.shape)} vs {tuple(now.shape)}")
    r, n = ref.detach().double(), now.detach().double()
    denom = torch.linalg.vector_norm(r)
    if not bool(denom > 0):
        return float("nan")
    return (torch.linalg.vector_norm(n - r) / denom).item()


def jaccard(a: Tensor, b: Tensor) -> float:
    """``|a & b| / |a | b|`` of two bool unit sets; NaN when both are empty."""
    a, b = torch.as_tensor(a).bool(), torch.as_tensor(b).bool()
    if a.shape != b.shape:
        raise ValueError(f"unit sets differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    union = (a | b).sum().item()
    return float("nan") if union == 0 else (a & b).sum().item() / union


def overlap_matrix(used: Sequence[Tensor]) -> list[list[float]]:
    """Symmetric matrix of :func:`jaccard` between every pair of unit sets (diagonal 1 unless empty)."""
    return [[jaccard(a, b) for b in used] for a in used]


def jaccard_matrix(used: Tensor) -> list[list[float]]:
    """:func:`overlap_matrix` of the rows of a bool ``(sets, units)`` tensor, by one product:
    ``|a & b| = a . b`` and ``|a | b| = |a| + |b| - a . b``."""
    u = torch.as_tensor(used).bool().double()
    inter = u @ u.T
    size = u.sum(1)
    union = size[:, None] + size[None, :] - inter
    return torch.where(union > 0, inter / torch.where(union > 0, union, torch.ones_like(union)), torch.nan).tolist()
