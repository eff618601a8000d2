"""The report's figures (PNG and PDF), after the AGS-CL paper's Figures 6 and 7.

Every function takes method groups, draws the mean over each group's runs (complete runs,
or the partial ones when a group has no complete run) with a ±1 sample-std band, saves
``out_dir/<prefix><name>.<fmt>`` and returns the paths; it returns ``[]`` and appends a
reason to ``skipped`` when the runs hold nothing to draw (e.g. no reference run, or only NaN:
a normalized reward whose reference best score is 0 or negative). :func:`make_figures` and
:func:`draw_each` draw each figure on its own: one that raises is reported, the others drawn.

- ``normalized_reward``: accumulated normalized reward over training (Fig. 7a)
- ``plasticity_stability``: per-task P and S bars (Fig. 7b)
- ``R_heatmaps``: R matrices, one panel per method (values written in the cells)
- ``sparsity_capacity``: sparsity |G0|/|G| and used capacity after each task (Fig. 6b)
- ``memory``: regularizer memory per method, log scale (Fig. 6a)
- ``eval_curves``: evaluation score over training, one panel per task (band: s.d. over seeds, or
  for a single run the 95% bootstrap CI over its evaluation games)
- ``drift_forgetting``, ``dormant_rank``, ``task_overlap``: the representation analysis
  (:mod:`clrl.report.analysis_figures`)
"""

from __future__ import annotations

import functools
import math
import sys
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt  # noqa: E402  (style sets the Agg backend first)
import numpy as np
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from clrl.report import scores
from clrl.report.runs import Group, RunRecord
from clrl.report.style import COLUMN_WIDTH, MARKERS, PAGE_WIDTH, color, paper_style, save
from clrl.report.tables import fmt_bytes

Formats = Sequence[str]
BAND_ALPHA = 0.18


# --------------------------------------------------------------------------- helpers


def _steps_label(x: float, _pos: int | None = None) -> str:
    """1500000 -> '1.5M', 20000 -> '20k': step counts readable at tick size."""
    if x == 0:
        return "0"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:g}{suffix}"
    return f"{x:g}"


def _short(v: float) -> str:
    """Cell text for heatmaps: at most 4 characters or so."""
    if not math.isfinite(v):
        return ""
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.1f}M"
    if a >= 1e4:
        return f"{v / 1e3:.0f}k"
    if a >= 1e3:
        return f"{v / 1e3:.1f}k"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _bytes_label(x: float, _pos: int | None = None) -> str:
    """Decade ticks: 1 kB, 10 kB, 100 kB, 1 MB, ..."""
    return fmt_bytes(x)


def _x_label(run: RunRecord) -> str:
    """The unit of CurvePoint.step: env steps (RL), epochs or examples (supervised, by regime)."""
    if run.res.kind == "rl":
        return "environment steps"
    train = run.res.config.get("train") if isinstance(run.res.config, dict) else None
    regime = train.get("regime") if isinstance(train, dict) else None
    return "training examples seen" if regime == "single_pass" else "training epochs"


def _score_label(kind: str) -> str:
    return "evaluation return (game score)" if kind == "rl" else "test accuracy"


def nan_mean_std(M: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over finite entries, sample std where >= 2 entries (else NaN), and the count; no warnings."""
    M = np.asarray(M, dtype=float)
    ok = np.isfinite(M)
    n = ok.sum(axis=axis)
    s = np.where(ok, M, 0.0).sum(axis=axis)
    mean = np.where(n > 0, s / np.maximum(n, 1), np.nan)
    dev = np.where(ok, M - np.expand_dims(mean, axis), 0.0)
    var = (dev**2).sum(axis=axis) / np.maximum(n - 1, 1)
    std = np.where(n >= 2, np.sqrt(var), np.nan)
    return mean, std, n


def _interp(grid: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Linear interpolation on the finite part of y; NaN outside the range it covers."""
    ok = np.isfinite(y)
    out = np.full(grid.shape, np.nan)
    if ok.sum() == 0:
        return out
    xs, ys = x[ok], y[ok]
    out[:] = np.interp(grid, xs, ys)
    out[(grid < xs[0]) | (grid > xs[-1])] = np.nan
    return out


def align(series: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs' (steps, values) on one step grid: as they are if all share their steps, else interpolated."""
    if not series:
        return np.array([]), np.array([]), np.array([])
    first = series[0][0]
    if all(len(s) == len(first) and np.array_equal(s, first) for s, _ in series):
        M = np.vstack([v for _, v in series])
        grid = first
    else:
        grid = np.unique(np.concatenate([s for s, _ in series]))
        M = np.vstack([_interp(grid, s, v) for s, v in series])
    mean, std, _ = nan_mean_std(M)
    return grid, mean, std


def _band(ax, x: np.ndarray, mean: np.ndarray, std: np.ndarray, c: str) -> None:
    ok = np.isfinite(std) & np.isfinite(mean)
    if ok.any():
        ax.fill_between(x, mean - np.where(ok, std, 0), mean + np.where(ok, std, 0), where=ok,
                        color=c, alpha=BAND_ALPHA, linewidth=0)


def task_boundaries(run: RunRecord) -> list[float]:
    """Step at which each task after the first begins: from tasks.steps_per_task (RL), else the curve."""
    T = run.T
    spt = (run.res.config.get("tasks") or {}).get("steps_per_task") if isinstance(run.res.config, dict) else None
    if isinstance(spt, (int, float)) and spt > 0:
        return [float(k * spt) for k in range(1, T)]
    steps, tasks, _ = scores.curve(run)
    out = []
    for k in range(1, T):
        before, after = steps[tasks == k - 1], steps[tasks == k]
        if before.size:  # the previous task's last evaluation is the one at its end
            out.append(float(before.max()))
        elif after.size:
            out.append(float(after.min()))
    return out


def task_names(runs: list[RunRecord]) -> list[str]:
    """The runs' task names if they all agree; otherwise positions ('task 1', ...).

    Supervised splits shuffle classes by seed, so task k of one seed is not task k of another:
    only the position in the sequence is common to the runs averaged together.
    """
    lists = {tuple(r.res.tasks) for r in runs}
    T = max((r.T for r in runs), default=0)
    if len(lists) == 1:
        return list(next(iter(lists)))
    return [f"task {k + 1}" for k in range(T)]


def _boundary_run(groups: list[Group]) -> RunRecord | None:
    """The run whose task boundaries are drawn: the one with the most curve points."""
    runs = [r for g in groups for r in g.plotted_runs if r.res.curves]
    return max(runs, key=lambda r: (r.T, len(r.res.curves))) if runs else None


def _mark_tasks(ax, boundaries: list[float], names: list[str], end: float, label_top: bool = True) -> None:
    """Dotted lines at task boundaries and the task names above the axes, shortened to fit.

    Only the boundaries inside the x range are marked: a name placed outside it would stretch
    the tight-bbox figure (by millions of pixels when the range is degenerate).
    """
    boundaries = [b for b in boundaries if ax.get_xlim()[0] < b < end]
    for b in boundaries:
        ax.axvline(b, color="0.45", linestyle=":", linewidth=0.9, zorder=0)
    if not label_top or not names:
        return
    edges = [ax.get_xlim()[0], *boundaries, end]
    fig_w = ax.get_figure().get_size_inches()[0] * ax.get_position().width
    span = ax.get_xlim()[1] - ax.get_xlim()[0]
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    for k, name in enumerate(names[: len(edges) - 1]):
        lo, hi = edges[k], edges[k + 1]
        width_in = fig_w * (hi - lo) / span if span > 0 else 1.0
        fit = max(1, int(width_in / 0.065))  # ~0.065 in per character at 8 pt
        text = name if len(name) <= fit else (name[: max(fit - 1, 1)] + "." if fit > 2 else str(k + 1))
        ax.text((lo + hi) / 2, 1.01, text, transform=trans, ha="center", va="bottom", fontsize=8, color="0.25")


def _legend_right(ax, title: str | None = None, others: Sequence = ()) -> None:
    """Legend beside the axes (never over data), with the entries of ``others`` axes merged in."""
    handles, labels = ax.get_legend_handles_labels()
    for other in others:
        for h, lab in zip(*other.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, title=title,
                  borderaxespad=0.0)


def _plot(ax, x: np.ndarray, mean: np.ndarray, std: np.ndarray, gi: int, label: str) -> bool:
    """A group's mean line (markers every ~10% of the axis) and its ±1 s.d. band; False if nothing finite."""
    ok = np.isfinite(mean)
    if not ok.any():
        return False
    x, mean, std = x[ok], mean[ok], std[ok]
    ax.plot(x, mean, label=label, color=color(gi), marker=MARKERS[gi % len(MARKERS)],
            markevery=0.1 if len(x) > 10 else None, markersize=3.5)
    _band(ax, x, mean, std, color(gi))
    return True


def _n_label(g: Group, runs: list[RunRecord]) -> str:
    partial = "" if g.complete_runs else ", partial"
    return f"{g.label} (n={len(runs)}{partial})"


# --------------------------------------------------------------------------- figures


def _unusable_reference_tasks(runs: list[RunRecord]) -> list[str]:
    """Names of the seen tasks whose reference best score is 0, negative or missing: there the
    normalized reward (score / best) is undefined (NaN, clrl.metrics.accumulated_normalized_reward)."""
    bad: list[str] = []
    for r in runs:
        _, ref_max = scores.reference_arrays(r)
        if ref_max is None:
            continue
        seen = {p.task for p in r.res.curves}
        for j, v in enumerate(ref_max):
            name = r.res.tasks[j] if j < len(r.res.tasks) else f"task {j + 1}"
            if j <= max(seen, default=-1) and not (np.isfinite(v) and v > 0) and name not in bad:
                bad.append(name)
    return bad


def normalized_reward(groups: list[Group], out_dir: Path, prefix: str = "", formats: Formats = ("png", "pdf"),
                      skipped: list[str] | None = None) -> list[Path]:
    """AGS-CL Fig. 7a: sum over seen tasks of score / fine-tuning's best score on that task.

    Where a seen task's reference best score is 0 or negative the sum is undefined (NaN): the
    lines stop there and a note in the axes names the tasks; with no finite point at all the
    figure is not drawn and ``skipped`` says why.
    """
    lines = []
    for gi, g in enumerate(groups):
        runs = [r for r in g.plotted_runs if r.reference is not None and r.res.curves]
        series = [(scores.curve(r)[0], scores.normalized_reward_curve(r)) for r in runs]
        if series:
            lines.append((gi, g, runs, *align(series)))
    if not lines:
        _skip(skipped, "normalized_reward", "no run has a reference (fine-tuning) run and an evaluation curve")
        return []
    all_runs = [r for line in lines for r in line[2]]
    bad = _unusable_reference_tasks(all_runs)
    undefined = (f"the reference's best score is 0 or negative on {', '.join(bad)}" if bad
                 else "a seen task has no score")
    if not any(np.isfinite(mean).any() for *_, mean, _std in lines):
        _skip(skipped, "normalized_reward", f"no finite value to plot ({undefined}: the normalized reward is NaN)")
        return []
    brun = _boundary_run(groups)
    # the whole training axis, also where the lines stop being defined
    end = max(float(scores.curve(r)[0].max()) for r in all_runs)
    with paper_style():
        fig, ax = plt.subplots(figsize=(PAGE_WIDTH, 2.8))
        gaps = False
        for gi, g, runs, x, mean, std in lines:
            _plot(ax, x, mean, std, gi, _n_label(g, runs))
            gaps |= not np.isfinite(mean).all()
        ax.set_xlim(0, end if end > 0 else 1.0)
        ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
        ax.xaxis.set_major_formatter(FuncFormatter(_steps_label))
        ax.set_xlabel(_x_label(lines[0][2][0]))
        ax.set_ylabel("accumulated normalized reward\n(sum over seen tasks)")
        if gaps:
            ax.text(0.99, 0.02, f"undefined (not drawn) where {undefined}", transform=ax.transAxes, ha="right",
                    va="bottom", fontsize=8, color="0.35")
        if brun is not None:
            _mark_tasks(ax, task_boundaries(brun), task_names(all_runs), ax.get_xlim()[1])
        _legend_right(ax, "mean ± s.d. over seeds")
        return save(fig, out_dir, f"{prefix}normalized_reward", formats)


def _per_task(runs: list[RunRecord], fn: Callable[[RunRecord], np.ndarray | None], T: int) -> np.ndarray:
    rows = []
    for r in runs:
        v = fn(r)
        if v is not None:
            row = np.full(T, np.nan)
            row[: min(T, len(v))] = v[:T]
            rows.append(row)
    return np.vstack(rows) if rows else np.empty((0, T))


def plasticity_stability(groups: list[Group], out_dir: Path, prefix: str = "", formats: Formats = ("png", "pdf"),
                         skipped: list[str] | None = None) -> list[Path]:
    """AGS-CL Fig. 7b: plasticity R[i][i]/A*_i and stability R[T-1][j]/max_i R[i][j] per task."""
    runs_of = {id(g): g.complete_runs for g in groups}
    with_runs = [(gi, g) for gi, g in enumerate(groups) if runs_of[id(g)]]
    if not with_runs:
        _skip(skipped, "plasticity_stability", "no complete run")
        return []
    T = max(r.T for _, g in with_runs for r in runs_of[id(g)])
    names = task_names([r for _, g in with_runs for r in runs_of[id(g)]])

    def plast(r: RunRecord) -> np.ndarray | None:
        ref_diag, _ = scores.reference_arrays(r)
        return None if ref_diag is None else scores.per_task_terms(r.res.R_matrix(), ref_diag)["plasticity"]

    def stab(r: RunRecord) -> np.ndarray:
        return scores.per_task_terms(r.res.R_matrix())["stability"]

    def finite(fn: Callable[[RunRecord], np.ndarray | None]) -> bool:
        return any(np.isfinite(_per_task(runs_of[id(g)], fn, T)).any() for _, g in with_runs)

    panels = [("plasticity P", plast), ("stability S", stab)]
    if not any(_per_task(runs_of[id(g)], plast, T).size for _, g in with_runs):
        panels = panels[1:]
        _skip(skipped, "plasticity_stability", "plasticity panel left out: no run has a reference")
    elif not finite(plast):  # P = R[i][i] / A*_i is NaN where A*_i <= 0
        panels = panels[1:]
        _skip(skipped, "plasticity_stability", "plasticity panel left out: no finite P (the reference's "
              "score right after training each task is 0 or negative, or missing)")
    if not finite(stab):  # S is NaN where a task's best score is <= 0 (e.g. negative game returns)
        panels = [pan for pan in panels if pan[1] is not stab]
        _skip(skipped, "plasticity_stability", "stability panel left out: no finite S (each task's best "
              "score is 0 or negative, or missing)")
    if not panels:
        return []
    width = 0.8 / len(with_runs)
    with paper_style():
        fig, axes = plt.subplots(len(panels), 1, figsize=(PAGE_WIDTH, 1.9 * len(panels) + 0.5), sharex=True,
                                 squeeze=False)
        x = np.arange(T)
        for ax, (ylabel, fn) in zip(axes[:, 0], panels, strict=True):
            for slot, (gi, g) in enumerate(with_runs):
                M = _per_task(runs_of[id(g)], fn, T)
                if not M.size:
                    continue
                mean, std, _ = nan_mean_std(M)
                ax.bar(x - 0.4 + width * (slot + 0.5), mean, width, yerr=np.where(np.isfinite(std), std, 0),
                       color=color(gi), label=f"{g.label} (n={len(M)})", error_kw={"elinewidth": 0.8, "capsize": 1.5},
                       edgecolor="white", linewidth=0.3)
            ax.axhline(1.0, color="0.3", linestyle="--", linewidth=0.8, zorder=0)
            ax.set_ylabel(ylabel)
            ax.grid(axis="x", visible=False)
        bottom = axes[-1, 0]
        bottom.set_xticks(x)
        long = max(len(n) for n in names) > 10 or T > 6
        bottom.set_xticklabels(names, rotation=30 if long else 0, ha="right" if long else "center")
        bottom.set_xlabel("task (training order)")
        _legend_right(axes[0, 0], "mean ± s.d. over seeds", others=axes[1:, 0])
        fig.align_ylabels(axes[:, 0])
        return save(fig, out_dir, f"{prefix}plasticity_stability", formats)


def per_task_min_max(mats: list[np.ndarray], T: int) -> list[np.ndarray]:
    """Each column (task) of every matrix scaled to [0, 1] by that task's lowest and highest
    finite value over all the matrices: games' scores differ by orders of magnitude and may be
    negative (Boxing), so dividing by the best score would hide every negative cell. A task
    whose values are all equal is drawn at 0.5; NaN stays NaN."""
    lo, hi = np.full(T, np.inf), np.full(T, -np.inf)
    for m in mats:
        finite = np.where(np.isfinite(m), m, np.nan)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            lo[: m.shape[1]] = np.fmin(lo[: m.shape[1]], np.nanmin(finite, axis=0))
            hi[: m.shape[1]] = np.fmax(hi[: m.shape[1]], np.nanmax(finite, axis=0))
    out = []
    for m in mats:
        k = m.shape[1]
        span = hi[:k] - lo[:k]
        with np.errstate(all="ignore"):
            scaled = np.where(span > 0, (m - lo[:k]) / np.where(span > 0, span, 1.0), 0.5)
        out.append(np.where(np.isfinite(m), scaled, np.nan))
    return out


def r_heatmaps(groups: list[Group], out_dir: Path, prefix: str = "", formats: Formats = ("png", "pdf"),
               skipped: list[str] | None = None, stem: str = "R_heatmaps") -> list[Path]:
    """Mean R per method: cell (i, j) is the score on task j after training task i; blank = not evaluated.

    Colors: accuracy as is (supervised); for RL each column scaled from its lowest to its highest
    value over all panels (:func:`per_task_min_max`), since games' scores differ by orders of
    magnitude and may be negative. Cells carry the raw mean score
    (written only up to 12 tasks, beyond which they would be unreadable).
    """
    mats = []
    for gi, g in enumerate(groups):
        runs = g.plotted_runs
        if not runs:
            continue
        T = max(r.T for r in runs)
        stack = np.full((len(runs), T, T), np.nan)
        for k, r in enumerate(runs):
            R = r.res.R_matrix()
            stack[k, : len(R), : len(R)] = R
        mean, _, _ = nan_mean_std(stack)
        mats.append((gi, g, runs, mean))
    if not mats or all(not np.isfinite(m).any() for *_, m in mats):
        _skip(skipped, stem, "no evaluated entry of R")
        return []
    kind = groups[0].runs[0].res.kind
    T = max(m.shape[0] for *_, m in mats)
    names = task_names([r for _, g, runs, _ in mats for r in runs])
    if kind == "rl":
        shade = per_task_min_max([m for *_, m in mats], T)
        vmin, vmax, cbar = 0.0, 1.0, "score, per task: lowest 0, highest 1"
    else:
        shade = [m for *_, m in mats]
        finite = np.concatenate([s[np.isfinite(s)] for s in shade])
        vmin, vmax, cbar = float(min(finite.min(), 0.0)), float(max(finite.max(), 1e-12)), _score_label(kind)
        if vmax <= 1.0:
            vmax = 1.0
    cell = 0.34 if T <= 6 else 0.27 if T <= 12 else max(0.12, 4.0 / T)
    side = max(1.3, cell * T)
    same_tasks = len({m.shape[0] for *_, m in mats}) == 1
    label_w = 0.2 + 0.065 * max(len(n) for n in names) if T <= 12 else 0.4  # y tick labels + axis label
    col_w = side + (0.35 if same_tasks else label_w)
    ncols = max(1, min(len(mats), int((PAGE_WIDTH - label_w - 0.7) // col_w)))
    nrows = math.ceil(len(mats) / ncols)
    fig_w = label_w + ncols * col_w + 0.7
    fig_h = nrows * (side + 0.45 + 0.065 * max(len(n) for n in names)) + 0.2
    with paper_style(), plt.rc_context({"axes.grid": False, "figure.constrained_layout.h_pad": 0.1}):
        fig, axes = plt.subplots(nrows, ncols, figsize=(fig_w, fig_h), squeeze=False, layout="constrained")
        cmap = plt.get_cmap("viridis").with_extremes(bad="white")
        im = None
        for k, (ax, (_gi, g, runs, m), s) in enumerate(zip(axes.ravel(), mats, shade, strict=False)):
            n = len(m)
            im = ax.imshow(np.ma.masked_invalid(s), cmap=cmap, vmin=vmin, vmax=vmax, aspect="equal")
            if n <= 12:
                for i in range(n):
                    for j in range(n):
                        if np.isfinite(m[i, j]):
                            level = (s[i, j] - vmin) / (vmax - vmin) if np.isfinite(s[i, j]) else 0.0
                            ax.text(j, i, _short(m[i, j]), ha="center", va="center", fontsize=8,
                                    color="white" if level < 0.55 else "black")
            ticks = np.arange(n) if n <= 12 else np.arange(0, n, max(1, n // 10))
            tick_names = [names[t] for t in ticks] if n <= 12 else [str(t + 1) for t in ticks]
            ax.set_xticks(ticks, tick_names, rotation=45, ha="right", rotation_mode="anchor")
            first_col = k % ncols == 0
            ax.set_yticks(ticks, tick_names if first_col or not same_tasks else [])
            ax.set_xlabel("evaluated on task j")
            if first_col or not same_tasks:
                ax.set_ylabel("after training task i")
            ax.set_title(_n_label(g, runs) if len(runs) > 1 or len(mats) > 1 else g.label)
            ax.tick_params(length=0)
            for spine in ax.spines.values():
                spine.set_visible(False)
        for ax in axes.ravel()[len(mats):]:
            ax.set_visible(False)
        if im is not None:
            cb = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.9 if nrows == 1 else 0.6, aspect=25, pad=0.02)
            cb.set_label(cbar)
            cb.outline.set_visible(False)
        return save(fig, out_dir, f"{prefix}{stem}", formats)


def sparsity_capacity(groups: list[Group], out_dir: Path, prefix: str = "", formats: Formats = ("png", "pdf"),
                      skipped: list[str] | None = None) -> list[Path]:
    """AGS-CL Fig. 6b: sparsity |G0|/|G| and used capacity after each task. The solid used-capacity
    line is the paper's literal figure (nodes that did not move during the task, sparse zero nodes
    included); the dashed one is the share of nodes that were important *and* did not move."""
    panels = (("sparsity", "sparsity |G₀|/|G|\n(share of free nodes)"),
              ("used_capacity", "used capacity (solid: unmoved,\ndashed: important and unmoved)"))
    data: dict[str, list] = {k: [] for k in ("sparsity", "used_capacity", "important_unmoved")}
    for gi, g in enumerate(groups):
        runs = g.plotted_runs
        for key in data:
            series = [scores.diagnostic_series(r, key) for r in runs]
            L = max((len(s) for s in series), default=0)
            if not L:
                continue
            M = np.full((len(series), L), np.nan)
            for k, s in enumerate(series):
                M[k, : len(s)] = s
            if np.isfinite(M).any():
                data[key].append((gi, g, *nan_mean_std(M)))
    if not any(data.values()):
        _skip(skipped, "sparsity_capacity", "no run's diagnostics hold sparsity or used_capacity")
        return []
    T = max((r.T for g in groups for r in g.runs), default=1)
    with paper_style():
        fig, axes = plt.subplots(1, 2, figsize=(PAGE_WIDTH, 2.5), sharex=True)
        for ax, (key, ylabel) in zip(axes, panels, strict=True):
            for gi, g, mean, std, n in data[key]:
                x = np.arange(1, len(mean) + 1)
                ax.plot(x, mean, label=f"{g.label} (n={int(n.max())})", color=color(gi),
                        marker=MARKERS[gi % len(MARKERS)], markersize=3.5)
                _band(ax, x, mean, std, color(gi))
            for gi, _g, mean, _std, _n in (data["important_unmoved"] if key == "used_capacity" else []):
                x = np.arange(1, len(mean) + 1)
                ax.plot(x, mean, color=color(gi), linestyle="--", marker=MARKERS[gi % len(MARKERS)], markersize=3.5)
            if not data[key]:
                ax.text(0.5, 0.5, f"no {key} in diagnostics", transform=ax.transAxes, ha="center", va="center")
            ax.set_ylim(-0.02, 1.02)
            ax.set_ylabel(ylabel)
            ax.set_xlabel("after training task")
            ax.set_xticks(np.arange(1, T + 1) if T <= 12 else np.arange(1, T + 1, max(1, T // 10)))
        handles, labels = [], []
        for ax in axes:
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        fig.tight_layout(w_pad=2.0)
        fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(len(labels), 3),
                   frameon=False, title="mean ± s.d. over seeds")
        return save(fig, out_dir, f"{prefix}sparsity_capacity", formats)


def memory(groups: list[Group], out_dir: Path, prefix: str = "", formats: Formats = ("png", "pdf"),
           skipped: list[str] | None = None) -> list[Path]:
    """AGS-CL Fig. 6a: bytes of regularizer state per method, log scale.

    Solid bars: importance weights (the paper's "regularization parameters": one Omega per
    node for AGS-CL, one value per weight for EWC/MAS); hatched bars: importance + anchor copy.
    """
    rows = []
    for gi, g in enumerate(groups):
        mem = np.array([scores.memory(r) for r in g.plotted_runs], dtype=float).reshape(-1, 2)
        imp, total = (float(np.mean(c[np.isfinite(c)])) if np.isfinite(c).any() else float("nan") for c in mem.T)
        rows.append((gi, g, imp, total))
    positive = [v for *_, i, t in rows for v in (i, t) if np.isfinite(v) and v > 0]
    if not positive:
        _skip(skipped, "memory", "no run records a positive regularizer memory (memory_bytes in diagnostics)")
        return []
    lo = 10 ** math.floor(math.log10(min(positive)) - 0.5)
    hi = 10 ** math.ceil(math.log10(max(positive)) + 0.6)
    labels = [g.label for _, g, _, _ in rows]
    long = max(len(s) for s in labels) > 10
    with paper_style():
        fig, ax = plt.subplots(figsize=(max(COLUMN_WIDTH, 0.8 * len(rows) + 1.4), 2.7))
        w = 0.38
        for k, (gi, _g, imp, total) in enumerate(rows):
            for dx, v, hatch, alpha in ((-w / 2, imp, None, 1.0), (w / 2, total, "///", 0.45)):
                if np.isfinite(v) and v > 0:
                    ax.bar(k + dx, v, w, color=color(gi), alpha=alpha, hatch=hatch, edgecolor=color(gi), linewidth=0.6)
                    ax.text(k + dx, v * 1.25, fmt_bytes(v), ha="center", va="bottom", fontsize=8, rotation=90)
                else:
                    ax.text(k + dx, lo * 1.4, "0 B" if v == 0 else "?", ha="center", va="bottom", fontsize=8,
                            color="0.35")
        ax.set_yscale("log")
        ax.set_ylim(lo, hi)
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.yaxis.set_major_formatter(FuncFormatter(_bytes_label))
        ax.set_xticks(np.arange(len(rows)), labels, rotation=25 if long else 0, ha="right" if long else "center")
        ax.set_ylabel("regularizer memory (log scale)")
        ax.grid(axis="x", visible=False)
        ax.grid(axis="y", which="minor", visible=False)
        legend = [Patch(facecolor="0.5", edgecolor="0.5", label="importance"),
                  Patch(facecolor="0.5", alpha=0.45, hatch="///", edgecolor="0.5", label="importance + anchor")]
        ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, borderaxespad=0)
        return save(fig, out_dir, f"{prefix}memory", formats)


def eval_curves(groups: list[Group], out_dir: Path, prefix: str = "", formats: Formats = ("png", "pdf"),
                skipped: list[str] | None = None, stem: str = "eval_curves") -> list[Path]:
    """Score on each task over the whole run (one panel per task; its training period shaded)."""
    with_curves = [(gi, g, [r for r in g.plotted_runs if r.res.curves]) for gi, g in enumerate(groups)]
    with_curves = [(gi, g, runs) for gi, g, runs in with_curves if runs]
    if not with_curves:
        _skip(skipped, stem, "no evaluation curve in any run")
        return []
    brun = _boundary_run(groups)
    names = task_names([r for _, _, runs in with_curves for r in runs])
    T = len(names)
    bounds = task_boundaries(brun)
    kind = brun.res.kind
    ncols = T if T <= 5 else 3 if T == 6 else 4 if T <= 8 else 5
    nrows = math.ceil(T / ncols)
    with paper_style():
        fig, axes = plt.subplots(nrows, ncols, figsize=(PAGE_WIDTH, 1.75 * nrows + 0.45), squeeze=False, sharex=True,
                                 layout="constrained")
        end = max(float(scores.curve(r)[0].max()) for _, _, runs in with_curves for r in runs)
        end = end if end > 0 else 1.0
        edges = [0.0, *[b for b in bounds if b < end], end]
        with_ci = False
        drawn = False
        for j, ax in enumerate(axes.ravel()):
            if j >= T:
                ax.set_visible(False)
                continue
            if j < len(edges) - 1:
                ax.axvspan(edges[j], edges[j + 1], color="0.88", zorder=0, linewidth=0)
            for gi, g, runs in with_curves:
                series = []
                for r in runs:
                    steps, _, M = scores.curve(r)
                    if j < M.shape[1]:
                        series.append((steps, M[:, j]))
                if not series:
                    continue
                interval = scores.curve_interval(runs[0]) if len(runs) == 1 else None
                if interval is None:
                    drawn |= _plot(ax, *align(series), gi, _n_label(g, runs))
                    continue
                # one run: no spread over seeds, but the spread of its own evaluation games
                steps, mean = series[0]
                lo, hi = interval[0][:, j], interval[1][:, j]
                if _plot(ax, steps, mean, np.full_like(mean, np.nan), gi, _n_label(g, runs)):
                    drawn = True
                    ok = np.isfinite(lo) & np.isfinite(hi)
                    ax.fill_between(steps, np.where(ok, lo, mean), np.where(ok, hi, mean), where=ok,
                                    color=color(gi), alpha=BAND_ALPHA, linewidth=0)
                    with_ci = True
            for b in edges[1:-1]:
                ax.axvline(b, color="0.6", linestyle=":", linewidth=0.7, zorder=0)
            ax.set_title(names[j], pad=3)
            ax.set_xlim(0, end)
            ax.xaxis.set_major_formatter(FuncFormatter(_steps_label))
            ax.xaxis.set_major_locator(MaxNLocator(nbins=3, steps=[1, 2, 4, 5, 10]))
            if j % ncols == 0:
                ax.set_ylabel("return" if kind == "rl" else "accuracy")
            if kind != "rl" and ax.get_ylim()[1] > 1.0:  # the s.d. band must not suggest accuracy above 1
                ax.set_ylim(top=1.01)
        # a panel in the last filled row may sit above a hidden one: give it tick labels too
        for j in range(T):
            r, c = divmod(j, ncols)
            if r < nrows - 1 and (r + 1) * ncols + c >= T:
                axes[r, c].xaxis.set_tick_params(labelbottom=True)
        if not drawn:
            plt.close(fig)
            _skip(skipped, stem, "no finite evaluation score in any run's curve")
            return []
        fig.supxlabel(_x_label(brun), fontsize=9)
        handles, labels = [], []  # every panel's: a method may have no finite score on the first task
        for ax in axes.ravel():
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        extra = "; shaded: the task's training period"
        multi = any(len(runs) > 1 for _, _, runs in with_curves)
        spread = ("mean ± s.d. over seeds" + (" (one run: 95% CI over its evaluation games)" if with_ci else "")
                  if multi or not with_ci else "mean, band: 95% CI over the evaluation games")
        fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(len(labels), 3),
                   frameon=False, title=f"{_score_label(kind)}: {spread}{extra}")
        return save(fig, out_dir, f"{prefix}{stem}", formats)


def _skip(skipped: list[str] | None, name: str, why: str) -> None:
    if skipped is not None:
        skipped.append(f"{name}: {why}")


ALL = {
    "normalized_reward": normalized_reward,
    "plasticity_stability": plasticity_stability,
    "R_heatmaps": r_heatmaps,
    "sparsity_capacity": sparsity_capacity,
    "memory": memory,
    "eval_curves": eval_curves,
}


def _failure_line(name: str, exc: BaseException) -> str:
    """'name: failed (Type: message) at file:line': the innermost clrl frame, where a fix starts."""
    msg = str(exc).strip().splitlines()
    where = ""
    # [1:]: below draw_each's own frame, i.e. inside the figure
    frames = [f for f in traceback.extract_tb(exc.__traceback__)[1:] if "clrl" in Path(f.filename).parts]
    if frames:
        where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}"
    return f"{name}: failed ({type(exc).__name__}: {msg[0] if msg else ''}){where}; a bug worth reporting"


def draw_each(figures: Mapping[str, Callable[[], list[Path]]], skipped: list[str] | None = None) -> list[Path]:
    """Draw every figure on its own: one that raises is reported (a line on stderr, and in
    ``skipped`` for report.md) and the others are still drawn. Returns the files written."""
    paths: list[Path] = []
    for name, draw in figures.items():
        try:
            paths += draw()
        except Exception as exc:  # noqa: BLE001 - one broken figure must not cost the others
            plt.close("all")  # what the failed figure left open
            line = _failure_line(name, exc)
            print(f"clrl: warning: figure {line}", file=sys.stderr)
            _skip(skipped, name, line.split(": ", 1)[1])
    return paths


def make_figures(groups: list[Group], out_dir: Path, prefix: str = "", formats: Formats = ("png", "pdf"),
                 which: Sequence[str] | None = None, skipped: list[str] | None = None) -> list[Path]:
    """Every figure (or those named in ``which``) for these groups; returns the files written.
    A figure that fails is reported and left out (:func:`draw_each`); the others are drawn."""
    # analysis_figures imports this module, so it is loaded here
    from clrl.report.analysis_figures import ANALYSIS_FIGURES, has_analysis

    # runs recorded without the representation analysis (older ones) just lack those figures
    extra = ANALYSIS_FIGURES if has_analysis(groups) else {}
    chosen = {name: fn for name, fn in {**ALL, **extra}.items() if which is None or name in which}
    return draw_each({name: functools.partial(fn, groups, out_dir, prefix=prefix, formats=formats, skipped=skipped)
                      for name, fn in chosen.items()}, skipped)
