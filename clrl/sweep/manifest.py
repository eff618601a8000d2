"""``sweep.json``: the sweep's manifest of trials, their status and their references.

Only the driver writes it (atomically, after every change), so a crash or SIGKILL leaves the
previous version. It is a convenience for people and tools; the truth about a trial is its own
``results.json``, which is what a re-run reads to decide what to skip and what to resume.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from clrl.errors import ResultsError
from clrl.io import atomic_write_text
from clrl.results import now

MANIFEST_FILE = "sweep.json"
Status = Literal["pending", "running", "complete", "failed", "blocked"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrialEntry(_Model):
    name: str
    dir: str = Field(description="run directory, relative to the sweep folder")
    method: str
    seed: int
    params: dict[str, Any] = {}
    is_reference: bool = False
    reference: str | None = Field(None, description="name of the fine-tuning trial this one is normalized by")
    status: Status = "pending"
    reason: str | None = None
    attempts: int = Field(0, description="times the trial was started by this or an earlier sweep run")
    resumed: bool = Field(False, description="the last start continued from a checkpoint")
    seconds: float | None = Field(None, description="wall time of the last start")
    acc: float | None = None


class Manifest(_Model):
    format: Literal["clrl.sweep"] = "clrl.sweep"
    version: int = 1
    name: str
    sweep_file: str
    created: str
    updated: str
    backend: str
    spec: dict[str, Any]
    overrides: list[str] = Field([], description="--set overrides of the command line")
    trials: list[TrialEntry]
    report: str | None = None

    def entry(self, name: str) -> TrialEntry:
        return next(t for t in self.trials if t.name == name)


def manifest_path(sweep_dir: str | os.PathLike) -> Path:
    return Path(sweep_dir) / MANIFEST_FILE


def save_manifest(sweep_dir: str | os.PathLike, manifest: Manifest) -> None:
    manifest.updated = now()
    atomic_write_text(manifest_path(sweep_dir), manifest.model_dump_json(indent=1) + "\n")


def load_manifest(sweep_dir: str | os.PathLike) -> Manifest | None:
    """The manifest of an earlier run of this sweep, or None where there is none."""
    path = manifest_path(sweep_dir)
    if not path.is_file():
        return None
    try:
        return Manifest.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ResultsError(f"{path}: not a valid clrl sweep manifest ({type(exc).__name__}); delete it to rebuild") from exc
