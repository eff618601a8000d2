"""The sweep driver: check what is on disk, schedule trials on a backend, keep sweep.json.

References first: a trial whose ``reference`` is a fine-tuning trial of this sweep starts only
once that trial is complete (its normalized scores need the reference's results.json); if the
reference fails, the trial is marked ``blocked`` and left for the next run of the sweep.
A re-run skips complete trials and resumes the others from their checkpoints.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import yaml

from clrl.config import config_to_dict, load_saved_config
from clrl.errors import ConfigError
from clrl.results import load_results, now
from clrl.rundir import folder_lock
from clrl.sweep.backends import InlineBackend, PoolBackend, RayBackend, available_cpus
from clrl.sweep.manifest import Manifest, TrialEntry, load_manifest, save_manifest
from clrl.sweep.spec import SweepPlan
from clrl.sweep.trial import disk_state

LOG_FILE = "sweep_log.txt"
LOCK_FILE = ".sweep.lock"
#: keys that may differ between a trial's saved config and the sweep's without redoing it
RUNTIME_KEYS = ("output", "reference")


class SweepLog:
    """One line per event, on stdout and appended to ``<sweep>/sweep_log.txt``."""

    def __init__(self, sweep_dir: Path | None, stream: TextIO | None = None) -> None:
        self.path = sweep_dir / LOG_FILE if sweep_dir is not None else None
        self.stream = stream or sys.stdout

    def __call__(self, message: str) -> None:
        print(f"clrl sweep: {message}", file=self.stream, flush=True)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(f"{now()} {message}\n")


# --------------------------------------------------------------------------- what is on disk


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            if not prefix and key in RUNTIME_KEYS:
                continue
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def check_existing(plan: SweepPlan) -> dict[str, str]:
    """Disk state of every trial; a trial folder made from a different config is an error.

    Resuming a run under changed settings would silently mix two experiments in one results
    file, so the sweep refuses and says which keys changed.
    """
    states = {}
    for trial in plan.trials:
        root = plan.trial_dir(trial)
        saved = root / "config.yaml"
        if saved.is_file():
            try:
                old = config_to_dict(load_saved_config(saved))  # old keys read as the run had them
            except (ConfigError, yaml.YAMLError):
                old = None
            diff = _differences(old, trial.config) if old is not None else ["config.yaml unreadable"]
            if diff:
                shown = "; ".join(diff[:3]) + (f"; and {len(diff) - 3} more" if len(diff) > 3 else "")
                raise ConfigError(
                    f"{plan.source}: trial {trial.name}: {root} was run with a different config ({shown}); "
                    "use another --out, or delete that folder to run the trial again"
                )
        states[trial.name] = disk_state(root)
    return states


def _acc_on_disk(root: Path) -> float | None:
    try:
        acc = load_results(root).metrics.get("acc")
    except Exception:  # noqa: BLE001 - a display value only
        return None
    return acc if isinstance(acc, (int, float)) and math.isfinite(acc) else None


def build_manifest(plan: SweepPlan, states: dict[str, str], backend: str) -> Manifest:
    old = load_manifest(plan.out)
    previous = {e.name: e for e in old.trials} if old is not None else {}
    entries = []
    for t in plan.trials:
        before = previous.get(t.name)
        complete = states[t.name] == "complete"
        entries.append(
            TrialEntry(
                name=t.name, dir=t.name, method=t.method, seed=t.seed, params=t.params,
                is_reference=t.is_reference, reference=t.reference,
                status="complete" if complete else "pending",
                attempts=before.attempts if before else 0,
                seconds=before.seconds if before and complete else None,
                acc=_acc_on_disk(plan.trial_dir(t)) if complete else None,
            )
        )
    stamp = now()
    return Manifest(
        name=plan.spec.name, sweep_file=str(plan.source.resolve()), created=old.created if old else stamp,
        updated=stamp, backend=backend, spec=plan.spec.model_dump(mode="json"), overrides=plan.overrides,
        trials=entries,
    )


# --------------------------------------------------------------------------- running


def make_backend(name: str, plan: SweepPlan, to_run: int, workers: int | None, address: str | None):
    """The backend and the torch threads of each trial: ``resources.cpu`` on every backend.

    Small nets run fastest single-threaded, and on a shared machine extra threads mostly spin;
    a trial that should use more cores says so in ``resources.cpu``.
    """
    res = plan.spec.resources
    per_trial = max(1, math.ceil(res.cpu))
    if name == "ray":
        backend = RayBackend(address, workers, res.cpu, res.gpu)
        return backend, per_trial
    cpus = available_cpus()
    if workers is None:
        workers = max(1, min(to_run, cpus // per_trial))
    if workers <= 1:
        return InlineBackend(), per_trial
    return PoolBackend(workers), per_trial


def job_for(plan: SweepPlan, name: str, threads: int, parallel: bool, retries_used: int = 0) -> dict[str, Any]:
    """What a worker needs to run trial ``name``; ``retries`` is what is left of the trial's
    budget (``retries`` of the sweep file) after the re-runs it already had in this sweep."""
    trial = plan.trial(name)
    config = dict(trial.config)
    if parallel:  # several trials share one terminal: their progress bars would interleave
        config["output"] = {**config["output"], "progress": False}
    return {"name": name, "dir": str(plan.trial_dir(trial)), "config": config,
            "threads": threads, "retries": max(plan.spec.retries - retries_used, 0)}


def schedule(plan: SweepPlan, manifest: Manifest, backend, threads: int, log: SweepLog) -> None:
    """Run every trial that is not complete; references before their dependents."""
    parallel = not isinstance(backend, InlineBackend)
    pending = [t.name for t in plan.trials if manifest.entry(t.name).status != "complete"]
    running: set[str] = set()
    # re-runs each trial has had: after an error inside its worker (run_trial retries it there)
    # and after its worker died (restarted here) come out of one budget, spec.retries
    retries_used: dict[str, int] = {}
    total = len(plan.trials)
    try:
        while pending or running:
            for name in list(pending):
                if len(running) >= backend.slots:
                    break
                entry = manifest.entry(name)
                ref = entry.reference
                ref_status = manifest.entry(ref).status if ref else "complete"
                if ref_status == "complete":
                    pending.remove(name)
                    running.add(name)
                    entry.status, entry.reason = "running", None
                    entry.attempts += 1  # counted at the start, so a killed driver still records it
                    save_manifest(plan.out, manifest)
                    state = disk_state(plan.trial_dir(name))
                    how = "resuming from its checkpoint" if state == "partial" else "starting"
                    log(f"{name}: {how}")
                    backend.submit(job_for(plan, name, threads, parallel, retries_used.get(name, 0)))
                elif ref_status in ("failed", "blocked"):
                    pending.remove(name)
                    entry.status, entry.reason = "blocked", f"reference trial {ref} is {ref_status}"
                    save_manifest(plan.out, manifest)
                    log(f"{name}: blocked ({entry.reason}); a re-run of the sweep tries again")
            if not running:
                break
            for job, outcome in backend.wait():
                name = job["name"]
                running.discard(name)
                entry = manifest.entry(name)
                inside = max(int(outcome.get("attempts") or 0) - 1, 0)  # retries inside the worker
                entry.attempts += inside
                retries_used[name] = retries_used.get(name, 0) + inside
                if outcome.get("crashed") and retries_used[name] < plan.spec.retries:
                    retries_used[name] += 1
                    entry.status, entry.reason = "pending", outcome["reason"]
                    pending.insert(0, name)
                    log(f"{name}: {outcome['reason']}; restarting it from its checkpoint")
                    continue
                entry.status = "complete" if outcome["status"] == "complete" else "failed"
                entry.reason = outcome.get("reason")
                entry.resumed = bool(outcome.get("resumed"))
                entry.seconds = outcome.get("seconds")
                entry.acc = _acc_on_disk(plan.trial_dir(name)) if entry.status == "complete" else None
                save_manifest(plan.out, manifest)
                done = sum(e.status == "complete" for e in manifest.trials)
                if entry.status == "complete":
                    acc = f", ACC {entry.acc:.4g}" if entry.acc is not None else ""
                    log(f"{name}: complete in {entry.seconds or 0:.1f} s{acc} ({done}/{total} complete)")
                else:
                    first = (entry.reason or "no reason given").splitlines()[0]
                    log(f"{name}: failed ({first}); see {plan.trial_dir(name) / 'log.txt'}")
    except BaseException:
        backend.close(cancel=True)
        for name in running:
            entry = manifest.entry(name)
            entry.status, entry.reason = "pending", "interrupted; a re-run of the sweep resumes it"
        save_manifest(plan.out, manifest)
        raise
    backend.close()
    save_manifest(plan.out, manifest)


def sweep_lock(sweep_dir: Path):  # noqa: ANN201 - a context manager
    """One driver per sweep folder: two would start the same trials twice (:func:`folder_lock`)."""
    return folder_lock(sweep_dir, LOCK_FILE, "sweep")


def run_sweep(
    plan: SweepPlan,
    backend: str = "local",
    workers: int | None = None,
    address: str | None = None,
    log: SweepLog | None = None,
) -> Manifest:
    """Run (or continue) a sweep; returns its final manifest (also in ``<sweep>/sweep.json``)."""
    with sweep_lock(plan.out):
        states = check_existing(plan)
        return _run_locked(plan, states, backend, workers, address, log or SweepLog(plan.out))


def _run_locked(
    plan: SweepPlan, states: dict[str, str], backend: str, workers: int | None, address: str | None, log: SweepLog
) -> Manifest:
    manifest = build_manifest(plan, states, backend)
    save_manifest(plan.out, manifest)
    todo = [t.name for t in plan.trials if states[t.name] != "complete"]
    skipped = len(plan.trials) - len(todo)
    if skipped:
        log(f"{skipped} of {len(plan.trials)} trials already complete: skipped")
    if not todo:
        return manifest
    runner, threads = make_backend(backend, plan, len(todo), workers, address)
    manifest.backend = runner.label
    resumable = sum(states[n] == "partial" for n in todo)
    log(f"{len(todo)} trials to run ({resumable} resume from a checkpoint) on {runner.label} into {plan.out}")
    start = time.perf_counter()
    schedule(plan, manifest, runner, threads, log)
    log(f"sweep ran for {time.perf_counter() - start:.1f} s")
    return manifest
