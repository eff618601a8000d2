"""The committed data of the Atari forgetting experiment: runs, the experiment record, pilots.

``docs/data/atari_forgetting/`` holds::

    <method>/seed<k>/results.json   each trial's results.json (no checkpoints), copied from the sweep
    experiment.json                 the command(s), their wall time, the trials of the sweep
    pilots.yaml                     the pilot runs that chose the setting (filled in by hand)

Runs are read as plain JSON and only ``R``, ``tasks``, ``curves``, ``baseline``, ``config``,
``seed``, ``status`` and ``timings`` are used, so results files with more fields (per-game
records, intervals) read the same.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import Field, ValidationError

from clrl.config import Strict, format_validation_error
from clrl.errors import ConfigError, ResultsError, UserError
from clrl.io import atomic_write_text
from clrl.metrics import as_matrix
from clrl.report.runs import METHOD_NAMES, METHOD_ORDER

DATA_SUBDIR = Path("data") / "atari_forgetting"
RESULTS_FILE = "results.json"
EXPERIMENT_FILE = "experiment.json"
PILOTS_FILE = "pilots.yaml"
EXPERIMENT_SCHEMA = "clrl.atari_forgetting"
#: config keys that may differ between the runs of one experiment (everything else is the setting)
PER_RUN_KEYS = ("name", "seed", "reference", "output", "regularizer", "device")


@dataclass(frozen=True)
class RunData:
    """What the document reads from one run's results.json."""

    method: str  # the folder name under docs/data/atari_forgetting (the sweep's method)
    seed: int
    path: Path
    tasks: list[str]
    R: np.ndarray
    curve_steps: np.ndarray
    curve_tasks: np.ndarray
    curve_scores: list[list[float | None]]
    baseline: np.ndarray | None
    config: dict[str, Any]
    status: str
    wall_seconds: float | None

    @property
    def regularizer(self) -> str:
        reg = self.config.get("regularizer")
        return str(reg.get("name", "none")) if isinstance(reg, dict) else "none"

    @property
    def T(self) -> int:
        return len(self.tasks)


def load_run(path: str | os.PathLike, method: str) -> RunData:
    """Read one results.json; a foreign, torn or unfinished file is a ResultsError naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such results file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: not a readable JSON results file ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != "clrl.results":
        raise ResultsError(f"{path}: not a clrl results file (missing 'schema: clrl.results')")
    if data.get("kind") != "rl":
        raise ResultsError(f"{path}: a {data.get('kind')!r} run; the Atari forgetting experiment reads RL runs")
    try:
        tasks = [str(t) for t in data["tasks"]]
        R = as_matrix(data["R"])
        curves = data.get("curves") or []
        steps = np.array([int(p["step"]) for p in curves], dtype=np.int64)
        curve_tasks = np.array([int(p["task"]) for p in curves], dtype=np.int64)
        scores = [list(p["scores"]) for p in curves]
        base = data.get("baseline")
        baseline = np.array([np.nan if v is None else v for v in base], dtype=float) if base is not None else None
        seed = int(data["seed"])
        config = dict(data["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ResultsError(f"{path}: invalid results file ({type(exc).__name__}: {exc})") from None
    if R.shape != (len(tasks), len(tasks)):
        raise ResultsError(f"{path}: R is {R.shape[0]} x {R.shape[1]} but the run has {len(tasks)} tasks")
    wall = (data.get("timings") or {}).get("wall_seconds")
    return RunData(
        method=method, seed=seed, path=path, tasks=tasks, R=R, curve_steps=steps, curve_tasks=curve_tasks,
        curve_scores=scores,
        baseline=baseline, config=config, status=str(data.get("status")),
        wall_seconds=float(wall) if isinstance(wall, (int, float)) else None,
    )


def run_path(data_dir: Path, method: str, seed: int) -> Path:
    return data_dir / method / f"seed{seed}" / RESULTS_FILE


def method_sort_key(run: RunData) -> tuple:
    return (METHOD_ORDER.get(run.regularizer, 9), run.method, run.seed)


def method_label(method: str, regularizer: str) -> str:
    """``Fine-tuning`` for the sweep's plain methods; the folder name beside it for grid points."""
    name = METHOD_NAMES.get(regularizer, regularizer)
    plain = {"none": ("finetune", "none", "fine-tuning", "finetuning"), "ewc": ("ewc",), "mas": ("mas",),
             "agscl": ("agscl", "ags-cl")}
    return name if method.lower() in plain.get(regularizer, ()) else f"{name} [{method}]"


def load_data(data_dir: str | os.PathLike, trials: list[tuple[str, int]] | None = None) -> tuple[list[RunData], list[str]]:
    """The experiment's runs (``trials`` = (method, seed) pairs, default all found), and notes.

    A run that is listed but missing, or found but not listed, is named in the notes rather
    than silently counted or dropped.
    """
    data_dir = Path(data_dir)
    found = sorted(data_dir.glob(f"*/seed*/{RESULTS_FILE}"))
    notes: list[str] = []
    runs: list[RunData] = []
    if trials is None:
        wanted = [(p.parent.parent.name, p) for p in found]
    else:
        wanted = [(m, run_path(data_dir, m, s)) for m, s in trials]
        listed = {p.resolve() for _, p in wanted}
        for p in found:
            if p.resolve() not in listed:
                notes.append(f"{p} is not a trial of the recorded experiment and is left out")
    for method, p in wanted:
        if not p.is_file():
            notes.append(f"{p}: missing (the trial has not completed)")
            continue
        run = load_run(p, method)
        folder_seed = p.parent.name.removeprefix("seed")
        if folder_seed != str(run.seed):
            raise ResultsError(f"{p}: holds seed {run.seed}, but its folder says seed {folder_seed}")
        if run.status != "complete":
            notes.append(f"{p}: status {run.status!r}, left out")
            continue
        runs.append(run)
    if not runs:
        raise UserError(f"{data_dir}: no complete results.json under <method>/seed<k>/ to report")
    check_same_setting(runs)
    return sorted(runs, key=method_sort_key), notes


def setting_of(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in PER_RUN_KEYS}


def _first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            diff = _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if diff:
                return diff
        return None
    return None if a == b else f"{prefix[:-1]}: {a!r} vs {b!r}"


def check_same_setting(runs: list[RunData]) -> None:
    """Every run must share games, budget, net, PPO, env and evaluation; only the method and seed differ."""
    first = runs[0]
    for run in runs[1:]:
        if run.tasks != first.tasks:
            raise UserError(f"{run.path} has tasks {run.tasks}, {first.path} has {first.tasks}: not one experiment")
        diff = _first_difference(setting_of(first.config), setting_of(run.config))
        if diff:
            raise UserError(f"{run.path} and {first.path} differ in {diff}: not one experiment; "
                            "keep one setting under the data folder")
    by_method: dict[str, str] = {}
    for run in runs:
        reg = json.dumps(run.config.get("regularizer"), sort_keys=True)
        if by_method.setdefault(run.method, reg) != reg:
            raise UserError(f"{run.path}: method {run.method} has another regularizer config than its other seeds")


# --------------------------------------------------------------------------- experiment record


def new_record(sweep_file: str) -> dict[str, Any]:
    return {"schema": EXPERIMENT_SCHEMA, "sweep_file": sweep_file, "trials": [], "invocations": [],
            "wall_seconds": 0.0}


def load_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The experiment record, or None when there is none yet."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != EXPERIMENT_SCHEMA:
        raise ResultsError(f"{path}: not an experiment record (missing 'schema: {EXPERIMENT_SCHEMA}')")
    return data


def save_record(path: str | os.PathLike, record: dict[str, Any]) -> None:
    record["wall_seconds"] = float(sum(float(i.get("seconds") or 0.0) for i in record.get("invocations", [])))
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")


def _stamp(text: str) -> float | None:
    try:
        return _dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def close_killed_invocations(record: dict[str, Any], sweep_log: Path) -> int:
    """Give every invocation that never recorded its time (it was killed) an estimate; return how many.

    The estimate is from its start to the last line of the sweep log written before the next
    invocation started (a lower bound: the kill came after that line).
    """
    invocations = record.get("invocations") or []
    stamps: list[float] = []
    if sweep_log.is_file():
        for line in sweep_log.read_text(errors="replace").splitlines():
            t = _stamp(line.split(" ", 1)[0])
            if t is not None:
                stamps.append(t)
    closed = 0
    for k, inv in enumerate(invocations):
        if inv.get("seconds") is not None:
            continue
        start = _stamp(str(inv.get("started")))
        nxt = _stamp(str(invocations[k + 1].get("started"))) if k + 1 < len(invocations) else None
        inside = [t for t in stamps if start is not None and t >= start and (nxt is None or t < nxt)]
        inv["seconds"] = max(inside) - start if inside else 0.0
        inv["killed"] = True
        closed += 1
    return closed


def record_trials(record: dict[str, Any] | None) -> list[tuple[str, int]] | None:
    if not record or not record.get("trials"):
        return None
    return [(str(t["method"]), int(t["seed"])) for t in record["trials"]]


# --------------------------------------------------------------------------- pilots


class Pilot(Strict):
    """One pilot run (or group of runs) that led to the reported setting."""

    name: str = Field(description="short label")
    games: list[str] | None = None
    steps_per_task: int | None = None
    methods: list[str] | None = None
    seeds: list[int] | None = None
    changes: dict[str, Any] = Field({}, description="other keys that differed from the reported setting")
    command: str | None = None
    wall_time: str | None = None
    outcome: str = Field(description="what it showed and what was decided")


class Pilots(Strict):
    pilots: list[Pilot] = []
    discussion: str | None = Field(None, description="free text: why a method did or did not help, what was tried")


def load_pilots(path: str | os.PathLike) -> Pilots:
    """The pilots file (an empty list when absent); a typo in a key is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        return Pilots()
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    try:
        return Pilots.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, Pilots, str(path))) from None
