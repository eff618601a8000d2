"""Split Digits, fine-tuning vs AGS-CL: representation drift of each past task against its
forgetting -> docs/figures/inside_drift_forgetting.png (the README's "Inside the network").

    python scripts/inside_the_network.py [--out runs/inside] [--seeds 0 1 2]

Runs ``configs/split_digits_finetune.yaml`` and ``configs/split_digits.yaml`` (AGS-CL) per seed
(runs already complete in ``--out`` are read back), then draws
:func:`clrl.report.analysis_figures.drift_forgetting` and prints, per method, the mean drift and
forgetting of the past tasks and the analysis's share of the run time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = {"fine-tuning": "split_digits_finetune.yaml", "AGS-CL": "split_digits.yaml"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "inside",
                        help="folder of the runs (complete ones are read back, not run again)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "figures", metavar="DIR",
                        help="folder the figure inside_drift_forgetting.png is written to (default docs/figures)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the MLP is tiny: 1 is fastest)")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from clrl import metrics
    from clrl.config import load_config
    from clrl.report.analysis_figures import drift_forgetting, task_drift
    from clrl.report.runs import group_runs, load_runs
    from clrl.results import load_results
    from clrl.rundir import prepare_run_dir
    from clrl.supervised.trainer import run_experiment

    torch.set_num_threads(args.threads)
    start = time.time()
    dirs = []
    for label, cfg_file in METHODS.items():
        for seed in args.seeds:
            run_dir = args.out / f"{Path(cfg_file).stem}_s{seed}"
            dirs.append(run_dir)
            if (run_dir / "results.json").is_file() and load_results(run_dir).status == "complete":
                continue
            cfg = load_config(ROOT / "configs" / cfg_file, [f"seed={seed}", "output.progress=false",
                                                             "output.figures=false"])
            print(f"running {label} seed {seed} -> {run_dir}", flush=True)
            run_experiment(cfg, prepare_run_dir(cfg, out=run_dir, overwrite=True))
    groups = group_runs(load_runs(dirs))
    paths = drift_forgetting(groups, args.figure, prefix="inside_", formats=("png",))
    print("| method | runs | past tasks | drift | drift, protected nodes | feature change | forgetting | analysis / run time |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for g in groups:
        d_all, p_all, f_all, fo_all, share = [], [], [], [], []
        for r in g.runs:
            forget = metrics.forgetting_per_task(r.res.R_matrix())
            d, f = task_drift(r)
            p, _ = task_drift(r, protected=True)
            d_all += list(d[: len(forget)])
            p_all += list(p[: len(forget)])
            f_all += list(f[: len(forget)])
            fo_all += list(forget)
            share.append(r.res.timings["analysis_seconds"] / r.res.timings["total_s"])
        prot = f"{np.nanmean(p_all):.3f}" if np.isfinite(p_all).any() else "-"
        print(f"| {g.label} | {len(g.runs)} | {len(fo_all)} | {np.nanmean(d_all):.3f} | {prot} | {np.nanmean(f_all):.3f} | "
              f"{np.nanmean(fo_all):.3f} | {100 * np.mean(share):.1f}% (max {100 * np.max(share):.1f}%) |")
    print(f"wrote {', '.join(map(str, paths))} ({(time.time() - start) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
