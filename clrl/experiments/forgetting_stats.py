"""Numbers of the Atari forgetting experiment: per-run metrics, intervals over seeds, the verdict.

Per run (clrl.metrics, README "Metrics"), with the fine-tuning run of the same
seed as the reference (AGS-CL Sec. 4.1, Analysis 3; fine-tuning is its own reference, so its P is 1):

- ACC = mean_j R[T-1][j]; forgetting (Chaudhry) and BWT over the first T-1 games
- P = mean_i R[i][i] / A*_i, A*_i the reference's R[i][i]; S = mean_j R[T-1][j] / max_{i>=j} R[i][j]
- final normalized reward: the accumulated normalized reward (sum over seen games of
  score / the reference's best score on that game) at the last evaluation point (Fig. 7a)
- first-game drop R[0][0] - R[T-1][0]

Over seeds, every number is the IQM (rliable; 25% trimmed mean, which for 3 seeds is their
mean) with a 95% percentile stratified-bootstrap interval. A method forgets *significantly less*
than fine-tuning when the 95% interval of the difference (fine-tuning's IQM forgetting minus the
method's, the seeds of the two methods resampled independently) lies above zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clrl import metrics
from clrl.experiments.forgetting_data import RunData
from clrl.report.stats import iqm, iqm_ci, load_rliable

#: (key, column label, what it is); the document's table columns in this order
METRICS: tuple[tuple[str, str, str], ...] = (
    ("acc", "ACC", "mean over games of the final score R[T-1][j] (raw game return)"),
    ("forgetting", "Forgetting", "mean over the first T-1 games of the best earlier score minus the final one "
                                 "(Chaudhry et al.; raw return, higher = more forgetting)"),
    ("bwt", "BWT", "mean over the first T-1 games of R[T-1][j] - R[j][j] (raw return; negative = forgetting)"),
    ("plasticity", "P", "mean_i R[i][i] / fine-tuning's R[i][i], same seed (AGS-CL Sec. 4.1, Analysis 3)"),
    ("stability", "S", "mean_j R[T-1][j] / max_{i>=j} R[i][j] (AGS-CL Sec. 4.1, Analysis 3)"),
    ("norm_reward", "Norm. reward", "accumulated normalized reward at the end of training: sum over games of "
                                    "the final score / fine-tuning's best score on that game, same seed (Fig. 7a)"),
    ("first_drop", "First-game drop", "R[0][0] - R[T-1][0]: the first game's score right after learning it "
                                      "minus its score at the end (raw return)"),
)
METRIC_KEYS = tuple(k for k, _, _ in METRICS)
MIN_SEEDS = 3  # a bootstrap over one or two seeds says nothing (clrl.report.stats.iqm_ci)


@dataclass(frozen=True)
class Interval:
    """A point estimate (IQM over seeds) and its 95% interval; NaN where it cannot be computed."""

    point: float
    lo: float
    hi: float
    n: int  # seeds it is over

    @property
    def defined(self) -> bool:
        return all(math.isfinite(v) for v in (self.point, self.lo, self.hi))

    def side(self) -> str:
        """``above`` / ``below`` zero, ``includes`` zero, or ``undefined`` (too few seeds, NaN)."""
        if not self.defined:
            return "undefined"
        if self.lo > 0:
            return "above"
        if self.hi < 0:
            return "below"
        return "includes"


NAN_INTERVAL = Interval(float("nan"), float("nan"), float("nan"), 0)


# --------------------------------------------------------------------------- per run


def reference_max(ref: RunData) -> np.ndarray:
    return metrics.reference_max(ref.curve_scores, ref.T)


def run_metrics(run: RunData, ref: RunData) -> dict[str, float]:
    """The table's metrics for one run, normalized by ``ref`` (fine-tuning, same seed)."""
    R, T = run.R, run.T
    ref_diag = np.diag(ref.R).astype(float)
    curve = metrics.accumulated_normalized_reward(run.curve_scores, reference_max(ref))
    return {
        "acc": metrics.acc(R),
        "forgetting": metrics.forgetting(R),
        "bwt": metrics.bwt(R),
        "plasticity": metrics.plasticity(R, ref_diag),
        "stability": metrics.stability(R),
        "norm_reward": float(curve[-1]) if len(curve) else float("nan"),
        "first_drop": float(R[0, 0] - R[T - 1, 0]) if T > 1 else float("nan"),  # no later task: undefined
    }


def per_task(run: RunData, ref: RunData) -> dict[str, np.ndarray]:
    """P and S per task (Fig. 7b), and R[j][j] per game."""
    return {
        "plasticity": metrics.plasticity_per_task(run.R, np.diag(ref.R).astype(float)),
        "stability": metrics.stability_per_task(run.R),
        "diag": np.diag(run.R).astype(float),
    }


def normalized_curve(run: RunData, ref: RunData) -> tuple[np.ndarray, np.ndarray]:
    """(steps, accumulated normalized reward) over training (Fig. 7a)."""
    return run.curve_steps, metrics.accumulated_normalized_reward(run.curve_scores, reference_max(ref))


def first_game_curve(run: RunData) -> tuple[np.ndarray, np.ndarray]:
    """(steps, score of the first game) at every evaluation point."""
    values = np.array([np.nan if not s or s[0] is None else float(s[0]) for s in run.curve_scores], dtype=float)
    return run.curve_steps, values


# --------------------------------------------------------------------------- intervals


def interval(values: Sequence[float], reps: int = 2000, seed: int = 0, use_rliable: bool = True) -> Interval:
    """IQM over seeds with its 95% stratified-bootstrap interval (bounds NaN below 3 seeds; all NaN on a NaN).

    ``use_rliable=False`` computes the same bootstrap with clrl's vectorized code (about 500x
    faster than rliable's loop; the figures' many points use it).
    """
    v = np.asarray(values, dtype=float)
    if v.size == 0 or not np.isfinite(v).all():
        return Interval(float("nan"), float("nan"), float("nan"), int(v.size))
    _, lo, hi, _ = iqm_ci(v[:, None], reps=reps, seed=seed, use_rliable=use_rliable)  # NaN bounds below 3 seeds
    return Interval(iqm(v), float(lo), float(hi), int(v.size))


def _diff_fallback(a: np.ndarray, b: np.ndarray, reps: int, seed: int, size: float) -> tuple[float, float]:
    """Percentile bootstrap of IQM(a) - IQM(b), the runs of a and b resampled independently."""
    from scipy.stats import trim_mean

    rng = np.random.default_rng(seed)
    ia = rng.integers(0, len(a), size=(reps, len(a)))
    ib = rng.integers(0, len(b), size=(reps, len(b)))
    stats = trim_mean(a[ia], 0.25, axis=1) - trim_mean(b[ib], 0.25, axis=1)
    tail = (1 - size) / 2 * 100
    lo, hi = np.percentile(stats, [tail, 100 - tail])
    return float(lo), float(hi)


def difference(
    a: Sequence[float], b: Sequence[float], reps: int = 2000, seed: int = 0, size: float = 0.95,
    use_rliable: bool = True,
) -> Interval:
    """IQM(a) - IQM(b) with a 95% interval: rliable's StratifiedIndependentBootstrap (or clrl's own).

    NaN when either side has fewer than 3 seeds or a non-finite value.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    n = int(min(a.size, b.size))
    if a.size < MIN_SEEDS or b.size < MIN_SEEDS or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return Interval(float("nan"), float("nan"), float("nan"), n)
    point = iqm(a) - iqm(b)
    library = load_rliable()[0] if use_rliable else None
    if library is None:
        lo, hi = _diff_fallback(a, b, reps, seed, size)
    else:
        # as clrl.report.stats.iqm_ci: rliable draws from numpy's global RNG; seed it, then restore it
        saved = np.random.get_state()
        try:
            np.random.seed(seed % 2**32)
            _, ci = library.get_interval_estimates(
                {"d": [a[:, None], b[:, None]]},
                lambda x, y: np.array([iqm(x) - iqm(y)]),
                reps=reps,
                confidence_interval_size=size,
            )
        finally:
            np.random.set_state(saved)
        lo, hi = (float(v) for v in np.asarray(ci["d"]).ravel()[:2])
    return Interval(float(point), lo, hi, n)


def curve_intervals(
    series: list[tuple[np.ndarray, np.ndarray]], reps: int = 2000, seed: int = 0
) -> tuple[np.ndarray, list[Interval]]:
    """Per evaluation step shared by all seeds, the IQM over seeds and its interval (clrl's bootstrap)."""
    if not series:
        return np.array([], dtype=np.int64), []
    common = series[0][0]
    for steps, _ in series[1:]:
        common = np.intersect1d(common, steps)
    out = []
    for step in common:
        vals = [float(v[np.flatnonzero(s == step)[0]]) for s, v in series]
        out.append(interval(vals, reps=reps, seed=seed, use_rliable=False))
    return common, out


# --------------------------------------------------------------------------- the verdict


RULE = ("A method forgets significantly less than fine-tuning when the 95% stratified-bootstrap interval of "
        "the difference (fine-tuning's IQM forgetting minus the method's; each method's seeds resampled "
        "independently) lies entirely above zero; entirely below zero means it forgets significantly more.")


def fmt(x: float) -> str:
    """A number for text and tables: 0 decimals from 100, 1 from 10, else 2."""
    if not math.isfinite(x):
        return "n/a"
    a = abs(x)
    text = f"{x:.0f}" if a >= 100 else f"{x:.1f}" if a >= 10 else f"{x:.2f}"
    return "0" if text.strip("-0.") == "" else text


def fmt_interval(iv: Interval) -> str:
    if not iv.defined:
        return "n/a" if not math.isfinite(iv.point) else f"{fmt(iv.point)} (no interval: {iv.n} seeds)"
    return f"{fmt(iv.point)} [{fmt(iv.lo)}, {fmt(iv.hi)}]"


def _bounds(iv: Interval) -> str:
    return f"[{fmt(iv.lo)}, {fmt(iv.hi)}]"


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


BELOW = "no (below)"


def learned(diag: Interval, base: Interval) -> str:
    """``yes`` when the trained score's interval lies above the untrained one's (no overlap),
    ``no (below)`` when it lies wholly below it, ``no`` when they overlap (touching counts);
    ``n/a`` without both intervals."""
    if not (diag.defined and base.defined):
        return "n/a"
    if diag.lo > base.hi:
        return "yes"
    return BELOW if diag.hi < base.lo else "no"


def learning_sentence(games: list[str], verdicts: list[str], label: str = "Fine-tuning") -> str:
    """Whether PPO learned each game (``verdicts`` from :func:`learned`), as one sentence."""
    no = [g for g, v in zip(games, verdicts, strict=True) if v == "no"]
    below = [g for g, v in zip(games, verdicts, strict=True) if v == BELOW]
    unknown = [g for g, v in zip(games, verdicts, strict=True) if v == "n/a"]
    if not no and not below and not unknown:
        return (f"PPO learns every game: under {label.lower()} each game's score right after training it lies above "
                "the untrained network's, with non-overlapping 95% intervals.")
    parts = []
    if no:
        parts.append(f"PPO does not clearly learn {_join(no)}: right after training, the score's 95% interval "
                     "overlaps the untrained network's, so forgetting there means little")
    if below:
        parts.append(f"PPO ends {_join(below)} worse than the untrained network: right after training, the score's "
                     "95% interval lies wholly below the untrained one's, so forgetting there means little")
    if unknown:
        parts.append(f"whether PPO learns {_join(unknown)} cannot be decided (no interval: fewer than "
                     f"{MIN_SEEDS} seeds or no untrained score)")
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def conclusion(
    ft_forgetting: Interval, ft_drop: Interval, diffs: list[tuple[str, Interval]], baseline_label: str = "Fine-tuning"
) -> list[str]:
    """The plain conclusion, one sentence per claim, each read off an interval's side of zero.

    ``diffs``: (method label, fine-tuning's forgetting minus the method's) for every method.
    """
    lines = []
    side = ft_forgetting.side()
    if side == "above":
        lines.append(f"{baseline_label} forgets: its forgetting is {fmt(ft_forgetting.point)} with a 95% interval "
                     f"{_bounds(ft_forgetting)} that lies above zero.")
    elif side == "includes":
        lines.append(f"{baseline_label} does not forget measurably: its forgetting interval {_bounds(ft_forgetting)} "
                     "includes zero, so this setting cannot show that a method reduces forgetting.")
    elif side == "below":
        lines.append(f"{baseline_label}'s forgetting interval {_bounds(ft_forgetting)} lies below zero: it ended "
                     "better on its earlier games than right after learning them, so this setting shows no forgetting.")
    else:
        lines.append(f"Whether {baseline_label.lower()} forgets cannot be decided: the interval needs {MIN_SEEDS} or "
                     f"more seeds with finite values ({ft_forgetting.n} here).")
    dside = ft_drop.side()
    drop_text = {
        "above": f"drops by {fmt(ft_drop.point)}, interval {_bounds(ft_drop)} above zero",
        "includes": f"changes by {fmt(ft_drop.point)}, interval {_bounds(ft_drop)}, which includes zero",
        "below": f"rises by {fmt(-ft_drop.point)}, interval of the drop {_bounds(ft_drop)} below zero",
        "undefined": f"has no interval ({ft_drop.n} seeds with finite values)",
    }[dside]
    lines.append(f"Under {baseline_label.lower()} the first game's score from R[0][0] to R[T-1][0] {drop_text}.")
    less, not_less = [], []
    for label, d in diffs:
        s = d.side()
        if s == "above":
            less.append(label)
            lines.append(f"{label} forgets significantly less than {baseline_label.lower()}: the difference in "
                         f"forgetting is {fmt(d.point)} with a 95% interval {_bounds(d)} above zero.")
        elif s == "includes":
            not_less.append(label)
            lines.append(f"{label} does not forget significantly less than {baseline_label.lower()}: the difference "
                         f"in forgetting is {fmt(d.point)} with a 95% interval {_bounds(d)} that includes zero.")
        elif s == "below":
            not_less.append(label)
            lines.append(f"{label} forgets significantly more than {baseline_label.lower()}: the difference in "
                         f"forgetting is {fmt(d.point)} with a 95% interval {_bounds(d)} below zero.")
        else:
            not_less.append(label)
            lines.append(f"{label} cannot be compared with {baseline_label.lower()}: the difference needs "
                         f"{MIN_SEEDS} or more seeds with finite values on both sides.")
    if diffs:
        if less and not_less:
            summary = (f"In short: {_join(less)} {'forgets' if len(less) == 1 else 'forget'} significantly less "
                       f"than {baseline_label.lower()}; {_join(not_less)} {'does' if len(not_less) == 1 else 'do'} not.")
        elif less:
            summary = f"In short: every method ({_join(less)}) forgets significantly less than {baseline_label.lower()}."
        else:
            summary = f"In short: no method forgets significantly less than {baseline_label.lower()} in this setting."
        if side != "above":
            summary += f" ({baseline_label} itself does not forget measurably here, so this says little.)"
        lines.append(summary)
    return lines


def iqm_or_nan(values: Sequence[float]) -> float:
    """The IQM of the values (any count), NaN if there are none or one is NaN."""
    v = np.asarray(values, dtype=float)
    return iqm(v) if v.size and np.isfinite(v).all() else float("nan")
