"""Putting a report together: load runs, write report.md, methods.csv, runs.csv and figures."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clrl import __version__
from clrl.errors import UserError
from clrl.io import atomic_write_text
from clrl.report import figures as figs
from clrl.report import scores, tables
from clrl.report.runs import (
    REPORT_MARKER,
    Group,
    RunRecord,
    completeness_note,
    duplicate_seed_notes,
    group_runs,
    load_runs,
)
from clrl.report.stats import load_rliable
from clrl.results import load_results, now


@dataclass
class Report:
    """What :func:`build_report` wrote and what it had to say about the runs."""

    out: Path
    groups: list[Group]
    method_rows: list[tables.MethodRow]
    run_rows: list[tables.RunRow]
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def default_out(paths: Sequence[str | os.PathLike]) -> Path:
    """``report/`` inside the deepest folder common to all RUN_DIR arguments.

    ``clrl report runs/a runs/b`` -> ``runs/report``; ``clrl report sweeps/grid`` ->
    ``sweeps/grid/report``; ``clrl report runs/a`` -> ``runs/a/report``.
    """
    dirs = [Path(p).parent if Path(p).is_file() else Path(p) for p in paths]
    common = Path(os.path.commonpath([os.path.abspath(d) for d in dirs]))
    try:
        common = common.relative_to(Path.cwd())
    except ValueError:
        pass
    return common / "report"


def build_report(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    reference: str | os.PathLike | None = None,
    reps: int = 2000,
    seed: int = 0,
    group_by: Sequence[str] | None = None,
    ignore: Sequence[str] = (),
    figures: bool = True,
    formats: Sequence[str] = ("png", "pdf"),
) -> Report:
    """Tables and figures over the runs below ``paths`` (see ``clrl report --help``)."""
    unreadable: list[str] = []
    records = load_runs(paths, reference=reference, unreadable=unreadable)
    out_dir = Path(out) if out is not None else default_out(paths)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: is a file, not a folder; give a folder for the report")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the report folder {out_dir}: {exc.strerror or exc}") from exc
    atomic_write_text(out_dir / REPORT_MARKER, "clrl report folder: `clrl report` skips it when searching for runs\n")
    groups = group_runs(records, group_by=group_by, ignore=ignore)
    kind = records[0].res.kind

    warnings = [f"skipped, unreadable: {u}" for u in unreadable]
    warnings += [r.note for r in records if r.note]
    warnings += duplicate_seed_notes(groups)
    for r in records:
        warnings += scores.stored_mismatches(r, scores.run_metrics(r))
    mrows = tables.method_rows(groups, reps=reps, seed=seed)
    rrows = tables.run_rows(groups)
    rep = Report(out_dir, groups, mrows, rrows, warnings=warnings)

    tables.write_methods_csv(out_dir / "methods.csv", mrows)
    tables.write_runs_csv(out_dir / "runs.csv", rrows)
    rep.files += [out_dir / "methods.csv", out_dir / "runs.csv"]
    if figures:
        rep.files += figs.make_figures(groups, out_dir, formats=formats, skipped=rep.skipped)
    md = out_dir / "report.md"
    atomic_write_text(md, _markdown(rep, records, kind, reps, seed))
    rep.files.insert(0, md)
    return rep


def _markdown(rep: Report, records: list[RunRecord], kind: str, reps: int, seed: int) -> str:
    n_complete = sum(r.complete for r in records)
    lines = [
        "# clrl report",
        "",
        f"{len(records)} {kind} runs ({n_complete} complete) in {len(rep.groups)} methods; made {now()} "
        f"by clrl {__version__}. Metrics are recomputed from each run's R matrix (definitions: clrl's "
        "README, \"Metrics\"); method rows use complete runs only.",
        "",
    ]
    if rep.warnings:
        lines += ["## Warnings", "", *[f"- {w}" for w in rep.warnings], ""]
    lines += ["## Methods: mean ± s.d. over seeds", "", tables.methods_markdown(rep.method_rows, kind), ""]
    shown = tables.shown_metrics(rep.method_rows)
    lines += [f"- **{lab}**: {what}" for _, lab, what in shown]
    lines += ["- **Importance mem.**: bytes of importance weights the regularizer keeps after the last task "
              "(AGS-CL Fig. 6a); **Total reg. mem.** adds the anchor copy of the parameters",
              "- s.d. is the sample standard deviation (ddof = 1)."]
    if any(r.self_reference for r in records):
        lines.append("- Fine-tuning runs without a stored reference are their own reference (P = 1 by definition).")
    if kind == "rl":
        lines.append("- RL scores are raw game returns; games differ in scale, so ACC mixes scales "
                     "(the normalized reward does not).")
    lines.append("")
    iqm_md = tables.iqm_markdown(rep.method_rows, kind)
    if iqm_md:
        _, how = load_rliable()
        lines += [
            "## IQM with 95% stratified-bootstrap confidence intervals (methods with 3 or more seeds)",
            "",
            iqm_md,
            "",
            f"Interquartile mean (25% trimmed) of {_iqm_scope(kind)}; percentile 95% CI from {reps} "
            f"bootstrap resamples of the runs (within each task when pooled over tasks), seed {seed}; "
            f"computed with {how}.",
            "",
        ]
    lines += ["## Runs", "", tables.runs_markdown(rep.run_rows, kind), ""]
    pngs = [p for p in rep.files if p.suffix == ".png"]
    if pngs or rep.skipped:
        lines += ["## Figures", ""]
        for p in pngs:
            lines += [f"![{p.stem}]({p.name}) ([pdf]({p.with_suffix('.pdf').name}))", ""]
        lines += [f"- not drawn: {s}" for s in rep.skipped]
        lines.append("")
    return "\n".join(lines)


def _iqm_scope(kind: str) -> str:
    pooled = [lab for key, lab, _ in tables.METRICS if tables.iqm_over_tasks(kind, key)]
    runs_only = [lab for key, lab, _ in tables.METRICS if not tables.iqm_over_tasks(kind, key)]
    why = " (raw game returns differ in scale between tasks)" if kind == "rl" else ""
    return (f"the per-task terms over runs x tasks for {', '.join(pooled)}, and of the runs' values for "
            f"{', '.join(runs_only)}{why}")


def single_run_report(run_dir: str | os.PathLike, skipped: list[str] | None = None) -> list[Path]:
    """The figures of one run, into ``run_dir/figures``: R heatmap, eval curves, and when the
    run holds what they need, sparsity/used capacity, the normalized reward and the representation
    analysis (drift vs forgetting, dormant share and rank, task overlap). Returns the paths; each
    figure is drawn on its own, so one that fails is reported and the others are still drawn
    (:func:`clrl.report.figures.draw_each`), and ``skipped`` gets why one was not."""
    run_dir = Path(run_dir)
    res = load_results(run_dir)
    rec = RunRecord(run_dir, res, res.reference, completeness_note(run_dir, res))
    groups = group_runs([rec])
    out = run_dir / "figures"
    draws = {
        "R": lambda: figs.r_heatmaps(groups, out, stem="R", skipped=skipped),
        "eval_curves": lambda: figs.eval_curves(groups, out, skipped=skipped),
        "sparsity_capacity": lambda: figs.sparsity_capacity(groups, out, skipped=skipped),
        "normalized_reward": lambda: figs.normalized_reward(groups, out, skipped=skipped),
    }
    from clrl.report.analysis_figures import ANALYSIS_FIGURES, has_analysis

    if has_analysis(groups):
        for name, fn in ANALYSIS_FIGURES.items():
            draws[name] = functools.partial(fn, groups, out, skipped=skipped)
    return figs.draw_each(draws, skipped)
