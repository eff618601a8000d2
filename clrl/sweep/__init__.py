"""``clrl sweep``: grids of runs, locally or on a Ray cluster, references first, resumable.

A sweep file (schema in :mod:`clrl.sweep.spec`) names a base experiment config and a grid
(methods x hyperparameters x seeds). Every trial is an ordinary run directory under the sweep
folder, next to ``sweep.json`` (the manifest) and ``report/`` (``clrl report`` over all trials).
Running the same sweep again skips complete trials and resumes the others from their
checkpoints. See docs/sweeps.md for the paper's grid on a Ray cluster.
"""

from __future__ import annotations

import argparse

from clrl.sweep.driver import SweepLog, run_sweep
from clrl.sweep.manifest import Manifest, load_manifest
from clrl.sweep.spec import SweepConfig, SweepPlan, Trial, expand, load_sweep

__all__ = [
    "Manifest",
    "SweepConfig",
    "SweepPlan",
    "Trial",
    "add_arguments",
    "check_trials_buildable",
    "expand",
    "load_manifest",
    "load_sweep",
    "main",
    "run_sweep",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run a grid of experiments from a sweep file: fine-tuning references first, every trial an "
        "ordinary run directory under the sweep folder, sweep.json listing their status, and a report "
        "over all of them at the end. Running the same command again skips complete trials and "
        "resumes the others from their checkpoints."
    )
    parser.add_argument("sweep", metavar="SWEEP.yaml", help="sweep file (see configs/sweep_*.yaml)")
    parser.add_argument("--out", help="sweep folder (default: <base output.dir>/sweep-<name>)")
    parser.add_argument("--backend", choices=("local", "ray"), default="local",
                        help="local: this machine (default); ray: Ray tasks with per-trial resources")
    parser.add_argument("--address", help="Ray cluster to join (e.g. auto, or ray://head:10001); "
                        "without it --backend ray starts a local Ray instance")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="local: trials at once (default: cores / resources.cpu; 1 runs in this process); "
                        "ray without --address: CPUs of the local Ray instance")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override an experiment key in every trial (dotted path, YAML value); repeatable")
    parser.add_argument("--cpus-per-trial", type=float, help="replace resources.cpu of the sweep file")
    parser.add_argument("--gpus-per-trial", type=float, help="replace resources.gpu (fractions share a GPU)")
    parser.add_argument("--dry-run", action="store_true", help="list the trials and what would run; write nothing")
    parser.add_argument("--no-report", action="store_true", help="skip `clrl report` at the end")
    parser.add_argument("--no-figures", action="store_true", help="report tables only (faster)")


def check_trials_buildable(plan: SweepPlan, source: str) -> None:
    """Build every distinct trial of ``plan`` (network, regularizer, data folder) as ``clrl run``
    does before its run folder exists, once per experiment (names and seeds aside); a trial that
    cannot be built is a ConfigError naming the file and the trial. References to the sweep's own
    fine-tuning trials, which do not exist yet, are not read."""
    from clrl.preflight import check_buildable

    built: set[str] = set()
    for t in plan.trials:
        where = f"{source} (trial {t.name})"
        # once per experiment; whether a reference is read (one outside the sweep) is part of it
        key = repr((t.reference is None,
                    sorted((k, repr(v)) for k, v in t.config.items() if k not in ("name", "seed", "reference"))))
        if key not in built:
            built.add(key)
            check_buildable(t.validated, reference=t.reference is None, source=where)


def main(args: argparse.Namespace) -> int:
    from clrl.errors import UserError
    from clrl.sweep.report import print_plan, print_status, report_sweep

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    if args.address and args.backend != "ray":
        raise UserError("--address joins a Ray cluster; add --backend ray")
    plan = expand(args.sweep, out=args.out, overrides=args.overrides)
    resources = {}
    if args.cpus_per_trial is not None:
        resources["cpu"] = args.cpus_per_trial
    if args.gpus_per_trial is not None:
        resources["gpu"] = args.gpus_per_trial
    if resources:
        from pydantic import ValidationError

        from clrl.sweep.spec import Resources

        try:
            merged = Resources.model_validate({**plan.spec.resources.model_dump(), **resources})
        except ValidationError as exc:
            raise UserError(f"--cpus-per-trial/--gpus-per-trial: {exc.errors()[0]['msg']}") from None
        plan.spec = plan.spec.model_copy(update={"resources": merged})
    if args.dry_run:
        print_plan(plan)
        return 0
    if args.backend == "local":  # a Ray driver may lack the workers' data folders: `clrl validate` there
        check_trials_buildable(plan, str(args.sweep))  # a grid point that cannot be built stops it here
    manifest = run_sweep(plan, backend=args.backend, workers=args.workers, address=args.address,
                         log=SweepLog(plan.out))
    print_status(manifest)
    if not args.no_report:
        report_sweep(plan, manifest, figures=not args.no_figures)
    incomplete = [t.name for t in manifest.trials if t.status != "complete"]
    if incomplete:
        print(f"clrl sweep: {len(incomplete)} trials not complete; run the same command again to resume them")
        return 1
    print(f"sweep folder: {plan.out}")
    return 0
