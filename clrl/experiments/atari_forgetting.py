"""The Atari forgetting experiment (issue 18): run the sweep, keep its results, write the page.

    python scripts/atari_forgetting.py [--out DIR] [--workers N] [--render] [--set k=v ...]

1. Runs ``configs/sweep_atari_forgetting.yaml`` through :mod:`clrl.sweep`: fine-tuning first for
   each seed, then EWC, MAS and AGS-CL, each with ``reference:`` the fine-tuning trial of its seed.
   Every trial is an ordinary run directory under ``--out``; running the command again skips
   complete trials and resumes the others from their checkpoints, so a killed experiment goes
   on where it stopped. Each invocation's wall time is added to ``<out>/experiment.json``.
2. Copies each complete trial's ``results.json`` (no checkpoints) to
   ``docs/data/atari_forgetting/<method>/seed<k>/results.json``, with the experiment record.
3. Writes ``docs/atari_forgetting.md`` and ``docs/figures/atari_forgetting_*.png`` from those
   copies alone; ``--render`` does only this step, without training.

A pilot run goes into folders of its own (``--out runs/pilot-x --docs /tmp/pilot-x/docs``), so
the committed data and page stay as they are; ``pilots.yaml`` records what it showed.
"""

from __future__ import annotations

import argparse
import fcntl
import math
import os
import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clrl.errors import UserError
from clrl.experiments import forgetting_data as fd
from clrl.results import now

DOC_NAME = "atari_forgetting.md"
SWEEP_FILE = Path("configs") / "sweep_atari_forgetting.yaml"


def build_parser(root: Path) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/atari_forgetting.py",
        description="Fine-tuning, EWC, MAS and AGS-CL on a short Atari sequence over seeds, written up as "
        "docs/atari_forgetting.md. Running it again resumes an interrupted experiment.",
    )
    p.add_argument("--out", type=Path, help="sweep folder for the trials (default: runs/sweep-atari_forgetting)")
    p.add_argument("--workers", type=int, metavar="N", help="trials at once (default: cores / resources.cpu)")
    p.add_argument("--render", action="store_true",
                   help="only rebuild the page and figures from docs/data/atari_forgetting/ (no training)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override an experiment key in every trial (dotted path, YAML value); repeatable")
    p.add_argument("--sweep", type=Path, default=root / SWEEP_FILE, help=f"sweep file (default: {SWEEP_FILE})")
    p.add_argument("--docs", type=Path, default=root / "docs", help="docs folder (default: the repository's docs/)")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap resamples per interval (default 2000)")
    return p


def _command(argv: list[str]) -> str:
    return "python scripts/atari_forgetting.py" + "".join(" " + shlex.quote(a) for a in argv)


def _data_method(trial) -> str:  # noqa: ANN001 - a clrl.sweep.Trial
    """The folder of a trial under docs/data: the sweep's method, plus its grid values if any."""
    return trial.name.removesuffix(f"-seed={trial.seed}")


def run_experiment(args: argparse.Namespace, argv: list[str]) -> int:
    """Run or resume the sweep, copy its results into docs/data, render the page when complete."""
    from clrl.sweep import expand, run_sweep
    from clrl.sweep.backends import available_cpus
    from clrl.sweep.driver import LOG_FILE, SweepLog

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    plan = expand(args.sweep, out=args.out, overrides=args.overrides)
    record_path = plan.out / fd.EXPERIMENT_FILE
    record = fd.load_record(record_path) or fd.new_record(_relative(args.sweep))
    record["sweep_file"] = _relative(args.sweep)
    record["overrides"] = list(args.overrides)
    record["trials"] = [{"method": _data_method(t), "seed": t.seed, "trial": t.name,
                         "reference": t.reference} for t in plan.trials]
    # as clrl.sweep.driver.make_backend chooses it: cores // resources.cpu unless --workers says
    per_trial = max(1, math.ceil(plan.spec.resources.cpu))
    workers = args.workers or max(1, min(len(plan.trials), available_cpus() // per_trial))
    invocation = {"command": _command(argv), "started": now(), "seconds": None, "workers": workers,
                  "cpus": available_cpus(), "finished": False}
    plan.out.mkdir(parents=True, exist_ok=True)
    with experiment_lock(plan.out):
        # an invocation that never recorded its time was killed (SIGKILL, a lost machine)
        fd.close_killed_invocations(record, plan.out / LOG_FILE)
        record.setdefault("invocations", []).append(invocation)
        fd.save_record(record_path, record)  # seconds None until it ends: a kill leaves that mark
        start = time.perf_counter()
        manifest = None
        try:
            manifest = run_sweep(plan, backend="local", workers=args.workers, log=SweepLog(plan.out))
        finally:
            invocation["seconds"] = time.perf_counter() - start
            invocation["finished"] = manifest is not None and all(t.status == "complete" for t in manifest.trials)
            fd.save_record(record_path, record)
    data_dir = args.docs / fd.DATA_SUBDIR
    copied = copy_results(plan, data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(record_path, data_dir / fd.EXPERIMENT_FILE)
    print(f"atari_forgetting: {copied} results.json files copied to {data_dir}")
    incomplete = [t.name for t in manifest.trials if t.status != "complete"]
    if incomplete:
        print(f"atari_forgetting: {len(incomplete)} trials not complete ({', '.join(incomplete)}); run the same "
              "command again to resume them; the page is written once all are complete", file=sys.stderr)
        return 1
    render(args.docs, reps=args.reps)
    return 0


@contextmanager
def experiment_lock(folder: Path) -> Iterator[None]:
    """One experiment driver per sweep folder (a second would double-count the wall time).

    Held around clrl.sweep's own lock of the same folder; ``flock`` is released by the kernel
    when the process ends, even on SIGKILL.
    """
    with open(folder / ".atari_forgetting.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{folder} is in use by another scripts/atari_forgetting.py; wait for it or stop it") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def copy_results(plan, data_dir: Path) -> int:  # noqa: ANN001 - a clrl.sweep.SweepPlan
    """Each complete trial's results.json (only that file) into ``data_dir/<method>/seed<k>/``."""
    from clrl.io import atomic_write_bytes
    from clrl.sweep.trial import disk_state

    n = 0
    for trial in plan.trials:
        src = plan.trial_dir(trial) / fd.RESULTS_FILE
        if disk_state(plan.trial_dir(trial)) != "complete":
            continue
        dst = fd.run_path(data_dir, _data_method(trial), trial.seed)
        atomic_write_bytes(dst, src.read_bytes())
        n += 1
    return n


def render(docs: Path, reps: int = 2000, seed: int = 0) -> list[Path]:
    """docs/atari_forgetting.md and its figures from docs/data/atari_forgetting/ alone; returns the paths."""
    from clrl.experiments import forgetting_doc, forgetting_figures
    from clrl.experiments.forgetting_summary import summarize
    from clrl.io import atomic_write_text

    if reps < 1:
        raise UserError(f"--reps must be at least 1, got {reps}")
    data_dir = docs / fd.DATA_SUBDIR
    if not data_dir.is_dir():
        raise UserError(f"{data_dir}: no experiment data to render (run the experiment first)")
    record = fd.load_record(data_dir / fd.EXPERIMENT_FILE)
    runs, notes = fd.load_data(data_dir, fd.record_trials(record))
    pilots = fd.load_pilots(data_dir / fd.PILOTS_FILE)
    summary = summarize(runs, reps=reps, seed=seed)
    skipped: list[str] = []
    figure_dir = docs / "figures"
    paths = forgetting_figures.make_figures(summary, figure_dir, skipped)
    for stem in forgetting_figures.STEMS:  # a figure not drawn this time must not linger from an earlier one
        old = figure_dir / f"{forgetting_figures.PREFIX}{stem}.png"
        if old not in paths and old.exists():
            old.unlink()
    rel = [p.relative_to(docs).as_posix() for p in paths]
    doc = docs / DOC_NAME
    atomic_write_text(doc, forgetting_doc.markdown(summary, record, pilots, rel, skipped, notes))
    for line in summary.conclusion():
        print(line)
    print(f"atari_forgetting: wrote {doc} and {len(paths)} figures in {figure_dir}")
    return [doc, *paths]


def _relative(path: Path) -> str:
    try:
        return os.path.relpath(Path(path).resolve(), Path.cwd())
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None, root: Path | None = None) -> int:
    """The script's entry point; exit 0 done, 1 trials left to resume, 2 bad input, 130 interrupted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    root = root or Path.cwd()
    args = build_parser(root).parse_args(argv)
    try:
        if args.render:
            if args.out or args.workers or args.overrides:
                raise UserError("--render reads docs/data/atari_forgetting/ only; it takes no --out, --workers or --set")
            render(args.docs, reps=args.reps)
            return 0
        return run_experiment(args, argv)
    except UserError as exc:
        print(f"atari_forgetting: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("atari_forgetting: interrupted; run the same command again to continue where it stopped",
              file=sys.stderr)
        return 130
