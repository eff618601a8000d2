"""The table `clrl run` prints at the end: R and the run's metrics."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from clrl.analysis.monitor import ANALYSIS_COLUMNS
from clrl.analysis.monitor import summary_rows as analysis_rows
from clrl.results import Results

METRIC_LABELS = {
    "acc": "ACC",
    "bwt": "BWT",
    "bti": "BTI",
    "forgetting": "Forgetting",
    "plasticity": "P",
    "stability": "S",
    "fwt": "FWT",
    "final_accumulated_normalized_reward": "Norm. reward",
}


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.1f}"  # game scores: 1,690.0 rather than 1.69e+03
    return f"{value:.{digits}f}"


def r_table(results: Results, title: str | None = None) -> Table:
    what = "accuracy" if results.kind == "supervised" else "mean eval return"
    table = Table(title=title or f"R[i][j]: {what} on task j after training task i")
    table.add_column("after \\ on", style="bold")
    for name in results.tasks:
        table.add_column(name, justify="right")
    if results.baseline is not None:  # the untrained network: what "learned something" means
        table.add_row("untrained", *[_fmt(v) for v in results.baseline], style="dim")
    for i, row in enumerate(results.R):
        table.add_row(f"{i}: {results.tasks[i]}", *[_fmt(v) for v in row])
    return table


def metrics_table(results: Results) -> Table:
    table = Table(title=f"{results.name} ({results.status})")
    shown = [k for k in METRIC_LABELS if k in results.metrics]
    for key in shown:
        table.add_column(METRIC_LABELS[key], justify="right")
    table.add_row(*[_fmt(results.metrics.get(k)) for k in shown])
    return table


def print_summary(results: Results, console: Console | None = None) -> None:
    console = console or Console()
    console.print(r_table(results))
    console.print(metrics_table(results))
    rows = analysis_rows(results)
    if rows:
        table = Table(title="inside the network at the last evaluation (clrl.analysis)",
                      caption="drift: submask flips since the task ended; protected: on AGS-CL's protected nodes; "
                              "feat. change: of head features; srank, hoyer: of head features")
        for k, col in enumerate(ANALYSIS_COLUMNS):
            table.add_column(col, justify="left" if k == 0 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    if results.status != "complete":
        console.print(f"[yellow]status: {results.status}[/] {results.reason or ''}")
