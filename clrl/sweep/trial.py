"""Run one trial of a sweep: the function a worker process or a Ray task executes.

A trial is an ordinary run directory. What to do is decided from that directory when the
trial starts (not when it was scheduled), so the same call serves a first start, a re-run of
the sweep after a kill, and a Ray retry after a worker died: a complete ``results.json`` is
left alone, a run with a checkpoint is resumed (``run_experiment(..., resume=True)``), and
anything else starts from scratch in the same folder.
"""

from __future__ import annotations

import importlib
import time
import traceback
from pathlib import Path
from typing import Any

from clrl.config import config_from_dict
from clrl.errors import CheckpointError, UserError

RUNNERS = {"rl": "clrl.rl.runner", "supervised": "clrl.supervised.trainer"}


def disk_state(root: Path) -> str:
    """``complete``, ``partial`` (has a checkpoint to resume from), ``scored`` (results.json holds
    scores but the checkpoint is gone: never overwritten), ``started`` (nothing worth keeping) or
    ``new``."""
    from clrl.results import load_results
    from clrl.rundir import RunDir

    rd = RunDir(root)
    if rd.results_path.is_file():
        try:
            if load_results(rd.results_path).status == "complete":
                return "complete"
        except UserError:
            pass  # a torn or foreign results.json: the run is redone or resumed below
    if rd.config_path.is_file() and rd.latest_checkpoint.is_file():
        return "partial"
    if rd.root.exists() and any(rd.root.iterdir()):
        from clrl.lifecycle import resume_without_checkpoint

        try:
            resume_without_checkpoint(rd)
        except CheckpointError:
            return "scored"  # scores on disk, no checkpoint: refused, as `clrl run --resume` refuses
        except UserError:
            pass  # a torn or foreign results.json: nothing to keep, the run is redone
        return "started"
    return "new"


def _runner(kind: str):
    return importlib.import_module(RUNNERS[kind]).run_experiment


def run_trial(job: dict[str, Any]) -> dict[str, Any]:
    """Run (or resume, or skip) one trial; never raises for a failed run, returns its outcome.

    ``job``: ``name``, ``dir``, ``config`` (resolved config dict), ``threads`` (torch threads,
    0 = leave as is) and ``retries`` (re-runs from the checkpoint after an unexpected error).
    The outcome: ``name, status (complete|failed), reason, attempts, resumed, skipped, seconds, acc``.
    """
    from clrl.rundir import RunDir, prepare_run_dir

    name, root = job["name"], Path(job["dir"])
    out: dict[str, Any] = {"name": name, "status": "failed", "reason": None, "attempts": 0,
                           "resumed": False, "skipped": False, "seconds": 0.0, "acc": None}
    threads = int(job.get("threads") or 0)
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    try:
        cfg = config_from_dict(job["config"], source=f"trial {name}")
    except UserError as exc:
        out["reason"] = str(exc)
        return out
    start = time.perf_counter()
    for attempt in range(int(job.get("retries", 0)) + 1):
        state = disk_state(root)
        if state == "complete":
            out.update(status="complete", skipped=attempt == 0)
            break
        out["attempts"] += 1
        try:
            # "scored" (scores, no checkpoint) is resumed too: the runner refuses it with the
            # refusal and advice `clrl run --resume` gives, and nothing is deleted
            if state in ("partial", "scored"):
                rd, resume = RunDir(root), True
            else:
                rd, resume = prepare_run_dir(cfg, out=root, overwrite=True), False
            out["resumed"] = state == "partial"
            results = _runner(cfg.kind)(cfg, rd, resume=resume)
        except UserError as exc:  # the user must fix something: retrying cannot help
            out["reason"] = f"{type(exc).__name__}: {exc}"
            break
        except Exception as exc:  # noqa: BLE001 - one broken trial must not end the sweep
            out["reason"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"
            continue
        out["status"], out["reason"] = results.status, results.reason
        acc = results.metrics.get("acc") if isinstance(results.metrics, dict) else None
        out["acc"] = acc if isinstance(acc, (int, float)) else None
        break  # a run that ended as "failed" (e.g. diverged) would fail the same way again
    out["seconds"] = time.perf_counter() - start
    return out
