"""Aggregation across seeds: mean ± sample std, and the IQM with a 95% stratified-bootstrap CI.

The IQM (25% trimmed mean over all runs x tasks entries) and its percentile stratified-
bootstrap confidence interval follow Agarwal et al. 2021 ("Deep RL at the edge of the
statistical precipice") through their library, rliable: the runs are resampled with
replacement within each task (stratum), the IQM is recomputed on each resample, and the
2.5% / 97.5% percentiles bound the interval.

rliable 1.2 imports ``arch.bootstrap``; arch 7.x cannot be imported under pandas 3 (its
``arch.univariate`` package fails at import time, which ``arch/__init__`` runs first), although
``arch.bootstrap`` itself does not need it. :func:`load_rliable` therefore retries with the
``arch`` package registered without running its ``__init__``; if rliable still cannot be
imported, :func:`iqm_ci` uses clrl's own vectorized stratified bootstrap (same definition)
and says so in its ``method`` field. Installing arch >= 8 removes the need for either.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np
from scipy.stats import trim_mean

__all__ = ["Aggregate", "mean_std", "iqm", "iqm_ci", "load_rliable", "aggregate"]

_RLIABLE: tuple[ModuleType | None, str] | None = None


@dataclass(frozen=True)
class Aggregate:
    """One metric of one method over its seeds."""

    mean: float
    std: float
    n: int  # runs with a finite value (the mean and std are over these)
    iqm: float = float("nan")
    lo: float = float("nan")
    hi: float = float("nan")
    ci_method: str = ""


def mean_std(values: np.ndarray | list[float]) -> tuple[float, float, int]:
    """Mean and sample standard deviation (ddof=1) over the finite values, and their count.

    NaN (a metric a run could not compute, e.g. P without a reference) is left out rather than
    poisoning the mean; the count says how many runs it is over. Std is NaN below two values.
    """
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), 0
    std = float(v.std(ddof=1)) if v.size >= 2 else float("nan")
    return float(v.mean()), std, int(v.size)


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% of all entries (scipy's 25% trim_mean)."""
    return float(trim_mean(np.asarray(scores, dtype=float), proportiontocut=0.25, axis=None))


def load_rliable() -> tuple[ModuleType | None, str]:
    """``(rliable.library or None, how it was loaded or why not)``; cached per process."""
    global _RLIABLE
    if _RLIABLE is not None:
        return _RLIABLE
    try:
        from rliable import library

        _RLIABLE = (library, "rliable")
        return _RLIABLE
    except Exception as exc:  # noqa: BLE001 - any import failure means "not usable here"
        # pyproject pins pandas<3 so that rliable's arch<8 imports; if an environment breaks that
        # anyway, say so in the report and use the equivalent bootstrap below (tested to agree).
        _RLIABLE = (None, f"clrl stratified bootstrap (rliable unavailable: {type(exc).__name__}: {exc})")
    return _RLIABLE


def _bootstrap_fallback(scores: np.ndarray, reps: int, seed: int, size: float) -> tuple[float, float]:
    """Percentile stratified bootstrap of the IQM: runs resampled independently within each task."""
    rng = np.random.default_rng(seed)
    n, m = scores.shape
    stats = np.empty(reps)
    cols = np.arange(m)[None, :]
    for start in range(0, reps, 1024):  # chunks keep memory flat for large reps
        k = min(1024, reps - start)
        idx = rng.integers(0, n, size=(k, n, m))
        sample = scores[idx, cols[None]]  # (k, n, m)
        stats[start : start + k] = trim_mean(sample.reshape(k, -1), proportiontocut=0.25, axis=1)
    tail = (1 - size) / 2 * 100
    lo, hi = np.percentile(stats, [tail, 100 - tail])
    return float(lo), float(hi)


def iqm_ci(
    scores: np.ndarray, reps: int = 2000, seed: int = 0, size: float = 0.95, use_rliable: bool = True
) -> tuple[float, float, float, str]:
    """``(iqm, lo, hi, method)`` for a runs x tasks score matrix (a 1-D array is runs x 1).

    NaN everywhere if the matrix holds a NaN or has fewer than 3 runs (a bootstrap over one or
    two seeds says nothing). Seeded: the same scores and seed give the same interval.
    """
    s = np.asarray(scores, dtype=float)
    if s.ndim == 1:
        s = s[:, None]
    if s.ndim != 2 or s.shape[0] < 3 or s.shape[1] == 0 or not np.isfinite(s).all():
        return float("nan"), float("nan"), float("nan"), ""
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    point = iqm(s)
    library, how = load_rliable() if use_rliable else (None, "clrl stratified bootstrap")
    if library is None:
        lo, hi = _bootstrap_fallback(s, reps, seed, size)
        return point, lo, hi, how
    # rliable's StratifiedBootstrap draws its indices from numpy's global RNG: seed it here and
    # restore the caller's state afterwards so a report never changes anyone else's stream.
    saved = np.random.get_state()
    try:
        np.random.seed(seed % 2**32)
        _, intervals = library.get_interval_estimates(
            {"m": s},
            lambda x: np.array([iqm(x)]),
            reps=reps,
            confidence_interval_size=size,
        )
    finally:
        np.random.set_state(saved)
    lo, hi = (float(v) for v in np.asarray(intervals["m"]).ravel()[:2])
    return point, lo, hi, how


def aggregate(
    per_run: list[float], per_task: np.ndarray | None = None, reps: int = 2000, seed: int = 0
) -> Aggregate:
    """Mean ± std of one metric over runs, plus IQM and CI from its runs x tasks terms.

    ``per_task[r]`` holds the per-task terms whose mean is run r's metric (e.g. R[T-1][j] for
    ACC), so the IQM is the robust counterpart of the same mean; a scalar-only metric passes
    ``per_task=None`` and is bootstrapped over runs alone.
    """
    mean, std, n = mean_std(per_run)
    scores = np.asarray(per_run, dtype=float)[:, None] if per_task is None else per_task
    point, lo, hi, how = iqm_ci(scores, reps=reps, seed=seed) if len(per_run) >= 3 else (
        float("nan"), float("nan"), float("nan"), "")
    return Aggregate(mean, std, n, point, lo, hi, how)
