"""The table `clrl run` prints at the end: R and the run's metrics."""

from __future__ import annotations

import math
import os

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


CAP_MARK = "*"
FILE_WIDTH = 240  # columns of a table printed to a file or pipe


def table_console(**kwargs) -> Console:
    """A rich Console for clrl's tables. At a terminal it has the terminal's width; sent to a
    file or a pipe (a log, ``| tee``, CI) rich assumes 80 columns and cuts wider tables' cells
    to ``…``, so there it is as wide as the table needs (up to ``FILE_WIDTH``), unless
    ``COLUMNS`` says otherwise."""
    console = Console(**kwargs)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = FILE_WIDTH
    return console


def _cell(value: float | None, ci: list | None = None, games: list | None = None) -> str:
    """``mean ± half-width`` of the 95% interval, ``*`` when any of its games hit the frame cap."""
    with_ci = ci is not None and all(isinstance(x, (int, float)) and math.isfinite(x) for x in ci)
    digits = 1 if with_ci else 3  # game scores with an interval: a tenth is already below the noise
    text = _fmt(value, digits)
    if text == "-":
        return text
    if with_ci:
        text += f" ± {_fmt((ci[1] - ci[0]) / 2, digits)}"
    if games and any(g.truncated for g in games):
        text += CAP_MARK
    return text


def _at(rows: list | None, i: int, j: int | None = None):  # noqa: ANN202 - None-safe indexing
    if rows is None:
        return None
    row = rows[i]
    return row if j is None or row is None else row[j]


def r_table(results: Results, title: str | None = None) -> Table:
    what = "accuracy" if results.kind == "supervised" else "mean eval return"
    cap = any(g.truncated for row in (results.R_games or []) for cell in row for g in (cell or []))
    cap = cap or any(g.truncated for cell in (results.baseline_games or []) for g in cell)
    with_ci = results.R_ci is not None or results.baseline_ci is not None
    caption = "± half-width of the 95% bootstrap interval over the evaluation games" if with_ci else None
    if cap:
        frames = (results.config.get("eval") or {}).get("max_frames", "the")
        caption = (caption + "; " if caption else "") + f"{CAP_MARK} a game hit the frame cap ({frames} frames)"
    table = Table(title=title or f"R[i][j]: {what} on task j after training task i", caption=caption)
    table.add_column("after \\ on", style="bold")
    for name in results.tasks:
        table.add_column(name, justify="right")
    if results.baseline is not None:  # the untrained network: what "learned something" means
        cells = [_cell(v, _at(results.baseline_ci, j), _at(results.baseline_games, j))
                 for j, v in enumerate(results.baseline)]
        table.add_row("untrained", *cells, style="dim")
    for i, row in enumerate(results.R):
        cells = [_cell(v, _at(results.R_ci, i, j), _at(results.R_games, i, j)) for j, v in enumerate(row)]
        table.add_row(f"{i}: {results.tasks[i]}", *cells)
    return table


def metrics_table(results: Results) -> Table:
    table = Table(title=f"{results.name} ({results.status})")
    shown = [k for k in METRIC_LABELS if k in results.metrics]
    for key in shown:
        table.add_column(METRIC_LABELS[key], justify="right")
    table.add_row(*[_fmt(results.metrics.get(k)) for k in shown])
    return table


def _finite_interval(ci: list | None) -> tuple[float, float] | None:
    if ci is None or len(ci) != 2:
        return None
    if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in ci):
        return None
    return float(ci[0]), float(ci[1])


def learning_verdicts(results: Results) -> list[dict]:
    """Per task j: did training it move its score away from the untrained network's?

    Compares ``R[j][j]`` (right after training task j) with ``baseline[j]`` through their 95%
    bootstrap intervals over the evaluation games: ``"above"`` when R's interval lies wholly
    above the untrained one, ``"below"`` when wholly below, ``"overlap"`` otherwise (no
    evidence either way), ``None`` when an entry or an interval is missing.
    """
    out: list[dict] = []
    for j, task in enumerate(results.tasks):
        r = _at(results.R, j, j) if j < len(results.R) else None
        r_ci = _finite_interval(_at(results.R_ci, j, j)) if results.R_ci and j < len(results.R_ci) else None
        b = results.baseline[j] if results.baseline else None
        b_ci = _finite_interval(_at(results.baseline_ci, j)) if results.baseline_ci else None
        verdict = None
        if r_ci is not None and b_ci is not None:
            verdict = "above" if r_ci[0] > b_ci[1] else "below" if r_ci[1] < b_ci[0] else "overlap"
        out.append({"task": task, "trained": r, "trained_ci": r_ci, "untrained": b, "untrained_ci": b_ci,
                    "verdict": verdict})
    return out


_VERDICT_TEXT = {
    "above": "learned: above the untrained network, the intervals do not overlap",
    "below": "below the untrained network, the intervals do not overlap",
    "overlap": "not distinguishable from the untrained network (the intervals overlap)",
}


def learning_lines(results: Results) -> list[str]:
    """One plain line per task with both intervals and the verdict of :func:`learning_verdicts`."""
    lines = []
    for v in learning_verdicts(results):
        if v["verdict"] is None:
            continue
        (rl, rh), (bl, bh) = v["trained_ci"], v["untrained_ci"]
        lines.append(
            f"{v['task']}: right after training {_fmt(v['trained'], 1)} [{_fmt(rl, 1)}, {_fmt(rh, 1)}] vs untrained "
            f"{_fmt(v['untrained'], 1)} [{_fmt(bl, 1)}, {_fmt(bh, 1)}]: {_VERDICT_TEXT[v['verdict']]}"
        )
    return lines


def print_summary(results: Results, console: Console | None = None) -> None:
    console = console or table_console()
    console.print(r_table(results))
    lines = learning_lines(results)
    if lines:
        console.print("Did each task learn? R[j][j] vs the untrained network, 95% intervals:", markup=False)
        for line in lines:
            console.print(f"  {line}", highlight=False, markup=False)
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
