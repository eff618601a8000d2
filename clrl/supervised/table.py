"""The Split Digits table: fine-tuning, EWC, MAS and AGS-CL over seeds, as Markdown.

Each method's config (``configs/split_digits*.yaml``) runs once per seed through
:func:`clrl.supervised.trainer.run_experiment` into ``<out>/<method>/seed<k>``; every
regularized run uses the fine-tuning run of the same seed as its ``reference``, so its
plasticity P = mean_i R[i][i] / R_ft[i][i] (AGS-CL sec. 4.1, Analysis 3). Fine-tuning's own P is 1 by
definition. A run that is already complete in its folder is read back instead of re-run, unless
its config or its reference's scores changed since (then it is run again).
Columns are mean ± sample standard deviation (ddof 1) over seeds, computed with
:mod:`clrl.metrics` from each run's R.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clrl import metrics
from clrl.config import SupervisedConfig, load_config
from clrl.results import Results, load_results
from clrl.rundir import prepare_run_dir

__all__ = ["METHODS", "COLUMNS", "run_method", "run_table", "table_rows", "markdown_table"]

# method label -> config file name; fine-tuning first (it is every other run's reference)
METHODS: dict[str, str] = {
    "Fine-tuning": "split_digits_finetune.yaml",
    "EWC": "split_digits_ewc.yaml",
    "MAS": "split_digits_mas.yaml",
    "AGS-CL": "split_digits.yaml",
}
COLUMNS: dict[str, str] = {"acc": "ACC", "bwt": "BWT", "forgetting": "Forgetting", "plasticity": "P", "stability": "S"}


def run_method(config: str | os.PathLike, out: Path, seed: int, reference: Path | None, progress: bool = False) -> Results:
    """One run of ``config`` with ``seed`` (and ``reference``) into ``out``, or its saved results
    when they are complete and still the same run (see :func:`_still_valid`)."""
    overrides = [f"seed={seed}", f"output.progress={str(progress).lower()}", "output.figures=false"]
    if reference is not None:
        overrides.append(f"reference={reference}")
    cfg = load_config(config, overrides)
    if (out / "results.json").is_file():
        done = load_results(out)
        if done.status == "complete" and _still_valid(done, cfg, reference):
            return done
    rd = prepare_run_dir(cfg, out=out, overwrite=True)
    from clrl.supervised.trainer import run_experiment

    return run_experiment(cfg, rd)


def _still_valid(done: Results, cfg: SupervisedConfig, reference: Path | None) -> bool:
    """Whether saved results answer this run: the same experiment (every config key that defines
    it, as a resume checks; so an edited config file is run again) and, for P, the same
    reference scores (a fine-tuning run that was redone makes its dependants stale)."""
    from clrl.errors import CheckpointError
    from clrl.lifecycle import check_same_experiment
    from clrl.results import reference_from_run

    try:
        check_same_experiment(done.config, cfg, "results.json")
    except CheckpointError:
        return False
    if reference is None or done.reference is None:
        return reference is None and done.reference is None
    now = reference_from_run(reference, done.tasks, kind=cfg.kind)
    return (now.diag, now.max_scores) == (done.reference.diag, done.reference.max_scores)


def run_table(configs: Path, out: Path, seeds: Sequence[int], progress: bool = False) -> dict[str, list[Results]]:
    """Every method for every seed; returns method label -> results per seed."""
    runs: dict[str, list[Results]] = {m: [] for m in METHODS}
    for seed in seeds:
        ft_dir = out / "finetune" / f"seed{seed}"
        for label, file in METHODS.items():
            key = Path(file).stem.replace("split_digits", "").lstrip("_") or "agscl"
            where = out / key / f"seed{seed}"
            ref = None if label == "Fine-tuning" else ft_dir
            runs[label].append(run_method(configs / file, where, seed, ref, progress))
    return runs


def _scores(res: Results) -> dict[str, float]:
    R = res.R_matrix()
    if res.reference is not None:
        p = metrics.plasticity(R, np.array([np.nan if v is None else v for v in res.reference.diag], dtype=float))
    else:  # the reference itself: P = 1 by definition
        p = metrics.plasticity(R, np.diag(R))
    return {"acc": metrics.acc(R), "bwt": metrics.bwt(R), "forgetting": metrics.forgetting(R),
            "plasticity": p, "stability": metrics.stability(R)}


def table_rows(runs: dict[str, list[Results]]) -> dict[str, dict[str, tuple[float, float]]]:
    """method -> column -> (mean, sample s.d.) over seeds."""
    rows = {}
    for label, results in runs.items():
        per_seed = [_scores(r) for r in results]
        rows[label] = {}
        for key in COLUMNS:
            values = np.array([s[key] for s in per_seed], dtype=float)
            sd = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
            rows[label][key] = (float(values.mean()), sd)
    return rows


def _cell(mean: float, sd: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.3f} ± {sd:.3f}" if not math.isnan(sd) else f"{mean:.3f}"


def markdown_table(rows: dict[str, dict[str, tuple[float, float]]]) -> str:
    head = "| Method | " + " | ".join(COLUMNS.values()) + " |"
    rule = "|---|" + "---:|" * len(COLUMNS)
    body = ["| " + label + " | " + " | ".join(_cell(*rows[label][k]) for k in COLUMNS) + " |" for label in rows]
    return "\n".join([head, rule, *body])
