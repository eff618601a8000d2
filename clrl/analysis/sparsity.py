"""Hoyer sparsity (Hoyer 2004), as used by the forward-forward sparsity paper (eq. 4):

    S(h) = (sqrt(n) - |h|_1 / |h|_2) / (sqrt(n) - 1),

1 for a one-hot vector, 0 for a constant non-zero vector. Undefined for h = 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["hoyer_sparsity", "hoyer_per_sample"]


def hoyer_per_sample(h: Tensor) -> Tensor:
    """S of each row of ``h`` flattened to ``(B, n)``; NaN for all-zero rows."""
    h = h.detach().flatten(1).double()
    n = h.shape[1]
    if n < 2:
        raise ValueError(f"Hoyer sparsity needs n >= 2 units per sample, got {n}")
    l1 = h.abs().sum(dim=1)
    l2 = h.norm(dim=1)
    ratio = torch.where(l2 > 0, l1 / torch.where(l2 > 0, l2, torch.ones_like(l2)), torch.nan)
    return (math.sqrt(n) - ratio) / (math.sqrt(n) - 1)


def hoyer_sparsity(h: Tensor) -> float:
    """Mean S over the samples of ``h``, skipping all-zero rows (NaN if all rows are zero)."""
    s = hoyer_per_sample(h)
    s = s[~torch.isnan(s)]
    return s.mean().item() if s.numel() else float("nan")
