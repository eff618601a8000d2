#!/usr/bin/env python
"""kNN on penultimate-layer submasks vs the net's accuracy on sklearn digits
(Srivastava et al. 2015, Table 1). Logic lives in clrl.analysis.knn_check.

    python scripts/knn_submasks_digits.py            # writes docs/knn_submasks.md + figures
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from clrl.analysis.knn_check import DEFAULT_SPECS, plot_results, run_check, write_markdown

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--specs", nargs="+", default=list(DEFAULT_SPECS), help="activation specs")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--out-md", default=str(ROOT / "docs" / "knn_submasks.md"))
    p.add_argument("--fig-dir", default=str(ROOT / "docs" / "figures"))
    args = p.parse_args()

    t0 = time.perf_counter()
    results = run_check(tuple(args.specs), tuple(args.seeds), epochs=args.epochs, hidden=args.hidden)
    fig_dir = Path(args.fig_dir)
    bar, flip = fig_dir / "knn_submasks_digits.png", fig_dir / "knn_submasks_flip.png"
    plot_results(results, bar, flip)
    md = Path(args.out_md)
    rel = [str(Path("figures") / bar.name), str(Path("figures") / flip.name)]
    command = " ".join(["python", "scripts/knn_submasks_digits.py", *sys.argv[1:]])
    print(write_markdown(results, md, command, rel))
    print(f"wrote {md}, {bar}, {flip} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
