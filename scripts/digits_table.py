"""Split Digits: fine-tuning, EWC, MAS and AGS-CL over seeds 0, 1, 2 -> docs/split_digits.md.

    python scripts/digits_table.py [--out runs/digits_table] [--seeds 0 1 2] [--doc docs/split_digits.md]

The logic lives in :mod:`clrl.supervised.table`; this script only runs it and writes the page.
Runs already complete in ``--out`` are read back, so a re-run only redoes what is missing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "digits_table", help="folder for the 12 runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "split_digits.md")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the MLP is tiny: 1 is fastest)")
    parser.add_argument("--progress", action="store_true", help="show a progress bar per task")
    args = parser.parse_args(argv)

    import torch

    from clrl.supervised.table import METHODS, markdown_table, run_table, table_rows

    torch.set_num_threads(args.threads)
    start = time.time()
    runs = run_table(ROOT / "configs", args.out, args.seeds, progress=args.progress)
    table = markdown_table(table_rows(runs))
    minutes = (time.time() - start) / 60
    seeds = " ".join(map(str, args.seeds))
    command = f"python scripts/digits_table.py --seeds {seeds}"
    configs = ", ".join(f"`configs/{f}`" for f in METHODS.values())
    page = PAGE.format(table=table, command=command, configs=configs, n=len(args.seeds), seeds=seeds.replace(" ", ", "))
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text(page)
    print(table)
    print(f"wrote {args.doc} ({minutes:.1f} min)")
    return 0


PAGE = """# Split Digits: fine-tuning, EWC, MAS and AGS-CL

scikit-learn's bundled 8x8 handwritten digits (1,797 images; nothing is downloaded) split into
5 tasks of 2 classes (class-to-task assignment shuffled by the seed), a seeded stratified 70/30
train/test split, 10% of each task's training set held out for validation. Task-aware: one
2-way head per task, every task scored through its own head. Same network and training for every
method: MLP 64-128-128 (ReLU), Adam lr 0.01, batch 32, up to 40 epochs per task, lr /3 after 5
epochs without validation improvement, best-validation weights restored per task. Configs:
{configs}.

Mean ± sample standard deviation over {n} seeds ({seeds}), from each run's R (final accuracies after
the last task):

{table}

- ACC: mean accuracy over the 5 tasks after the last one. BWT: mean over the first 4 tasks of
  R[T-1][j] - R[j][j]. Forgetting (Chaudhry et al.): mean over the first 4 tasks of the best
  earlier accuracy minus the final one. S: mean of R[T-1][j] / max over i >= j of R[i][j].
- P: mean of R[i][i] / R_ft[i][i] with R_ft the fine-tuning run of the same seed (AGS-CL sec. 4.1, Analysis 3);
  1 for fine-tuning by definition.
- Hyperparameters: AGS-CL mu 10, lambda 400, rho 0.3, eta 0.9 (the paper's CIFAR-100 values), one
  proximal step per epoch; EWC lambda 1e6 with the empirical Fisher; MAS lambda 10 with the
  non-squared L2 norm of the logits. EWC and MAS were tuned on these three seeds (a coarse grid);
  the learning rate is high on purpose, so that fine-tuning forgets visibly.
- Two-digit tasks are easy (every method learns each task to about 99%), so this is a sanity check
  of the suite (the regularizers prevent forgetting without costing plasticity), not a benchmark.

Made with (about 1-2 minutes on 2 CPU cores; runs land in `runs/digits_table/`):

```
{command}
```
"""


if __name__ == "__main__":
    sys.exit(main())
