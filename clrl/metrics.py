"""Every continual-learning score as a pure function of result matrices.

``R[i][j]`` is the score on task j after training task i (0-based, T x T, NaN where not
evaluated). Definitions follow the README's "Metrics":

- ``acc`` (RA) = mean_j R[T-1][j];  ``learning_acc`` (LA) = mean_j R[j][j]
- ``bti`` = mean over all T tasks of (R[T-1][j] - R[j][j]) = RA - LA (GEM code convention)
- ``bwt`` = mean over j < T-1 of (R[T-1][j] - R[j][j]) (GEM paper: divides by T-1)
- ``fwt`` = mean over j >= 1 of (R[j-1][j] - b[j])
- ``forgetting`` (Chaudhry et al.) = mean over j < T-1 of max_{l in [j, T-2]} R[l][j] - R[T-1][j]
- ``plasticity`` P = mean_i R[i][i] / A*_i (AGS-CL paper, Sec. 4.1, Analysis 3)
- ``stability`` S = mean_j R[T-1][j] / max_{i in [j, T-1]} R[i][j] (AGS-CL paper, Sec. 4.1, Analysis 3)

``bootstrap_ci`` is the seeded 95% percentile-bootstrap interval of a mean (Efron &
Tibshirani 1993, ch. 13), used for the scores of one evaluation's games.

NaN propagates: a score that needs an entry that was not evaluated is NaN. A ratio with a
zero or negative denominator is NaN, never an exception or an infinity. An average over no
terms (BWT with one task) is NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "as_matrix",
    "acc",
    "acc_after_each_task",
    "learning_acc",
    "bti",
    "bwt",
    "fwt",
    "forgetting",
    "forgetting_per_task",
    "plasticity",
    "plasticity_per_task",
    "stability",
    "stability_per_task",
    "normalize",
    "reference_max",
    "curve_matrix",
    "accumulated_normalized_reward",
    "summary",
    "bootstrap_ci",
]


def as_matrix(R: ArrayLike) -> np.ndarray:
    """A square float matrix with NaN for missing entries (``None`` is accepted)."""
    arr = _float_array(R)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"R must be a square T x T matrix, got shape {arr.shape}")
    return arr


def _float_array(x: ArrayLike) -> np.ndarray:
    """A float array from nested lists that may hold ``None`` (JSON's null)."""
    if isinstance(x, np.ndarray):
        return x.astype(float)
    return np.array([[np.nan if v is None else v for v in row] for row in x], dtype=float)


def _mean(values: np.ndarray) -> float:
    """Mean that is NaN on an empty input or any NaN, without warnings."""
    values = np.asarray(values, dtype=float)
    if values.size == 0 or np.isnan(values).any():
        return float("nan")
    return float(values.mean())


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, NaN where den <= 0 or either side is NaN."""
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    ok = np.isfinite(num) & np.isfinite(den) & (den > 0)
    np.divide(num, den, out=out, where=ok)
    return out


def acc(R: ArrayLike) -> float:
    """Average accuracy / return after the last task (RA, ACC)."""
    R = as_matrix(R)
    return _mean(R[-1])


def acc_after_each_task(R: ArrayLike) -> list[float]:
    """Average over tasks 0..i of R[i][j], for every i (the ACC curve over the sequence)."""
    R = as_matrix(R)
    return [_mean(R[i, : i + 1]) for i in range(len(R))]


def learning_acc(R: ArrayLike) -> float:
    """Mean score on each task right after learning it (LA)."""
    return _mean(np.diag(as_matrix(R)))


def bti(R: ArrayLike) -> float:
    """Backward transfer and interference over all T tasks (= RA - LA)."""
    R = as_matrix(R)
    return _mean(R[-1] - np.diag(R))


def bwt(R: ArrayLike) -> float:
    """Backward transfer over the first T-1 tasks (the last task cannot be forgotten yet)."""
    R = as_matrix(R)
    T = len(R)
    return _mean(R[-1, : T - 1] - np.diag(R)[: T - 1])


def fwt(R: ArrayLike, b: ArrayLike) -> float:
    """Forward transfer: R[j-1][j] - b[j] over j >= 1, ``b`` the random-init scores."""
    R = as_matrix(R)
    b = np.asarray(b, dtype=float)
    T = len(R)
    if b.shape != (T,):
        raise ValueError(f"b must have one score per task ({T}), got shape {b.shape}")
    return _mean(np.array([R[j - 1, j] - b[j] for j in range(1, T)]))


def forgetting(R: ArrayLike) -> float:
    """Chaudhry et al.'s forgetting: best earlier score (rows j..T-2) minus the final one."""
    R = as_matrix(R)
    T = len(R)
    terms = []
    for j in range(T - 1):
        past = R[j : T - 1, j]
        best = np.nan if np.isnan(past).any() else past.max()
        terms.append(best - R[T - 1, j])
    return _mean(np.array(terms))


def forgetting_per_task(R: ArrayLike) -> np.ndarray:
    """The terms of :func:`forgetting`, one per task but the last: best score on task j in rows
    j..T-2 minus the final one (NaN where a needed entry is missing)."""
    R = as_matrix(R)
    T = len(R)
    out = np.full(max(T - 1, 0), np.nan)
    for j in range(T - 1):
        past = R[j : T - 1, j]
        if not np.isnan(past).any():
            out[j] = past.max() - R[T - 1, j]
    return out


def plasticity_per_task(R: ArrayLike, ref_diag: ArrayLike) -> np.ndarray:
    """R[i][i] / A*_i per task, A*_i the fine-tuning score on task i right after learning it."""
    R = as_matrix(R)
    ref = np.asarray(ref_diag, dtype=float)
    if ref.shape != (len(R),):
        raise ValueError(f"ref_diag must have one score per task ({len(R)}), got shape {ref.shape}")
    return _ratio(np.diag(R), ref)


def plasticity(R: ArrayLike, ref_diag: ArrayLike) -> float:
    """Plasticity P (AGS-CL Sec. 4.1, Analysis 3): mean of :func:`plasticity_per_task`."""
    return _mean(plasticity_per_task(R, ref_diag))


def stability_per_task(R: ArrayLike) -> np.ndarray:
    """R[T-1][j] / max over i in [j, T-1] of R[i][j], per task j."""
    R = as_matrix(R)
    T = len(R)
    best = np.array([np.nan if np.isnan(R[j:, j]).any() else R[j:, j].max() for j in range(T)])
    return _ratio(R[-1], best)


def stability(R: ArrayLike) -> float:
    """Stability S (AGS-CL Sec. 4.1, Analysis 3): mean of :func:`stability_per_task`."""
    return _mean(stability_per_task(R))


def normalize(R_or_curve: ArrayLike, ref_max: ArrayLike) -> np.ndarray:
    """Column j divided by ``ref_max[j]``; NaN in columns whose reference is <= 0 or NaN."""
    arr = _float_array(R_or_curve)
    ref = np.asarray(ref_max, dtype=float)
    if arr.ndim != 2 or arr.shape[1] != ref.shape[0]:
        raise ValueError(f"need a 2-D array with {ref.shape[0]} columns, got shape {arr.shape}")
    return _ratio(arr, ref[None, :])


def curve_matrix(curve_scores: Sequence[Sequence[float | None]], n_tasks: int) -> np.ndarray:
    """Evaluation points as a (points x tasks) matrix, NaN for tasks not seen yet.

    ``curve_scores[p]`` lists the scores of the tasks seen at point p (tasks 0..k). Scores of
    tasks beyond ``n_tasks`` are left out (a reference run may have more tasks than the run).
    """
    out = np.full((len(curve_scores), n_tasks), np.nan)
    for p, scores in enumerate(curve_scores):
        for k, v in enumerate(list(scores)[:n_tasks]):
            out[p, k] = np.nan if v is None else v
    return out


def seen_mask(curve_scores: Sequence[Sequence[float | None]], n_tasks: int) -> np.ndarray:
    """(points x tasks) bool: task k is seen at point p when the point lists a score for it
    (its entry may still be missing: None/NaN)."""
    out = np.zeros((len(curve_scores), n_tasks), dtype=bool)
    for p, scores in enumerate(curve_scores):
        out[p, : min(len(scores), n_tasks)] = True
    return out


def reference_max(curve_scores: Sequence[Sequence[float | None]], n_tasks: int) -> np.ndarray:
    """Per task, the best score of a (fine-tuning) run over all its evaluation points.

    The AGS-CL paper normalizes each game's score by this maximum (Sec. 4.2, Fig. 7a).
    NaN for a task the reference never evaluated.
    """
    m = curve_matrix(curve_scores, n_tasks)
    out = np.full(n_tasks, np.nan)
    for k in range(n_tasks):
        col = m[:, k][~np.isnan(m[:, k])]
        if col.size:
            out[k] = col.max()
    return out


def accumulated_normalized_reward(
    curve_scores: Sequence[Sequence[float | None]], ref_max: ArrayLike
) -> np.ndarray:
    """For each evaluation point, the sum over seen tasks k of score_k / ref_max_k.

    Values above 1 per task are normal (the reference's max is over its own points only).
    A point is NaN if any seen task has no positive reference maximum or no score (a seen
    task's missing score must not count as 0).
    """
    ref = np.asarray(ref_max, dtype=float)
    m = curve_matrix(curve_scores, len(ref))
    seen = seen_mask(curve_scores, len(ref))
    ratios = _ratio(np.where(seen, m, 0.0), np.broadcast_to(ref, m.shape))
    bad = seen & (np.isnan(ratios) | np.isnan(m))
    total = np.where(seen, ratios, 0.0).sum(axis=1)
    total[bad.any(axis=1)] = np.nan
    return total


def summary(R: ArrayLike, ref_diag: ArrayLike | None = None, b: ArrayLike | None = None) -> dict[str, float]:
    """The standard table row for one run (plain floats, NaN where undefined)."""
    R = as_matrix(R)
    row = {
        "acc": acc(R),
        "learning_acc": learning_acc(R),
        "bti": bti(R),
        "bwt": bwt(R),
        "forgetting": forgetting(R),
        "stability": stability(R),
    }
    row["plasticity"] = plasticity(R, ref_diag) if ref_diag is not None else float("nan")
    row["fwt"] = fwt(R, b) if b is not None else float("nan")
    return row


def bootstrap_ci(
    values: ArrayLike, seed: int = 0, reps: int = 10_000, size: float = 0.95
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``values`` (non-finite entries, NaN and ±inf, left out).

    Resample the n finite values with replacement ``reps`` times, take each resample's mean,
    and return the ``(1 - size) / 2`` and ``(1 + size) / 2`` percentiles of those means
    (Efron & Tibshirani 1993, eq. 13.5). Seeded (numpy's PCG64 from ``seed``), so a results file
    is reproducible. One value (or all equal) gives ``(x, x)``; no finite value ``(nan, nan)``.
    Why a bootstrap: a handful of game scores is far from normal and often skewed, and the
    percentile interval needs no such assumption.
    """
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    if not 0.0 < size < 1.0:
        raise ValueError(f"size must lie in (0, 1), got {size}")
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    if np.all(v == v[0]):
        return float(v[0]), float(v[0])
    rng = np.random.default_rng(seed)
    means = np.empty(reps)
    chunk = max(1, 2_000_000 // v.size)  # bounded memory for long lists of games
    for start in range(0, reps, chunk):
        k = min(chunk, reps - start)
        means[start : start + k] = v[rng.integers(0, v.size, size=(k, v.size))].mean(axis=1)
    tail = (1.0 - size) / 2.0 * 100.0
    lo, hi = np.percentile(means, [tail, 100.0 - tail])
    return float(lo), float(hi)
