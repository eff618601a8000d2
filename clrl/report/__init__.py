"""``clrl report``: tables and paper figures from results.json files, across methods and seeds.

    clrl report RUN_DIR... [--out DIR] [--reference RUN_DIR] [--reps N] [--seed N]

Each RUN_DIR is a run directory, its results.json, or a folder of runs (a sweep), searched
recursively. Runs are grouped by method (config up to seed, :mod:`clrl.report.runs`); the
report folder (default ``report/`` in the folder common to all RUN_DIRs) gets ``report.md``,
``methods.csv``, ``runs.csv`` and the figures of :mod:`clrl.report.figures` as PNG and PDF.

This module stays light (no matplotlib import) because the CLI imports it for every command.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["add_arguments", "main", "build_report", "single_run_report"]


def build_report(*args, **kwargs):  # noqa: ANN002, ANN003 - thin lazy wrapper, see build.build_report
    from clrl.report.build import build_report as _build

    return _build(*args, **kwargs)


build_report.__doc__ = "Tables and figures over runs; see :func:`clrl.report.build.build_report`."


def single_run_report(run_dir: str | os.PathLike) -> list[Path]:
    """Figures of one run into ``run_dir/figures`` (see :func:`clrl.report.build.single_run_report`)."""
    from clrl.report.build import single_run_report as _single

    return _single(run_dir)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Tables (Markdown, CSV) and figures (PNG, PDF) over run directories, grouped by method "
        "(runs whose configs differ only in seed are one method) and aggregated over seeds: mean ± s.d., "
        "and with 3 or more seeds the IQM with a 95% stratified-bootstrap CI (rliable)."
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run directory, its results.json, or a folder of runs (e.g. a sweep), searched recursively")
    parser.add_argument("--out", metavar="DIR",
                        help="report folder (default: report/ in the folder common to all RUN_DIRs)")
    parser.add_argument("--reference", metavar="RUN_DIR",
                        help="fine-tuning run used for P and the normalized reward instead of each run's own reference")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples for the IQM CIs (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    parser.add_argument("--group-by", metavar="KEYS",
                        help="comma-separated dotted config keys that define a method (default: the whole config "
                             "except seed, name, device, reference, output)")
    parser.add_argument("--ignore", action="append", default=[], metavar="KEY",
                        help="config key (dotted, a section ignores all below it) that does not distinguish methods; "
                             "repeatable")
    parser.add_argument("--no-figures", action="store_true", help="tables only")


def main(args: argparse.Namespace) -> int:
    from clrl.errors import UserError
    from clrl.report.build import build_report as _build

    if args.reps < 1:
        raise UserError(f"--reps must be at least 1, got {args.reps}")
    group_by = [k.strip() for k in args.group_by.split(",") if k.strip()] if args.group_by else None
    rep = _build(args.runs, out=args.out, reference=args.reference, reps=args.reps, seed=args.seed,
                 group_by=group_by, ignore=args.ignore, figures=not args.no_figures)
    for w in rep.warnings:
        print(f"warning: {w}", file=sys.stderr)
    _print_table(rep)
    n_fig = sum(1 for p in rep.files if p.suffix == ".png")
    print(f"report: {rep.out / 'report.md'} (+ methods.csv, runs.csv, {n_fig} figures as PNG and PDF)")
    return 0


def _print_table(rep) -> None:  # noqa: ANN001
    from rich.table import Table

    from clrl.report import tables
    from clrl.summary import table_console

    terminal = ("acc", "bti", "plasticity", "stability", "norm_reward")  # the rest: report.md
    shown = [m for m in tables.shown_metrics(rep.method_rows) if m[0] in terminal]
    table = Table(title="methods: mean ± s.d. over complete runs (all metrics in report.md)")
    table.add_column("method", no_wrap=True)
    table.add_column("seeds", justify="right")
    for _, lab, _ in shown:
        table.add_column(lab, justify="right")
    for r in rep.method_rows:
        table.add_row(r.label, tables.seeds_cell(r), *[tables.fmt_mean_std(r.stats[k]) for k, _, _ in shown])
    table_console().print(table)
