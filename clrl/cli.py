"""The ``clrl`` command.

Exit codes (:mod:`clrl.lifecycle`): 0 success; 2 bad input (one clear line on stderr, no
traceback); 1 internal error (with a traceback, because it is a bug worth reporting); 3 the
training diverged (its cause on stderr); 130 interrupted (SIGINT or SIGTERM); 141 the reader of
standard output closed it (``clrl validate CONFIG --print | head``), quietly, as Unix tools do.
"""

from __future__ import annotations

import argparse
import importlib
import os
import select
import sys
import traceback
from collections.abc import Callable, Sequence

from clrl import __version__
from clrl.errors import UserError

EPILOG = """\
examples:
  clrl run configs/atari_quick.yaml                  short sequential Atari run on CPU
  clrl run configs/split_digits.yaml --set seed=1    supervised sanity suite
  clrl run --resume runs/atari_quick                 continue a run that stopped
  clrl validate configs/atari_paper_agscl.yaml       check a config without running it
  clrl eval runs/atari_quick --json eval.json        score a trained agent (mean ± 95% CI per game)
  clrl report runs/*                                 tables and figures over runs
  clrl sweep configs/sweep_digits.yaml               a grid of runs (local or --backend ray)
  clrl bench ppo                                     throughput vs stock SB3 PPO
  clrl bench learning                                score at the same budget vs stock SB3 PPO
"""


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted path, YAML value), e.g. --set train.learning_rate=1e-3 "
        "or --set 'tasks.games=[Boxing,Pong]'; repeatable",
    )


def cmd_run(args: argparse.Namespace) -> int:
    from clrl.config import config_source, load_config
    from clrl.lifecycle import exit_code, finished_run
    from clrl.preflight import check_buildable
    from clrl.rundir import open_run_dir, prepare_run_dir

    if args.resume:
        if args.config or args.overrides or args.out:
            raise UserError("--resume DIR takes no CONFIG, --set or --out: the run's saved config is used")
        if args.overwrite:
            raise UserError("--resume continues a run and --overwrite starts one over: give one of them")
        rd, cfg = open_run_dir(args.resume)
        done = finished_run(rd, cfg)
        if done is not None:  # nothing to do: no lock, log line or redrawn figure either
            from clrl.summary import print_summary

            print_summary(done)
            if cfg.kind == "rl" and not rd.latest_checkpoint.is_file():
                print(f"clrl: note: {rd.latest_checkpoint} is gone; `clrl eval` needs --checkpoint (a task_XX.pt)",
                      file=sys.stderr)
            print(f"run directory: {rd.root} (already complete: nothing was changed)")
            return exit_code(done)
        check_buildable(cfg, reference=False, source=str(rd.config_path))
    else:
        if not args.config:
            raise UserError("clrl run needs a CONFIG file (or --resume DIR); see `clrl run --help`")
        cfg = load_config(args.config, args.overrides)
        check_buildable(cfg, source=config_source(args.config, args.overrides))  # before the run directory exists
        rd = prepare_run_dir(cfg, out=args.out, overwrite=args.overwrite)
    run_experiment = _runner(cfg.kind)
    results = run_experiment(cfg, rd, resume=bool(args.resume))

    from clrl.summary import print_summary

    print_summary(results)
    if cfg.output.figures:
        _single_run_figures(rd)
    print(f"run directory: {rd.root}")
    return exit_code(results)


def _single_run_figures(rd) -> None:
    """The single-run report into figures/; a plotting problem never fails a finished run."""
    try:
        from clrl.report import single_run_report

        paths = single_run_report(rd.root)
    except Exception as exc:  # noqa: BLE001 - the run's results are already safe on disk
        print(f"clrl: warning: could not draw the run's figures ({type(exc).__name__}: {exc})", file=sys.stderr)
        return
    if paths:
        print(f"figures: {rd.figures} ({len(paths)} files)")


def _runner(kind: str) -> Callable:
    module = {"rl": "clrl.rl.runner", "supervised": "clrl.supervised.trainer"}[kind]
    return importlib.import_module(module).run_experiment


def cmd_validate(args: argparse.Namespace) -> int:
    from clrl.config import (
        config_source,
        dump_config,
        load_config,
        looks_like_sweep,
        read_yaml_mapping,
    )
    from clrl.preflight import check_buildable

    if looks_like_sweep(read_yaml_mapping(args.config)):
        return _validate_sweep(args)
    cfg = load_config(args.config, args.overrides)
    check_buildable(cfg, source=config_source(args.config, args.overrides))
    if args.print:
        print(dump_config(cfg), end="")
    n = len(cfg.tasks.games) if cfg.kind == "rl" else cfg.tasks.dataset
    print(f"ok: {args.config}: {cfg.name} ({cfg.kind}, tasks: {n}, regularizer: {cfg.regularizer.name})")
    return 0


def _validate_sweep(args: argparse.Namespace) -> int:
    """A sweep file: every trial validated (as `clrl sweep --dry-run` does) and built once per
    distinct experiment (seeds and names aside); references to the sweep's own trials, which do
    not exist yet, are not read."""
    from clrl.config import dump_config
    from clrl.sweep import check_trials_buildable, expand

    plan = expand(args.config, overrides=args.overrides)
    check_trials_buildable(plan, str(args.config))
    if args.print:
        for t in plan.trials:
            print(f"# trial {t.name}\n{dump_config(t.validated)}", end="")
    print(f"ok: {args.config}: sweep {plan.spec.name} ({len(plan.trials)} trials of {len(plan.spec.methods)} "
          f"methods, each trial valid and buildable; `clrl sweep {args.config} --dry-run` lists them)")
    return 0


def cmd_games(args: argparse.Namespace) -> int:
    from clrl.rl.games import list_games

    rows = [r for r in list_games() if not args.filter or args.filter.lower() in r[0].lower()]
    if not rows:
        raise UserError(f"no ALE game matches {args.filter!r}")
    width = max(len(r[0]) for r in rows)
    print(f"{'game':<{width}}  {'rom id':<22} minimal actions")
    for name, rom, n in rows:
        print(f"{name:<{width}}  {rom:<22} {n}")
    return 0


def _delegated(parser: argparse.ArgumentParser, module: str) -> None:
    """Subcommands whose arguments and body live in their own module (report, sweep, bench)."""
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        parser.set_defaults(func=lambda a, e=exc: _missing(module, e))
        return
    mod.add_arguments(parser)
    parser.set_defaults(func=mod.main)


def _missing(module: str, exc: Exception) -> int:
    raise UserError(f"{module} could not be loaded ({exc})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clrl",
        description="Continual learning with locally competitive networks: sequential Atari PPO "
        "and split image benchmarks, with AGS-CL, EWC and MAS as optimizer hooks.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"clrl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "run",
        help="run one experiment from a YAML config (or resume one)",
        description="Train on every task of CONFIG in order, evaluating every seen task; writes "
        "runs/<name>/ (config.yaml, results.json, checkpoints/, tb/, log.txt, figures/) and prints R "
        "and the metrics table.",
    )
    p.add_argument("config", nargs="?", help="experiment YAML (see configs/)")
    _add_overrides(p)
    p.add_argument("--out", help="run directory (default: <output.dir>/<name>, numbered if taken)")
    p.add_argument("--overwrite", action="store_true", help="allow --out to point at an existing run")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its latest checkpoint")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "validate", help="check a config (and --set overrides) without running it",
        description="Load CONFIG, apply the --set overrides and build what a run would build (network, "
        "activations, heads, regularizer, data folder, reference run) on the CPU, without training; "
        "prints ok, or one line per problem naming the file and key (exit 2). A sweep file (configs/sweep_*.yaml) "
        "is checked trial by trial, as `clrl sweep --dry-run` expands it.",
    )
    p.add_argument("config", help="experiment YAML or sweep file (see configs/)")
    _add_overrides(p)
    p.add_argument("--print", action="store_true", help="print the resolved config (defaults filled in)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "games", help="list the ALE games and their minimal action counts",
        description="The games that tasks.games accepts (names as in the papers, e.g. KungFuMaster), "
        "their ale-py ROM ids and the size of each game's minimal action set (its actor head's outputs).",
    )
    p.add_argument("filter", nargs="?", help="show only games whose name contains this")
    p.set_defaults(func=cmd_games)

    _delegated(sub.add_parser("eval", help="score a trained Atari agent from its checkpoint (no training)"),
               "clrl.rl.eval_cli")
    _delegated(sub.add_parser("report", help="tables and figures from run directories"), "clrl.report")
    _delegated(sub.add_parser("sweep", help="run a grid of experiments, locally or on Ray"), "clrl.sweep")
    bench = sub.add_parser(
        "bench", help="throughput and memory benchmarks, as ratios in one run",
        description="Benchmarks that report ratios against a baseline measured in the same run: "
        "hooks (regularizer step time and memory), ppo (env steps/s against SB3's stock PPO and the "
        "machine bound), learning (score at the same budget against SB3). `clrl bench WHICH --help`.",
    )
    bsub = bench.add_subparsers(dest="bench", metavar="WHICH", required=True)
    for name, module, help_text, description in (
        ("hooks", "clrl.bench.hooks", "optimizer step time and memory per regularizer",
         "Time of an optimizer step with each regularizer's hooks, and the memory of its state, as ratios "
         "against the plain step and against EWC's state, measured in the same run."),
        ("ppo", "clrl.bench.ppo", "env steps/s: SB3 stock PPO vs clrl per regularizer",
         "Env steps/s of clrl's PPO per regularizer against SB3's stock Atari PPO, with where an update's "
         "time goes and the share of the compute and machine bounds measured in the same run."),
        ("learning", "clrl.bench.learning", "score at the same budget: SB3 stock PPO vs clrl's PPO",
         "The score SB3's stock PPO and clrl's PPO reach on the same game with the same env-step budget "
         "and seeds, with intervals over seeds."),
    ):
        _delegated(bsub.add_parser(name, help=help_text, description=description), module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"clrl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clrl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not _stdout_closed():
            return _internal_error()
        return _quiet_after_closed_stdout()
    except Exception:
        return _internal_error()


def _internal_error() -> int:
    traceback.print_exc()
    print("clrl: internal error (the traceback above is a bug report worth filing)", file=sys.stderr)
    return 1


def _stdout_closed() -> bool:
    """Whether standard output's reader is gone (``clrl validate ... --print | head``), as
    opposed to a broken pipe of the command's own (a child process's connection): a pipe whose
    reader has closed it polls as an error."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows) or no real stdout
        return False


def _quiet_after_closed_stdout() -> int:
    """Stop quietly, as Unix tools do when the reader of their output has closed it: point
    stdout at /dev/null so that Python's own flush at exit does not raise again, and exit with
    the shell's status for SIGPIPE (128 + 13)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


if __name__ == "__main__":
    sys.exit(main())
