"""Per-run numbers for the report, recomputed from R, curves, reference and diagnostics.

Stored ``results.metrics`` are not trusted: every metric is recomputed with
:mod:`clrl.metrics` (definitions in the README's "Metrics"; P and S are AGS-CL
Sec. 4.1's, Analysis 3). :func:`per_task_terms` splits each metric into the per-task terms whose mean it
is, so the IQM across runs x tasks is the robust counterpart of the same mean.

What is read from ``results.diagnostics`` (one dict per finished task, written by the
runner from ``reg.diagnostics()`` and ``reg.memory_bytes()``), tolerating absence:

- memory: ``memory_bytes`` (else ``memory``) of the last finished task's dict, as
  ``reg.memory_bytes()`` gives it: a dict of byte counts (``importance``, ``anchor``, ...) whose
  sum (or ``total``) is the total and whose ``importance`` is what AGS-CL Fig. 6a compares; a
  plain number is a total. A fine-tuning run with neither stores nothing: 0 bytes. Otherwise
  NaN (unknown).
- sparsity / used capacity (AGS-CL Sec. 5.1, Analysis 2: |G0|/|G| and the share of nodes that
  did not move, the paper's literal figure) / important_unmoved (important *and* unmoved): the key
  itself when it is a number, else under ``overall`` (or ``total``/``all``), else NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clrl import metrics
from clrl.report.runs import RunRecord

METRIC_KEYS = ("acc", "learning_acc", "bti", "bwt", "forgetting", "plasticity", "stability", "fwt", "norm_reward")
OVERALL_KEYS = ("overall", "total", "all")


def _floats(values: list[Any] | None, T: int) -> np.ndarray | None:
    """A length-T float array (None -> NaN, padded/truncated), or None when there is no list."""
    if values is None:
        return None
    out = np.full(T, np.nan)
    for i, v in enumerate(values[:T]):
        out[i] = np.nan if v is None else float(v)
    return out


def prefix_R(run: RunRecord) -> np.ndarray:
    """R of a complete run, or of its finished tasks only (metrics "after task d")."""
    R = run.res.R_matrix()
    if run.complete:
        return R
    d = max(run.done, 1)
    return R[:d, :d]


def per_task_terms(
    R: np.ndarray, ref_diag: np.ndarray | None = None, b: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """For each metric, the per-task terms whose mean is the metric (see clrl.metrics)."""
    R = metrics.as_matrix(R)
    T = len(R)
    diag = np.diag(R)
    last = R[-1]
    forget = np.array(
        [(np.nan if np.isnan(R[j : T - 1, j]).any() else R[j : T - 1, j].max()) - R[T - 1, j] for j in range(T - 1)]
    )
    terms = {
        "acc": last.copy(),
        "learning_acc": diag.copy(),
        "bti": last - diag,
        "bwt": (last - diag)[: T - 1],
        "forgetting": forget,
        "stability": metrics.stability_per_task(R),
    }
    if ref_diag is not None:
        terms["plasticity"] = metrics.plasticity_per_task(R, ref_diag[:T])
    if b is not None:
        terms["fwt"] = np.array([R[j - 1, j] - b[j] for j in range(1, T)])
    return terms


def reference_arrays(run: RunRecord) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(A*_i diagonal, per-task max score) of the run's reference, or (None, None)."""
    ref = run.reference
    if ref is None:
        return None, None
    return _floats(ref.diag, run.T), _floats(ref.max_scores, run.T)


def curve(run: RunRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, task index, points x T scores with NaN for unseen tasks) of the run's eval curve."""
    pts = run.res.curves
    steps = np.array([p.step for p in pts], dtype=float)
    tasks = np.array([p.task for p in pts], dtype=int)
    return steps, tasks, metrics.curve_matrix([p.scores for p in pts], run.T)


def curve_interval(run: RunRecord, seed: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """(low, high), points x T, of the 95% bootstrap CI of each curve score over its games.

    Recomputed from the per-game scores (``games`` of each curve point) with
    :func:`clrl.metrics.bootstrap_ci`, so it is the interval results.json stores (same seed);
    NaN where a point has no games; None when the run kept none (older and supervised runs).
    """
    pts = run.res.curves
    if not any(p.games for p in pts):
        return None
    lo = np.full((len(pts), run.T), np.nan)
    hi = np.full((len(pts), run.T), np.nan)
    for k, p in enumerate(pts):
        for j, games in enumerate((p.games or [])[: run.T]):
            lo[k, j], hi[k, j] = metrics.bootstrap_ci([g.score for g in games], seed=seed)
    return lo, hi


def normalized_reward_curve(run: RunRecord) -> np.ndarray | None:
    """AGS-CL Fig. 7a: per eval point, sum over seen tasks of score / reference max; None without a reference."""
    _, ref_max = reference_arrays(run)
    if ref_max is None:
        return None
    return metrics.accumulated_normalized_reward([p.scores for p in run.res.curves], ref_max)


def run_metrics(run: RunRecord) -> dict[str, float]:
    """Every table metric of one run, recomputed (on the finished prefix for a partial run)."""
    R = prefix_R(run)
    T = len(R)
    ref_diag, _ = reference_arrays(run)
    b = _floats(run.res.baseline, run.T)
    row = metrics.summary(R, ref_diag=None if ref_diag is None else ref_diag[:T], b=None if b is None else b[:T])
    out = {k: float(row.get(k, np.nan)) for k in METRIC_KEYS if k != "norm_reward"}
    nr = normalized_reward_curve(run)
    # the last point over the same finished tasks as the other metrics: a partial run's later
    # points include the task it was still training
    last = [k for k, p in enumerate(run.res.curves) if run.complete or (p.task == T - 1 and run.done >= T)]
    out["norm_reward"] = float(nr[last[-1]]) if nr is not None and last else float("nan")
    out["memory_importance_bytes"], out["memory_bytes"] = memory(run)
    return out


def stored_mismatches(run: RunRecord, recomputed: dict[str, float], rtol: float = 1e-6) -> list[str]:
    """Stored metrics that disagree with the recomputed ones (a bug or a hand-edited file)."""
    if not run.complete:
        return []
    out = []
    keys = ["acc", "bti", "bwt", "forgetting", "stability", "plasticity", "fwt"]
    if run.reference is not run.res.reference:  # P against another reference (--reference, self) than the stored one
        keys.remove("plasticity")
    for key in keys:
        stored = run.res.metrics.get(key)
        new = recomputed.get(key, np.nan)
        if isinstance(stored, (int, float)) and np.isfinite(new):
            if abs(float(stored) - new) > rtol * (1 + abs(new)):
                out.append(f"{run.path}: stored metrics.{key} = {stored:.6g} but R gives {new:.6g}; using {new:.6g}")
    return out


# --------------------------------------------------------------------------- diagnostics


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)) and np.isfinite(v):
        return float(v)
    return None


def _bytes_of(v: Any) -> tuple[float | None, float | None]:
    """(importance bytes, total bytes) from a memory entry: a number is a total; a dict is summed."""
    n = _number(v)
    if n is not None:
        return None, n
    if isinstance(v, dict):
        if not v:
            return 0.0, 0.0
        imp = _number(v.get("importance"))
        total = _number(v.get("total"))
        if total is None:
            parts = [p for p in (_number(x) for k, x in v.items() if k != "total") if p is not None]
            total = float(sum(parts)) if parts else None
        return imp, total
    return None, None


def memory(run: RunRecord) -> tuple[float, float]:
    """(importance, total) bytes of regularizer state after the last finished task.

    Importance is what AGS-CL Fig. 6a compares (the regularization parameters: Omega per node
    vs. a value per weight); total adds the anchor copy of the parameters. NaN when unknown;
    0 for a fine-tuning run that records nothing (it keeps no state).
    """
    last = next((d for d in reversed(run.res.diagnostics) if isinstance(d, dict)), None)
    if last is not None:
        for key in ("memory_bytes", "memory"):
            if key in last:
                imp, total = _bytes_of(last[key])
                if imp is not None or total is not None:
                    return (np.nan if imp is None else imp), (np.nan if total is None else total)
    if run.regularizer == "none":
        return 0.0, 0.0
    return float("nan"), float("nan")


def memory_bytes(run: RunRecord) -> float:
    """Total bytes of regularizer state (importance + anchor), see :func:`memory`."""
    return memory(run)[1]


def overall(d: dict[str, Any], key: str) -> float:
    """An overall (whole-trunk) diagnostic: ``d[key]`` if a number, else under ``overall``."""
    n = _number(d.get(key))
    if n is not None:
        return n
    for where in OVERALL_KEYS:
        sub = d.get(where)
        if isinstance(sub, dict) and _number(sub.get(key)) is not None:
            return float(sub[key])
    sub = d.get(key)
    if isinstance(sub, dict):
        for where in OVERALL_KEYS:
            if _number(sub.get(where)) is not None:
                return float(sub[where])
    return float("nan")


def diagnostic_series(run: RunRecord, key: str) -> np.ndarray:
    """Per finished task i (list position), the overall value of ``key``; NaN where absent."""
    return np.array([overall(d, key) if isinstance(d, dict) else np.nan for d in run.res.diagnostics], dtype=float)
