"""What a sweep prints: the plan (``--dry-run``), the trials' status, and the report at the end."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from clrl.summary import table_console
from clrl.sweep.manifest import Manifest, save_manifest
from clrl.sweep.spec import SweepPlan
from clrl.sweep.trial import disk_state

REPORT_DIR = "report"
ACTION = {"complete": "skip (complete)", "partial": "resume", "started": "restart", "new": "run",
          "scored": "refuse (scores kept, checkpoint missing)"}


def print_plan(plan: SweepPlan, console: Console | None = None) -> None:
    """The trials in the order they start, what each would do, and its reference."""
    console = console or table_console()
    res = plan.spec.resources
    table = Table(title=f"sweep {plan.spec.name}: {len(plan.trials)} trials into {plan.out}")
    for col in ("#", "trial", "method", "seed", "reference", "action"):
        table.add_column(col, justify="right" if col in ("#", "seed") else "left")
    for i, t in enumerate(plan.trials, 1):
        action = ACTION[disk_state(plan.trial_dir(t))]
        table.add_row(str(i), t.name, t.method, str(t.seed), "(is one)" if t.is_reference else t.reference or "-", action)
    console.print(table)
    console.print(f"per trial: {res.cpu:g} CPU, {res.gpu:g} GPU; retries {plan.spec.retries}; nothing was run (--dry-run)")


def print_status(manifest: Manifest, console: Console | None = None) -> None:
    console = console or table_console()
    table = Table(title=f"sweep {manifest.name}")
    for col in ("trial", "status", "starts", "seconds", "ACC"):
        table.add_column(col, justify="left" if col in ("trial", "status") else "right")
    style = {"complete": "green", "failed": "red", "blocked": "yellow"}
    for t in manifest.trials:
        status = f"[{style.get(t.status, 'white')}]{t.status}[/]"
        seconds = f"{t.seconds:.1f}" if t.seconds is not None else "-"
        acc = f"{t.acc:.4g}" if t.acc is not None else "-"
        table.add_row(t.name, status, str(t.attempts), seconds, acc)
    console.print(table)


def report_sweep(plan: SweepPlan, manifest: Manifest, figures: bool = True) -> int:
    """``clrl report <sweep> --out <sweep>/report`` over every trial with a results.json.

    Called through the CLI entry point so the sweep prints exactly what ``clrl report`` prints;
    a failing report never loses the trials (they are on disk), it only costs the summary.
    """
    from clrl.cli import main as clrl_main

    dirs = [str(plan.trial_dir(t.name)) for t in manifest.trials if (plan.trial_dir(t.name) / "results.json").is_file()]
    if not dirs:
        print("clrl sweep: no trial has results yet; no report", file=sys.stderr)
        return 1
    out = plan.out / REPORT_DIR
    try:
        code = clrl_main(["report", *dirs, "--out", str(out), *([] if figures else ["--no-figures"])])
    except SystemExit as exc:  # argparse of a report version without these options
        code = int(exc.code or 0)
    if code == 0:
        manifest.report = REPORT_DIR
        save_manifest(plan.out, manifest)
    else:
        print(f"clrl sweep: warning: the report failed (exit {code}); the trials are complete on disk: "
              f"run `clrl report {plan.out} --out {out}` to retry", file=sys.stderr)
    return code
