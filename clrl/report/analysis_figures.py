"""Figures of the representation analysis (``analysis`` blocks of results.json curve points).

- ``drift_forgetting``: for every past task of every run, its representation drift at the end
  of the run (submask flip rate since the task ended, mean over trunk layers, also over the
  nodes AGS-CL protects for it where there are such; and the relative change of its head
  features) against its forgetting (best score minus final score), by method
- ``dormant_rank``: share of tau-dormant units (mean over layers and seen tasks) and effective
  rank of the head features (mean over seen tasks) over training, mean ± s.d. per method
- ``task_overlap``: Jaccard overlap of the units each task uses at the last task end, per method

Each returns the files written, or ``[]`` with a reason in ``skipped`` when no run has analysis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from clrl import metrics
from clrl.report.figures import (
    Formats,
    _legend_right,
    _n_label,
    _plot,
    _skip,
    _x_label,
    align,
    nan_mean_std,
    task_names,
)
from clrl.report.runs import Group, RunRecord
from clrl.report.style import MARKERS, PAGE_WIDTH, color, paper_style, save

__all__ = ["drift_forgetting", "dormant_rank", "task_overlap", "ANALYSIS_FIGURES", "task_drift", "layer_mean", "has_analysis"]


def layer_mean(entry: dict[str, Any], key: str) -> float:
    """Mean of ``key`` over an analysis task entry's layers (NaN when no layer has it)."""
    vals = [v[key] for v in entry["layers"].values() if v.get(key) is not None]
    return float(np.mean(vals)) if vals else float("nan")


def _points(run: RunRecord) -> list:
    return [p for p in run.res.curves if getattr(p, "analysis", None)]


def has_analysis(groups: list[Group]) -> bool:
    """Whether any run of these groups recorded an analysis block."""
    return any(_points(r) for g in groups for r in g.runs)


def task_drift(run: RunRecord, protected: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per task, (submask drift, feature change) at the run's last analysed point (NaN if none);
    with ``protected``, the drift over the regularizer's protected nodes instead (NaN without)."""
    T = run.T
    d, f = np.full(T, np.nan), np.full(T, np.nan)
    pts = _points(run)
    if pts:
        for e in pts[-1].analysis["tasks"]:
            if e.get("reference"):
                d[e["task"]] = layer_mean(e, "drift_protected" if protected else "drift")
                fc = e["features"].get("feature_change")
                f[e["task"]] = np.nan if fc is None else fc
    return d, f


def drift_forgetting(groups: list[Group], out_dir: Path, prefix: str = "", formats: Formats = ("png", "pdf"),
                     skipped: list[str] | None = None) -> list[Path]:
    """Drift of each past task vs its forgetting: one point per task and run, colored by method."""
    data = []
    for gi, g in enumerate(groups):
        xs_d, xs_f, xs_p, ys = [], [], [], []
        for r in g.plotted_runs:
            if r.done < 2 or not _points(r):
                continue
            forget = metrics.forgetting_per_task(r.res.R_matrix())
            d, f = task_drift(r)
            p, _ = task_drift(r, protected=True)
            for j in range(len(forget)):
                if np.isfinite(forget[j]) and np.isfinite(d[j]):
                    xs_d.append(d[j])
                    xs_f.append(f[j])
                    xs_p.append(p[j])
                    ys.append(forget[j])
        if ys:
            data.append((gi, g, np.array(xs_d), np.array(xs_f), np.array(xs_p), np.array(ys)))
    if not data:
        _skip(skipped, "drift_forgetting", "no finished run with two or more tasks holds an analysis block")
        return []
    kind = groups[0].runs[0].res.kind
    ylabel = "forgetting (best - final accuracy)" if kind == "supervised" else "forgetting (best - final return)"
    with paper_style():
        fig, axes = plt.subplots(1, 2, figsize=(PAGE_WIDTH, 2.7), sharey=True)
        for gi, g, xd, xf, xp, y in data:
            style = dict(color=color(gi), marker=MARKERS[gi % len(MARKERS)], s=22, alpha=0.8, linewidths=0)
            axes[0].scatter(xd, y, label=f"{g.label} ({len(y)} tasks)", **style)
            ok = np.isfinite(xp)
            if ok.any():  # AGS-CL: the nodes it protects for that task
                axes[0].scatter(xp[ok], y[ok], label=f"{g.label}, protected nodes only", s=22, linewidths=1.0,
                                marker=MARKERS[gi % len(MARKERS)], facecolors="none", edgecolors=color(gi))
            ok = np.isfinite(xf)
            axes[1].scatter(xf[ok], y[ok], **style)
        axes[0].set_xlabel("submask drift since the task ended\n(flip rate, mean over layers)")
        axes[1].set_xlabel("head-feature change since the task ended\n‖F − F_end‖ / ‖F_end‖")
        axes[0].set_ylabel(ylabel)
        for ax in axes:
            ax.axhline(0, color="0.6", linewidth=0.7, zorder=0)
            ax.set_xlim(left=min(0.0, ax.get_xlim()[0]))
        fig.tight_layout(w_pad=2.0)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(len(labels), 3),
                   frameon=False, title="one point per past task and run, at the end of the run")
        return save(fig, out_dir, f"{prefix}drift_forgetting", formats)


def _series(run: RunRecord, what: str) -> tuple[np.ndarray, np.ndarray]:
    steps, vals = [], []
    for p in _points(run):
        entries = p.analysis["tasks"]
        if what == "dormant":
            v = [layer_mean(e, "dormant") for e in entries]
        else:
            v = [e["features"]["effective_rank"] for e in entries]
        v = [x for x in v if x is not None and np.isfinite(x)]
        if v:
            steps.append(p.step)
            vals.append(float(np.mean(v)))
    return np.array(steps, dtype=float), np.array(vals, dtype=float)


def dormant_rank(groups: list[Group], out_dir: Path, prefix: str = "", formats: Formats = ("png", "pdf"),
                 skipped: list[str] | None = None) -> list[Path]:
    """Dormant share and effective rank over training, mean ± s.d. over each method's runs."""
    runs_all = [r for g in groups for r in g.plotted_runs if _points(r)]
    if not runs_all:
        _skip(skipped, "dormant_rank", "no run holds an analysis block")
        return []
    tau = _points(runs_all[0])[0].analysis.get("tau")
    tau_text = f"τ = {tau:g}" if isinstance(tau, (int, float)) else "τ unknown"
    panels = (("dormant", f"dormant units ({tau_text})\nmean over layers and seen tasks"),
              ("rank", "effective rank of head features\n(srank, δ = 0.01), mean over seen tasks"))
    lines = {what: [] for what, _ in panels}
    for what in lines:
        for gi, g in enumerate(groups):
            runs = [r for r in g.plotted_runs if _points(r)]
            if runs:
                lines[what].append((gi, g, runs, *align([_series(r, what) for r in runs])))
    if not any(np.isfinite(line[-2]).any() for ls in lines.values() for line in ls):
        _skip(skipped, "dormant_rank", "no finite dormant share or effective rank in any analysis block")
        return []
    with paper_style():
        fig, axes = plt.subplots(1, 2, figsize=(PAGE_WIDTH, 2.5), sharex=True)
        for ax, (what, ylabel) in zip(axes, panels, strict=True):
            drawn = False
            for gi, g, runs, x, mean, std in lines[what]:
                drawn |= _plot(ax, x, mean, std, gi, _n_label(g, runs))
            if not drawn:
                ax.text(0.5, 0.5, f"no finite {'dormant share' if what == 'dormant' else 'effective rank'}",
                        transform=ax.transAxes, ha="center", va="center")
            ax.set_ylabel(ylabel)
            ax.set_xlabel(_x_label(runs_all[0]))
        axes[0].set_ylim(bottom=min(0.0, axes[0].get_ylim()[0]))
        _legend_right(axes[1], title="mean ± s.d. over seeds", others=[axes[0]])
        fig.tight_layout()
        return save(fig, out_dir, f"{prefix}dormant_rank", formats)


def task_overlap(groups: list[Group], out_dir: Path, prefix: str = "", formats: Formats = ("png", "pdf"),
                 skipped: list[str] | None = None) -> list[Path]:
    """Jaccard overlap of the (non-dormant) units tasks use, at the last task end, per method."""
    mats = []
    for gi, g in enumerate(groups):
        stack = []
        for r in g.plotted_runs:
            ends = [p for p in _points(r) if p.analysis.get("overlap")]
            m = np.array(ends[-1].analysis["overlap"]["all"], dtype=float) if ends else np.empty((0, 0))
            if m.ndim == 2 and np.isfinite(m).any():  # a NaN-only matrix has nothing to show
                stack.append(m)
        if stack:
            n = max(len(m) for m in stack)
            full = np.full((len(stack), n, n), np.nan)
            for k, m in enumerate(stack):
                full[k, : len(m), : len(m)] = m
            mats.append((gi, g, len(stack), nan_mean_std(full)[0]))
    if not mats:
        _skip(skipped, "task_overlap", "no run holds an overlap matrix with a finite entry (written at task ends)")
        return []
    names = task_names([r for g in groups for r in g.plotted_runs])
    n_max = max(len(m) for *_, m in mats)
    side = max(1.6, 0.36 * n_max)
    with paper_style(), plt.rc_context({"axes.grid": False}):
        fig, axes = plt.subplots(1, len(mats), figsize=(min(PAGE_WIDTH, 0.9 + len(mats) * (side + 0.7)), side + 1.0),
                                 squeeze=False, layout="constrained")
        im = None
        for ax, (_gi, g, n_runs, m) in zip(axes[0], mats, strict=True):
            im = ax.imshow(np.ma.masked_invalid(m), cmap="viridis", vmin=0, vmax=1)
            if len(m) <= 12:
                for i in range(len(m)):
                    for j in range(len(m)):
                        if np.isfinite(m[i, j]):
                            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                                    color="white" if m[i, j] < 0.55 else "black")
            ticks = np.arange(len(m))
            labels = names[: len(m)] if len(m) <= 12 else [str(t + 1) for t in ticks]
            ax.set_xticks(ticks, labels, rotation=45, ha="right", rotation_mode="anchor")
            ax.set_yticks(ticks, labels)
            ax.set_title(f"{g.label} (n={n_runs})")
            ax.tick_params(length=0)
        if im is not None:
            cb = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.85, aspect=25, pad=0.02)
            cb.set_label("Jaccard overlap of used units")
            cb.outline.set_visible(False)
        return save(fig, out_dir, f"{prefix}task_overlap", formats)


ANALYSIS_FIGURES = {
    "drift_forgetting": drift_forgetting,
    "dormant_rank": dormant_rank,
    "task_overlap": task_overlap,
}
