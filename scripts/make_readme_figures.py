#!/usr/bin/env python
"""Make the README's report figures from real runs: docs/figures/report_<figure>.png.

    python scripts/make_readme_figures.py runs/atari_quick* runs/digits* --out docs/figures

Every RUN_DIR is a run directory or a folder of runs (a sweep); runs are grouped by method
and averaged over seeds exactly as `clrl report` does (the logic lives in clrl.report).
Figures the runs cannot support (e.g. the normalized reward without a fine-tuning
reference) are skipped with the reason printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clrl.errors import UserError
from clrl.report.figures import ALL, make_figures
from clrl.report.runs import group_runs, load_runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default="docs/figures", help="folder for report_<figure>.png (default docs/figures)")
    p.add_argument("--reference", metavar="RUN_DIR", help="fine-tuning run for P and the normalized reward")
    p.add_argument("--only", nargs="+", choices=sorted(ALL), help="make only these figures")
    p.add_argument("--pdf", action="store_true", help="also write PDFs")
    args = p.parse_args(argv)
    try:
        groups = group_runs(load_runs(args.runs, reference=args.reference))
    except UserError as exc:
        print(f"make_readme_figures: error: {exc}", file=sys.stderr)
        return 2
    skipped: list[str] = []
    formats = ("png", "pdf") if args.pdf else ("png",)
    paths = make_figures(groups, Path(args.out), prefix="report_", formats=formats, which=args.only, skipped=skipped)
    for s in skipped:
        print(f"skipped {s}", file=sys.stderr)
    for path in paths:
        print(path)
    return 0 if paths else 1


if __name__ == "__main__":
    sys.exit(main())
