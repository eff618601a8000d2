"""The report's tables: one row per method (aggregated over seeds) and one per run.

Method rows aggregate only complete runs (every entry of R's lower triangle present); a
partial run is listed in the per-run table with metrics on its finished tasks and named in
the method's notes. Mean ± sample std (ddof=1) for every group; with 3 or more seeds also
the IQM and its 95% stratified-bootstrap CI (:mod:`clrl.report.stats`).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clrl.io import atomic_write_text
from clrl.report import scores
from clrl.report.runs import Group, RunRecord
from clrl.report.stats import Aggregate, aggregate

# key, column label, what it is (for the Markdown legend)
METRICS: tuple[tuple[str, str, str], ...] = (
    ("acc", "ACC", "average score over all tasks after the last task (RA)"),
    ("bti", "BTI", "mean over all tasks of R[T-1][j] - R[j][j] (= RA - LA)"),
    ("bwt", "BWT", "mean over j < T-1 of R[T-1][j] - R[j][j]"),
    ("forgetting", "Forgetting", "mean over j < T-1 of best earlier score minus final score"),
    ("plasticity", "P", "mean R[i][i] / fine-tuning's R[i][i] (needs a reference)"),
    ("stability", "S", "mean R[T-1][j] / max over i >= j of R[i][j]"),
    ("norm_reward", "Norm. reward", "final accumulated normalized reward (needs a reference)"),
    ("fwt", "FWT", "mean over j >= 1 of R[j-1][j] - b[j] (needs random-init scores)"),
)
RL_ACC_LABEL = "ACC (return)"


@dataclass
class MethodRow:
    label: str
    regularizer: str
    n_seeds: int
    seeds: list[int]
    stats: dict[str, Aggregate]
    memory_bytes: float  # total: importance + anchor
    memory_importance_bytes: float
    notes: list[str] = field(default_factory=list)


@dataclass
class RunRow:
    path: str
    method: str
    seed: int
    status: str
    tasks_done: int
    n_tasks: int
    values: dict[str, float]
    note: str


def run_rows(groups: list[Group]) -> list[RunRow]:
    rows = []
    for g in groups:
        for r in g.runs:
            vals = scores.run_metrics(r)
            note = r.note
            if not r.complete:
                note = (note + "; " if note else "") + f"metrics over the first {max(r.done, 1)} of {r.T} tasks"
            rows.append(RunRow(str(r.path), g.label, r.res.seed, r.res.status, r.done, r.T, vals, note))
    return rows


SCALE_FREE = ("plasticity", "stability")


def iqm_over_tasks(kind: str, key: str) -> bool:
    """Whether a metric's IQM pools runs x tasks (per-task terms on one scale) or runs alone.

    Per-task terms share a scale for accuracies (supervised) and for the ratios P and S; raw
    RL returns do not (games differ by orders of magnitude), so there, and for the normalized
    reward (a sum over tasks), the IQM is over the runs' metric values.
    """
    return key in SCALE_FREE or (kind == "supervised" and key != "norm_reward")


def _terms_matrix(runs: list[RunRecord], key: str) -> np.ndarray | None:
    """runs x tasks matrix of a metric's per-task terms, or None to use the per-run values."""
    if not runs or not iqm_over_tasks(runs[0].res.kind, key):
        return None
    mats = []
    for r in runs:
        ref_diag, _ = scores.reference_arrays(r)
        b = scores._floats(r.res.baseline, r.T)
        terms = scores.per_task_terms(r.res.R_matrix(), ref_diag, b)
        if key not in terms:
            return np.full((len(runs), 1), np.nan)
        mats.append(terms[key])
    if len({m.shape for m in mats}) != 1:
        return None
    return np.vstack(mats)


def method_rows(groups: list[Group], reps: int = 2000, seed: int = 0) -> list[MethodRow]:
    rows = []
    for gi, g in enumerate(groups):
        runs = g.complete_runs
        per_run = [scores.run_metrics(r) for r in runs]
        stats = {}
        for mi, (key, _, _) in enumerate(METRICS):
            values = [m[key] for m in per_run]
            terms = _terms_matrix(runs, key) if len(runs) >= 3 else None
            stats[key] = aggregate(values, terms, reps=reps, seed=seed + 1000 * gi + mi)
        mem = [m["memory_bytes"] for m in per_run if np.isfinite(m["memory_bytes"])]
        imp = [m["memory_importance_bytes"] for m in per_run if np.isfinite(m["memory_importance_bytes"])]
        notes = [f"excluded, {r.note or 'incomplete'}" for r in g.runs if not r.complete]
        if runs and len(mem) < len(runs):
            notes.append(f"memory unknown for {len(runs) - len(mem)} of {len(runs)} runs")
        if not runs:
            notes.insert(0, "no complete run")
        rows.append(
            MethodRow(
                label=g.label,
                regularizer=g.regularizer,
                n_seeds=len(runs),
                seeds=g.seeds,
                stats=stats,
                memory_bytes=float(np.mean(mem)) if mem else float("nan"),
                memory_importance_bytes=float(np.mean(imp)) if imp else float("nan"),
                notes=notes,
            )
        )
    return rows


# --------------------------------------------------------------------------- formatting


def _decimals(scale: float) -> int:
    """3 decimals below 100, 1 below 1000, none (grouped thousands) above: RL returns and accuracies."""
    return 0 if scale >= 1000 else 1 if scale >= 100 else 3


def fmt(v: float | None, decimals: int | None = None) -> str:
    """A number for the tables ('-' for missing); decimals from its magnitude unless given."""
    if v is None or not math.isfinite(v):
        return "-"
    d = _decimals(abs(v)) if decimals is None else decimals
    return f"{v:,.{d}f}"


def fmt_bytes(n: float) -> str:
    """Decimal units (kB = 1000 B), matching the decade ticks of the memory figure."""
    if not math.isfinite(n):
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} GB"


def fmt_mean_std(a: Aggregate) -> str:
    """'mean ± s.d.' with one precision for both (set by the mean's magnitude)."""
    if a.n == 0 or not math.isfinite(a.mean):
        return "-"
    d = _decimals(abs(a.mean))
    return fmt(a.mean, d) if not math.isfinite(a.std) else f"{fmt(a.mean, d)} ± {fmt(a.std, d)}"


def fmt_iqm(a: Aggregate) -> str:
    if not math.isfinite(a.iqm):
        return "-"
    d = _decimals(max(abs(a.iqm), abs(a.lo), abs(a.hi)))
    return f"{fmt(a.iqm, d)} [{fmt(a.lo, d)}, {fmt(a.hi, d)}]"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(header: list[str], body: list[list[str]], left: tuple[str, ...] = ("Method", "Run", "Status", "Notes")) -> str:
    """A GitHub Markdown table; numbers right-aligned, the columns named in ``left`` left-aligned."""
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" if h in left else "---:" for h in header) + "|")
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def shown_metrics(rows: list[MethodRow]) -> list[tuple[str, str, str]]:
    """Metrics with a value for at least one method (P without any reference is left out)."""
    return [m for m in METRICS if any(r.stats[m[0]].n for r in rows)]


def methods_markdown(rows: list[MethodRow], kind: str) -> str:
    shown = shown_metrics(rows)
    label = {"acc": RL_ACC_LABEL} if kind == "rl" else {}
    header = ["Method", "Seeds", *[label.get(k, lab) for k, lab, _ in shown], "Importance mem.", "Total reg. mem.",
              "Notes"]
    body = [
        [r.label, seeds_cell(r), *[_with_n(fmt_mean_std(r.stats[k]), r.stats[k].n, r.n_seeds) for k, _, _ in shown],
         fmt_bytes(r.memory_importance_bytes), fmt_bytes(r.memory_bytes), "; ".join(r.notes)]
        for r in rows
    ]
    return markdown_table(header, body)


def seeds_cell(row: MethodRow) -> str:
    """The Seeds column: the number of distinct seeds, and the number of runs when a seed ran
    twice (a copied or re-run folder; every run is counted in the statistics and the notes say
    which)."""
    distinct = len(set(row.seeds))
    return str(row.n_seeds) if distinct == row.n_seeds else f"{distinct} ({row.n_seeds} runs)"


def _with_n(cell: str, n: int, n_seeds: int) -> str:
    """A cell over fewer runs than the row's seeds (the others had no value) says over how many."""
    return f"{cell} (n={n})" if 0 < n < n_seeds else cell


def iqm_markdown(rows: list[MethodRow], kind: str) -> str | None:
    rows = [r for r in rows if r.n_seeds >= 3]
    if not rows:
        return None
    shown = [m for m in shown_metrics(rows) if any(math.isfinite(r.stats[m[0]].iqm) for r in rows)]
    label = {"acc": RL_ACC_LABEL} if kind == "rl" else {}
    header = ["Method", "Seeds", *[label.get(k, lab) for k, lab, _ in shown]]
    body = [[r.label, seeds_cell(r), *[fmt_iqm(r.stats[k]) for k, _, _ in shown]] for r in rows]
    return markdown_table(header, body)


def runs_markdown(rows: list[RunRow], kind: str) -> str:
    keys = [m for m in METRICS if any(math.isfinite(r.values[m[0]]) for r in rows)]
    label = {"acc": RL_ACC_LABEL} if kind == "rl" else {}
    header = ["Run", "Method", "Seed", "Status", "Tasks done", *[label.get(k, lab) for k, lab, _ in keys], "Notes"]
    body = [
        [r.path, r.method, str(r.seed), r.status, f"{r.tasks_done}/{r.n_tasks}", *[fmt(r.values[k]) for k, _, _ in keys],
         r.note]
        for r in rows
    ]
    return markdown_table(header, body)


def _csv_text(header: list[str], body: list[list[object]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in body:
        w.writerow(["" if isinstance(v, float) and not math.isfinite(v) else v for v in row])
    return buf.getvalue()


def write_methods_csv(path: Path, rows: list[MethodRow]) -> None:
    """Every metric's mean, std, n, IQM and CI bounds (empty cell = not defined), atomically."""
    header = ["method", "regularizer", "n_seeds", "seeds"]
    for key, _, _ in METRICS:
        header += [f"{key}_mean", f"{key}_std", f"{key}_n", f"{key}_iqm", f"{key}_iqm_lo", f"{key}_iqm_hi"]
    header += ["memory_importance_bytes", "memory_bytes", "ci_method", "notes"]
    body = []
    for r in rows:
        line: list[object] = [r.label, r.regularizer, r.n_seeds, " ".join(map(str, r.seeds))]
        for key, _, _ in METRICS:
            a = r.stats[key]
            line += [a.mean, a.std, a.n, a.iqm, a.lo, a.hi]
        methods = sorted({a.ci_method for a in r.stats.values() if a.ci_method})
        line += [r.memory_importance_bytes, r.memory_bytes, "; ".join(methods), "; ".join(r.notes)]
        body.append(line)
    atomic_write_text(path, _csv_text(header, body))


def write_runs_csv(path: Path, rows: list[RunRow]) -> None:
    header = ["run", "method", "seed", "status", "tasks_done", "n_tasks", *[k for k, _, _ in METRICS], "memory_importance_bytes",
              "memory_bytes", "note"]
    body = [
        [r.path, r.method, r.seed, r.status, r.tasks_done, r.n_tasks, *[r.values[k] for k, _, _ in METRICS],
         r.values["memory_importance_bytes"], r.values["memory_bytes"], r.note]
        for r in rows
    ]
    atomic_write_text(path, _csv_text(header, body))
