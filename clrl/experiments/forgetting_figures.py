"""The document's figures: AGS-CL Fig. 7a and 7b with 95% intervals over seeds, and the first game.

Lines are the IQM over seeds at each evaluation point, bands and error bars its 95%
stratified-bootstrap interval (none with fewer than 3 seeds). Task boundaries are dotted lines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clrl.experiments.forgetting_stats import Interval
from clrl.experiments.forgetting_summary import MethodSummary, Summary
from clrl.report.style import COLUMN_WIDTH, MARKERS, PAGE_WIDTH, color, paper_style, save

PREFIX = "atari_forgetting_"
STEMS = ("normalized_reward", "plasticity_stability", "first_game")
BAND_ALPHA = 0.18


def _steps_label(x: float, _pos: int | None = None) -> str:
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:g}{suffix}"
    return f"{x:g}"


def _arrays(ivs: list[Interval]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.array([i.point for i in ivs], dtype=float), np.array([i.lo for i in ivs], dtype=float),
            np.array([i.hi for i in ivs], dtype=float))


def task_boundaries(summary: Summary) -> list[float]:
    """Env steps where each task after the first starts: the last curve point of the task before
    (its end-of-task evaluation)."""
    run = (summary.reference or summary.methods[0]).runs[0]
    out = []
    for t in range(1, len(summary.tasks)):
        before = run.curve_steps[run.curve_tasks < t]
        if before.size and (run.curve_tasks >= t).any():
            out.append(float(before.max()))
    return out


def _curve_axes(ax, summary: Summary, curves: list[tuple[MethodSummary, tuple]], ylabel: str) -> bool:
    from matplotlib.ticker import FuncFormatter

    drawn = False
    for i, (m, (steps, ivs)) in enumerate(curves):
        if not len(steps):
            continue
        y, lo, hi = _arrays(ivs)
        if not np.isfinite(y).any():
            continue
        ax.plot(steps, y, color=color(i), marker=MARKERS[i % len(MARKERS)], markersize=3,
                label=f"{m.label} ({len(m.runs)} seeds)")
        if np.isfinite(lo).any():
            ax.fill_between(steps, lo, hi, color=color(i), alpha=BAND_ALPHA, linewidth=0)
        drawn = True
    for x in task_boundaries(summary):
        ax.axvline(x, color="0.5", linestyle=":", linewidth=0.8)
    ax.xaxis.set_major_formatter(FuncFormatter(_steps_label))
    ax.set_xlabel("environment steps (" + " \u2192 ".join(summary.tasks) + ")")
    ax.set_ylabel(ylabel)
    return drawn


def normalized_reward(summary: Summary, out_dir: Path, skipped: list[str]) -> list[Path]:
    """Accumulated normalized reward over training (AGS-CL Fig. 7a)."""
    import matplotlib.pyplot as plt

    with paper_style():
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH * 1.5, 2.6))
        drawn = _curve_axes(ax, summary, [(m, m.norm_curve) for m in summary.methods],
                            "accumulated normalized reward")
        if not drawn:
            plt.close(fig)
            skipped.append("normalized reward: no finite values (no fine-tuning reference, or its best score is 0)")
            return []
        ax.set_title("Normalized accumulated reward (IQM, 95% CI over seeds)")
        ax.legend(loc="upper left", frameon=False)
        return save(fig, out_dir, PREFIX + "normalized_reward", formats=("png",))


def first_game(summary: Summary, out_dir: Path, skipped: list[str]) -> list[Path]:
    """The first game's score at every evaluation point, with the untrained network's score."""
    import matplotlib.pyplot as plt

    with paper_style():
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH * 1.5, 2.6))
        drawn = _curve_axes(ax, summary, [(m, m.first_curve) for m in summary.methods],
                            f"{summary.tasks[0]} score")
        if not drawn:
            plt.close(fig)
            skipped.append("first game: no finite scores")
            return []
        base = summary.baseline[0]
        if np.isfinite(base.point):
            ax.axhline(base.point, color="0.3", linestyle="--", linewidth=0.9, label="untrained network")
        ax.set_title(f"{summary.tasks[0]} (the first game) over the whole sequence")
        ax.legend(loc="best", frameon=False)
        return save(fig, out_dir, PREFIX + "first_game", formats=("png",))


def plasticity_stability(summary: Summary, out_dir: Path, skipped: list[str]) -> list[Path]:
    """P and S per task, one bar per method with its 95% interval (AGS-CL Fig. 7b)."""
    import matplotlib.pyplot as plt

    T = len(summary.tasks)
    n = len(summary.methods)
    width = 0.8 / max(n, 1)
    x = np.arange(T)
    with paper_style():
        fig, axes = plt.subplots(1, 2, figsize=(PAGE_WIDTH, 2.5), sharey=False)
        any_bar = False
        for ax, key, title in ((axes[0], "plasticity", "Plasticity P per task"),
                               (axes[1], "stability", "Stability S per task")):
            for i, m in enumerate(summary.methods):
                y, lo, hi = _arrays(m.per_task[key])
                ok = np.isfinite(y)  # an undefined ratio (e.g. the reference scored 0) gets no bar
                if not ok.any():
                    continue
                pos = x - 0.4 + width * (i + 0.5)
                err = np.vstack([np.where(np.isfinite(lo), y - lo, 0), np.where(np.isfinite(hi), hi - y, 0)])
                ax.bar(pos[ok], y[ok], width=width * 0.92, color=color(i), label=m.label if key == "plasticity" else None,
                       yerr=err[:, ok], capsize=2, error_kw={"linewidth": 0.8})
                any_bar = True
            ax.axhline(1.0, color="0.4", linestyle=":", linewidth=0.8)
            ax.set_xticks(x, summary.tasks)
            ax.set_xlim(-0.5, T - 0.5)
            ax.set_title(title + " (IQM, 95% CI)")
        if not any_bar:
            plt.close(fig)
            skipped.append("P and S: no finite values")
            return []
        axes[0].set_ylabel("ratio")
        fig.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=max(1, n), frameon=False)
        return save(fig, out_dir, PREFIX + "plasticity_stability", formats=("png",))


def make_figures(summary: Summary, out_dir: Path, skipped: list[str]) -> list[Path]:
    return (normalized_reward(summary, out_dir, skipped) + plasticity_stability(summary, out_dir, skipped)
            + first_game(summary, out_dir, skipped))
