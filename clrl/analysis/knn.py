"""k-nearest-neighbour classification on submasks (Hamming) or activations (Euclidean), as in
Srivastava et al. 2015, sec. 3.3 / Table 1.

Ties are broken deterministically: equal distances by the lower training index, equal votes by
the class whose nearest member ranks first.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["pairwise_distance", "knn_predict", "knn_accuracy"]


def _as_tensor(a: Tensor | np.ndarray) -> Tensor:
    return a if isinstance(a, Tensor) else torch.as_tensor(np.asarray(a))


def pairwise_distance(a: Tensor, b: Tensor, metric: str = "hamming") -> Tensor:
    """``(len(a), len(b))`` distances between rows (features flattened)."""
    a, b = a.flatten(1), b.flatten(1)
    if metric == "hamming":
        a, b = (a != 0).double(), (b != 0).double()
        # |a xor b| = |a| + |b| - 2 a.b, exact in float64 for any realistic width
        return a.sum(1, keepdim=True) + b.sum(1)[None, :] - 2.0 * a @ b.T
    if metric == "euclidean":
        return torch.cdist(a.double(), b.double())
    raise ValueError(f"unknown metric {metric!r}; use 'hamming' or 'euclidean'")


def knn_predict(
    train_feats: Tensor | np.ndarray,
    train_y: Tensor | np.ndarray,
    test_feats: Tensor | np.ndarray,
    k: int = 1,
    metric: str = "hamming",
    chunk: int = 1024,
) -> Tensor:
    """Majority label among the ``k`` nearest training rows of each test row."""
    xtr, xte = _as_tensor(train_feats), _as_tensor(test_feats)
    ytr = _as_tensor(train_y).reshape(-1)
    if xtr.shape[0] != ytr.shape[0]:
        raise ValueError(f"{xtr.shape[0]} training rows but {ytr.shape[0]} labels")
    if not 1 <= k <= xtr.shape[0]:
        raise ValueError(f"k={k} must be in [1, {xtr.shape[0]}]")
    classes, y_idx = torch.unique(ytr, return_inverse=True)
    n_cls = classes.numel()
    preds = []
    for i in range(0, xte.shape[0], chunk):
        d = pairwise_distance(xte[i : i + chunk], xtr, metric)
        nn_idx = torch.sort(d, dim=1, stable=True).indices[:, :k]
        labels = y_idx[nn_idx]  # (q, k), in rank order
        q = labels.shape[0]
        counts = torch.zeros(q, n_cls, dtype=torch.long).scatter_add_(1, labels, torch.ones_like(labels))
        ranks = torch.arange(k).expand(q, k)
        first = torch.full((q, n_cls), k, dtype=torch.long).scatter_reduce_(1, labels, ranks, "amin")
        score = counts * (k + 1) + (k - first)  # votes first, then the earliest-ranked class
        preds.append(classes[score.argmax(dim=1)])
    return torch.cat(preds)


def knn_accuracy(
    train_feats: Tensor | np.ndarray,
    train_y: Tensor | np.ndarray,
    test_feats: Tensor | np.ndarray,
    test_y: Tensor | np.ndarray,
    k: int = 1,
    metric: str = "hamming",
) -> float:
    """Share of test rows whose kNN label equals ``test_y``."""
    pred = knn_predict(train_feats, train_y, test_feats, k=k, metric=metric)
    return (pred == _as_tensor(test_y).reshape(-1)).double().mean().item()
