"""Finding, loading and grouping run directories for a report.

A method is everything in a run's config except what only tells seeds or outputs apart
(``seed``, ``name``, ``device``, ``reference``, ``output.*``): runs that differ only in seed
form one group, and a group's label names the regularizer plus the config keys that tell it
apart from the other groups (``AGS-CL (lamb=100)``, ``EWC``). ``group_by`` replaces this
with an explicit list of dotted keys; ``ignore`` adds keys to leave out.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clrl.errors import ResultsError, UserError
from clrl.results import RESULTS_FILE, Reference, Results, load_results, reference_from_run

REPORT_MARKER = ".clrl-report"
"""File written into every report folder, so that `clrl report runs/*` skips earlier reports."""

IGNORED_KEYS = ("seed", "name", "device", "reference", "output")
METHOD_NAMES = {"none": "Fine-tuning", "ewc": "EWC", "mas": "MAS", "agscl": "AGS-CL"}
METHOD_ORDER = {"none": 0, "ewc": 1, "mas": 2, "agscl": 3}


@dataclass
class RunRecord:
    """One loaded run and what the report must say about its completeness."""

    path: Path
    res: Results
    reference: Reference | None
    note: str = ""  # "" when complete; otherwise a plain sentence about what is missing
    self_reference: bool = False  # a fine-tuning run normalized by itself

    @property
    def T(self) -> int:
        return len(self.res.tasks)

    @property
    def done(self) -> int:
        return self.res.tasks_done()

    @property
    def complete(self) -> bool:
        """Every entry a metric reads (R's lower triangle, diagonal included) is present."""
        R = self.res.R_matrix()
        return bool(np.isfinite(R[np.tril_indices(self.T)]).all())

    @property
    def regularizer(self) -> str:
        reg = self.res.config.get("regularizer") or {}
        return str(reg.get("name", "none")) if isinstance(reg, dict) else "none"


@dataclass
class Group:
    """Runs of one method (same config up to seed)."""

    key: tuple
    label: str
    regularizer: str
    runs: list[RunRecord] = field(default_factory=list)

    @property
    def complete_runs(self) -> list[RunRecord]:
        return [r for r in self.runs if r.complete]

    @property
    def plotted_runs(self) -> list[RunRecord]:
        """Complete runs, or the partial ones when there is nothing else to show."""
        return self.complete_runs or self.runs

    @property
    def seeds(self) -> list[int]:
        return sorted(r.res.seed for r in self.complete_runs)


# --------------------------------------------------------------------------- discovery


def _is_report_dir(path: Path) -> bool:
    return (path / REPORT_MARKER).exists()


def discover_runs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Run directories named by ``paths``: a run directory, its results.json, or a folder of runs.

    A folder is searched recursively (a sweep's trials); report folders and hidden folders are
    skipped. Each run appears once, in the order given (sorted within a folder).
    """
    if not paths:
        raise UserError("clrl report needs at least one RUN_DIR")
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise UserError(f"{p}: no such file or directory")
        if p.is_file():
            if p.name != RESULTS_FILE:
                raise UserError(f"{p}: not a run directory or a {RESULTS_FILE} file")
            found.append(p.parent)
            continue
        if (p / RESULTS_FILE).is_file():
            found.append(p)
            continue
        if _is_report_dir(p):
            continue  # an earlier report caught by a glob such as runs/*
        below = []
        for root, dirs, files in os.walk(p):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not _is_report_dir(Path(root) / d))
            if RESULTS_FILE in files:
                below.append(Path(root))
                dirs[:] = []  # a run's subfolders (checkpoints, tb) hold no other runs
        if not below:
            raise UserError(
                f"{p}: no {RESULTS_FILE} in it or below it (is it a run directory or a folder of runs?)"
            )
        found.extend(sorted(below))
    unique: dict[Path, Path] = {}
    for run in found:
        unique.setdefault(run.resolve(), run)
    if not unique:
        raise UserError("no run directories found in " + ", ".join(str(p) for p in paths))
    return list(unique.values())


def completeness_note(path: Path, res: Results) -> str:
    """'' for a finished run; otherwise one plain line saying what is missing and why."""
    T = len(res.tasks)
    done = res.tasks_done()
    R = res.R_matrix()
    missing = int((~np.isfinite(R[np.tril_indices(T)])).sum())
    if res.status == "failed":
        why = f": {res.reason}" if res.reason else " (no reason recorded)"
        where = f"after task {done} of {T}" if done else f"before finishing task 1 of {T}"
        return f"{path}: failed {where}{why}"
    if res.status == "running":
        return f"{path}: not finished (status running; {done} of {T} tasks done)" + (
            f": {res.reason}" if res.reason else ""
        )
    if missing:
        return f"{path}: complete but R is missing {missing} of {T * (T + 1) // 2} entries it should hold"
    return ""


def load_runs(
    paths: Sequence[str | os.PathLike],
    reference: str | os.PathLike | None = None,
    unreadable: list[str] | None = None,
) -> list[RunRecord]:
    """Load every run below ``paths``; all must be of one kind and one results schema version.

    ``reference`` (a fine-tuning run directory) replaces each run's stored reference for P and
    the normalized reward. A fine-tuning run without one is its own reference: P and the
    normalized reward are relative to fine-tuning (AGS-CL Secs. 4.1 and 4.2), so it scores P = 1.
    With ``unreadable`` (a list), a run whose results.json cannot be read (truncated, foreign)
    is skipped and its problem appended there, unless no run at all can be read; without it,
    the first such run is an error.
    """
    records = []
    for run in discover_runs(paths):
        try:
            res = load_results(run)
        except ResultsError as exc:
            if unreadable is None:
                raise
            unreadable.append(str(exc))
            continue
        ref = reference_from_run(reference, res.tasks, kind=res.kind) if reference is not None else res.reference
        rec = RunRecord(run, res, ref, completeness_note(run, res))
        if rec.reference is None and rec.regularizer == "none" and res.curves:
            rec.reference = reference_from_run(run, res.tasks)  # itself: same kind
            rec.self_reference = True
        records.append(rec)
    if not records:
        raise UserError("no readable run: " + "; ".join(unreadable or []))
    _check_consistent(records)
    return records


def _check_consistent(records: list[RunRecord]) -> None:
    for attr, what in (("kind", "kinds"), ("schema_version", "results schema versions")):
        by: dict[Any, list[str]] = defaultdict(list)
        for r in records:
            by[getattr(r.res, attr)].append(str(r.path))
        if len(by) > 1:
            parts = "; ".join(f"{k}: {', '.join(v[:3])}{' ...' if len(v) > 3 else ''}" for k, v in by.items())
            raise UserError(f"cannot report runs of different {what} together ({parts}); report them separately")


# --------------------------------------------------------------------------- grouping


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become JSON text so they can be compared and hashed."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v, sort_keys=True) if isinstance(v, (list, tuple)) else v
    return out


def _dropped(key: str, ignore: Iterable[str]) -> bool:
    return any(key == k or key.startswith(k + ".") for k in ignore)


def method_key(res: Results, group_by: Sequence[str] | None = None, ignore: Sequence[str] = ()) -> tuple:
    """The part of a run's config that defines its method (hashable)."""
    flat = flatten(res.config)
    flat.setdefault("regularizer.name", "none")
    if group_by:
        return tuple((k, flat.get(k)) for k in group_by)
    skip = (*IGNORED_KEYS, *ignore)
    return tuple(sorted((k, v) for k, v in flat.items() if not _dropped(k, skip)))


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v).replace('"', "")


def _labels(keys: list[tuple], regs: list[str]) -> list[str]:
    """Regularizer name plus the keys whose values tell the groups apart.

    A ``regularizer.*`` hyperparameter counts only among groups of the same regularizer (EWC's
    lambda does not label it against AGS-CL's); any other key counts across all groups.
    """
    dicts = [dict(k) for k in keys]
    all_keys = sorted({k for d in dicts for k in d})
    varying: list[list[str]] = [[] for _ in dicts]
    for k in all_keys:
        if k == "regularizer.name":
            continue
        if k.startswith("regularizer."):
            for reg in set(regs):
                members = [i for i, r in enumerate(regs) if r == reg]
                if len({json.dumps(dicts[i].get(k), default=str) for i in members}) > 1:
                    for i in members:
                        varying[i].append(k)
        elif len({json.dumps(d.get(k), default=str) for d in dicts}) > 1:
            for i in range(len(dicts)):
                varying[i].append(k)
    distinct = {k for v in varying for k in v}
    leaf_count = Counter(k.rsplit(".", 1)[-1] for k in distinct)
    labels = []
    for i, reg in enumerate(regs):
        base = METHOD_NAMES.get(reg, reg)
        parts = []
        for k in varying[i]:
            leaf = k.rsplit(".", 1)[-1]
            short = leaf if leaf_count[leaf] == 1 else k
            if k in dicts[i]:
                parts.append(f"{short}={_fmt_value(dicts[i][k])}")
        labels.append(f"{base} ({', '.join(parts)})" if parts else base)
    seen: dict[str, int] = defaultdict(int)
    for i, lab in enumerate(labels):  # identical labels can only come from --group-by choices
        seen[lab] += 1
        if seen[lab] > 1:
            labels[i] = f"{lab} #{seen[lab]}"
    return labels


def group_runs(
    records: list[RunRecord], group_by: Sequence[str] | None = None, ignore: Sequence[str] = ()
) -> list[Group]:
    """Runs grouped by method, ordered Fine-tuning, EWC, MAS, AGS-CL, then by label."""
    by_key: dict[tuple, list[RunRecord]] = {}
    for r in records:
        by_key.setdefault(method_key(r.res, group_by, ignore), []).append(r)
    keys = list(by_key)
    regs = [by_key[k][0].regularizer for k in keys]
    labels = _labels(keys, regs)
    groups = [
        Group(key=k, label=lab, regularizer=reg, runs=sorted(by_key[k], key=lambda r: (r.res.seed, str(r.path))))
        for k, lab, reg in zip(keys, labels, regs, strict=True)
    ]
    groups.sort(key=lambda g: (METHOD_ORDER.get(g.regularizer, 9), g.label))
    return groups


def duplicate_seed_notes(groups: list[Group]) -> list[str]:
    """A seed that appears twice in a group is usually a copied or re-run directory: say so."""
    notes = []
    for g in groups:
        counts: dict[int, list[str]] = defaultdict(list)
        for r in g.complete_runs:
            counts[r.res.seed].append(str(r.path))
        for seed, paths in counts.items():
            if len(paths) > 1:
                notes.append(f"{g.label}: seed {seed} appears {len(paths)} times ({', '.join(paths)}); all are counted")
    return notes


__all__ = [
    "REPORT_MARKER",
    "RunRecord",
    "Group",
    "discover_runs",
    "load_runs",
    "completeness_note",
    "method_key",
    "group_runs",
    "flatten",
    "duplicate_seed_notes",
    "ResultsError",
]
