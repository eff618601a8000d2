"""The ``results.json`` schema: one file per run from which every table and figure is made.

Contract 2 of DESIGN.md: a run writes ``R[i][j]`` (score on task j after training task i,
null where not evaluated), evaluation ``curves`` during training, the resolved config, seed
and library versions. The file is rewritten atomically after every evaluation, so a crash
never leaves a torn file; :func:`load_results` names the file and the problem when it is
corrupt or not a clrl results file.

Atari runs also keep every evaluated game (DESIGN.md, "Evaluation records"): ``R_games[i][j]``
lists the games behind ``R[i][j]`` as ``{"score", "frames", "truncated"}`` and ``R_ci[i][j]``
is the seeded 95% percentile-bootstrap interval of their mean (:func:`clrl.metrics.bootstrap_ci`),
null where R is null; ``baseline_games`` / ``baseline_ci`` do the same for the untrained network
and every curve point has ``games`` / ``ci`` (one entry per seen task). These fields are
optional (absent in supervised runs and in files written before them), so schema version 1
still reads every older file.

``curves[k].analysis`` (with ``eval.analysis: true``; :mod:`clrl.analysis.monitor`) is what the
network does with each seen task's probe set at that evaluation::

    {"tau": 0.025, "delta": 0.01, "seconds": 0.08,
     "tasks": [                           # every seen task that has a probe set, in order
       {"task": 0, "n": 256,              # probe inputs (kept at the task's end; the task being
        "reference": true,                #   trained uses current inputs, reference false)
        "layers": {"conv1": {             # each trunk activation after a Conv/Linear
            "hoyer": 0.41,                # mean Hoyer sparsity of the layer output
            "dead": 0.0,                  # share of units never active (LWTA/maxout: never win)
            "dormant": 0.03,              # share of tau-dormant units (ReDo)
            "drift": 0.12,                # submask flip rate vs the task's end (null: no reference)
            "drift_protected": 0.0,       # only with AGS-CL: the same over the nodes it protects
            "protected_share": 0.8},      #   for this task, and their share of the layer
          ...},
        "features": {"hoyer": .., "dead": .., "dormant": .., "effective_rank": 37,
                     "feature_change": 0.21}},   # ||F - F_end|| / ||F_end|| of head features
       ...],
     "overlap": null}                     # at task ends: {"tasks": [0, 1], "all": [[1, .6], ..],
                                          #   "layers": {"conv1": [[..]], ..}} (Jaccard of the
                                          #   non-dormant units each task uses)

It is null when the analysis is off, and between measured points with ``eval.analysis_every``
> 1. ``timings.analysis_seconds`` is the analysis's total cost.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from clrl import metrics
from clrl.allocator import malloc_mode
from clrl.errors import ConfigError, ResultsError
from clrl.io import atomic_write_text

SCHEMA = "clrl.results"
SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"

Score = float | None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class GameRecord(_Model):
    """One evaluated Atari game: raw score, length in emulator frames, cut by the frame cap."""

    score: float
    frames: int = Field(ge=0)
    truncated: bool


Interval = Annotated[list[Score], Field(min_length=2, max_length=2, description="[low, high]")]


class CurvePoint(_Model):
    """One evaluation during training: scores of every task seen so far (tasks 0..task)."""

    step: int = Field(description="env steps (RL) or examples/epochs (supervised) since the run began")
    task: int = Field(ge=0, description="index of the task being trained")
    scores: list[Score]
    wall_time: float | None = None
    games: list[list[GameRecord]] | None = Field(None, description="RL: per seen task, every scored game")
    ci: list[Interval | None] | None = Field(None, description="RL: per seen task, 95% bootstrap CI of the mean")

    analysis: dict[str, Any] | None = Field(None, description="representation analysis (module docstring)")


class Reference(_Model):
    """The fine-tuning run that normalizes this one (AGS-CL Sec. 4.2, Fig. 7a)."""

    run: str
    max_scores: list[Score] = Field(description="per task, the reference's best score over its curve")
    diag: list[Score] = Field(description="the reference's R[i][i] (A*_i for plasticity)")


class Results(_Model):
    schema_: Literal["clrl.results"] = Field(SCHEMA, alias="schema")
    schema_version: int = SCHEMA_VERSION
    kind: Literal["rl", "supervised"]
    name: str
    created: str
    updated: str
    versions: dict[str, str]
    git_commit: str | None = None
    seed: int
    config: dict[str, Any]
    tasks: list[str]
    R: list[list[Score]]
    R_games: list[list[list[GameRecord] | None]] | None = Field(None, description="RL: the games behind each R entry")
    R_ci: list[list[Interval | None]] | None = Field(None, description="RL: 95% bootstrap CI of each R entry")
    curves: list[CurvePoint] = []
    baseline: list[Score] | None = Field(None, description="scores of a randomly initialized model (FWT b)")
    baseline_games: list[list[GameRecord]] | None = None
    baseline_ci: list[Interval | None] | None = None
    reference: Reference | None = None
    metrics: dict[str, Any] = {}
    diagnostics: list[dict[str, Any]] = Field([], description="per finished task: the regularizer's diagnostics")
    timings: dict[str, Any] = {}
    status: Literal["running", "complete", "failed"] = "running"
    reason: str | None = None

    @model_validator(mode="after")
    def _square(self) -> Results:
        T = len(self.tasks)
        if len(self.R) != T or any(len(row) != T for row in self.R):
            raise ValueError(f"R must be {T} x {T} (one row and column per task)")
        for name in ("R_games", "R_ci"):
            M = getattr(self, name)
            if M is not None and (len(M) != T or any(len(row) != T for row in M)):
                raise ValueError(f"{name} must be {T} x {T}, as R")
        return self

    def R_matrix(self) -> np.ndarray:
        return metrics.as_matrix(self.R)

    def tasks_done(self) -> int:
        """Number of leading tasks whose row of R is filled in (tasks finished)."""
        done = 0
        for i, row in enumerate(self.R):
            if row[i] is None:
                break
            done = i + 1
        return done


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("clrl", "torch", "numpy", "stable-baselines3", "gymnasium", "ale-py", "scikit-learn"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    mode = malloc_mode()
    if mode is not None:
        out["malloc"] = mode  # clrl.allocator: "tuned" or "default"
    return out


def git_commit() -> str | None:
    """The commit of the clrl checkout this code runs from, if it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def new_results(kind: str, name: str, seed: int, config: dict, tasks: list[str]) -> Results:
    T = len(tasks)
    stamp = now()
    return Results(
        kind=kind,
        name=name,
        created=stamp,
        updated=stamp,
        versions=library_versions(),
        git_commit=git_commit(),
        seed=seed,
        config=config,
        tasks=list(tasks),
        R=[[None] * T for _ in range(T)],
    )


def _clean(obj: Any) -> Any:
    """NaN and inf become null (JSON has no NaN); numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def dumps(results: Results) -> str:
    data = _clean(results.model_dump(mode="python", by_alias=True))
    return json.dumps(data, indent=1, allow_nan=False) + "\n"


def save_results(path: str | os.PathLike, results: Results) -> None:
    """Write atomically (temp file, fsync, rename): readers see the old or the new file, never a torn one."""
    results.updated = now()
    atomic_write_text(path, dumps(results))


def load_results(path: str | os.PathLike) -> Results:
    """Read and validate a results.json (or a run directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise ResultsError(f"{path}: no results file here (is this a clrl run directory?)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path}: corrupt JSON ({exc.msg} at line {exc.lineno}); the file may be truncated") from exc
    except UnicodeDecodeError as exc:
        raise ResultsError(f"{path}: not a text file") from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ResultsError(f"{path}: not a clrl results file (missing 'schema: {SCHEMA}')")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ResultsError(
            f"{path}: results schema version {version!r}; this clrl reads version {SCHEMA_VERSION}"
        )
    try:
        return Results.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ResultsError(f"{path}: invalid results file: {where}: {first['msg']}") from exc


COMPARABLE_KEYS = ("tasks.games", "eval.episodes", "eval.deterministic", "eval.max_frames")
"""What a reference must share with the run it normalizes: a best score over other games, over
fewer games per point, with argmax instead of sampled actions or under another frame cap is
not the same quantity."""


def _dotted(config: dict[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


KIND_NAMES = {"rl": "an Atari (rl) run", "supervised": "a supervised run"}


def check_reference_kind(ref: Results, run: str | os.PathLike, kind: str) -> None:
    """ConfigError unless ``ref`` is a run of the same kind (an Atari run cannot normalize a
    supervised one, nor the other way round)."""
    if ref.kind != kind:
        raise ConfigError(
            f"reference {run} is {KIND_NAMES.get(ref.kind, ref.kind)}, but this run is "
            f"{KIND_NAMES.get(kind, kind)}; name a fine-tuning run of the same kind and tasks"
        )


def check_reference(ref: Results, run: str | os.PathLike, config: dict[str, Any]) -> None:
    """ConfigError unless ``ref`` is a finished run of the same kind, evaluated as ``config``
    (COMPARABLE_KEYS)."""
    if "kind" in config:
        check_reference_kind(ref, run, config["kind"])
    if ref.status != "complete":
        done = ref.tasks_done()
        why = f": {ref.reason}" if ref.reason else ""
        raise ConfigError(
            f"reference {run} is not a finished run (status {ref.status}, {done} of {len(ref.tasks)} "
            f"tasks done{why}); finish it with `clrl run --resume {run}` or name another reference"
        )
    for key in COMPARABLE_KEYS:
        mine, theirs = _dotted(config, key), _dotted(ref.config, key)
        if mine != theirs:
            raise ConfigError(
                f"reference {run} is not comparable: {key} is {theirs!r} there but {mine!r} in this "
                "run (a reference must play the same games under the same evaluation protocol)"
            )


def _check_reference_classes(ref: Results, run: str | os.PathLike, tasks: list[str], classes: list[list[int]]) -> None:
    """ConfigError unless each task the reference finished held ``classes[i]`` (its
    ``diagnostics[i]["classes"]``; older results without them pass): P divides by the reference's
    R[i][i], which must be the same task."""
    for i, (name, mine, diag) in enumerate(zip(tasks, classes, ref.diagnostics, strict=False)):
        theirs = diag.get("classes") if isinstance(diag, dict) else None
        if theirs is not None and [int(c) for c in theirs] != [int(c) for c in mine]:
            raise ConfigError(
                f"reference {run}: task {i} ({name}) holds classes {list(theirs)} there but {list(mine)} in this "
                "run (another seed, tasks.shuffle_classes or tasks.class_split); a reference must learn the same tasks"
            )


def reference_from_run(
    run: str | os.PathLike, tasks: list[str], config: dict[str, Any] | None = None, kind: str | None = None,
    classes: list[list[int]] | None = None,
) -> Reference:
    """Read a fine-tuning run's results and keep what normalization needs.

    The reference must cover the same tasks in the same order (its first tasks at least) and,
    given the normalized run's ``kind``, be of that kind. With the normalized run's ``config``
    (what ``clrl run`` passes) it must also be finished and evaluated the same way
    (:func:`check_reference`, which checks the kind too); reports of finished runs pass none.
    With ``classes`` (a supervised run's original class ids per task) every task the reference
    finished must have held the same classes: a Split CIFAR task's name (``c100-3``) does not say
    which, and another seed's blocks under the same names would give a wrong P.
    """
    ref = load_results(run)
    if kind is not None:
        check_reference_kind(ref, run, kind)
    if config is not None:
        check_reference(ref, run, config)
    if ref.tasks[: len(tasks)] != list(tasks)[: len(ref.tasks)]:
        raise ResultsError(
            f"reference {run} has tasks {ref.tasks}, which do not match this run's {list(tasks)}"
        )
    if classes is not None:
        _check_reference_classes(ref, run, tasks, classes)
    T = len(tasks)
    curve = [p.scores for p in ref.curves]
    max_scores = metrics.reference_max(curve, T) if curve else np.full(T, np.nan)
    diag = np.full(T, np.nan)
    Rr = ref.R_matrix()
    for i in range(min(T, len(Rr))):
        diag[i] = Rr[i, i]
    return Reference(run=str(run), max_scores=_clean(max_scores), diag=_clean(diag))


def compute_metrics(results: Results) -> dict[str, Any]:
    """Every metric clrl reports for one run, from its R, curves, baseline and reference."""
    R = results.R_matrix()
    ref = results.reference
    ref_diag = np.array(ref.diag, dtype=float) if ref else None
    b = np.array(results.baseline, dtype=float) if results.baseline is not None else None
    out: dict[str, Any] = metrics.summary(R, ref_diag=ref_diag, b=b)
    out["acc_after_each_task"] = metrics.acc_after_each_task(R)
    out["stability_per_task"] = metrics.stability_per_task(R).tolist()
    if ref is not None:
        ref_max = np.array([np.nan if v is None else v for v in ref.max_scores], dtype=float)
        out["plasticity_per_task"] = metrics.plasticity_per_task(R, ref_diag).tolist()
        out["normalized_R"] = metrics.normalize(R, ref_max).tolist()
        curve = metrics.accumulated_normalized_reward([p.scores for p in results.curves], ref_max)
        out["accumulated_normalized_reward"] = curve.tolist()
        out["final_accumulated_normalized_reward"] = float(curve[-1]) if len(curve) else float("nan")
    return _clean(out)
