"""The Atari forgetting experiment -> docs/atari_forgetting.md (issue 18).

    python scripts/atari_forgetting.py [--out DIR] [--workers N] [--render] [--set k=v ...]

Runs configs/sweep_atari_forgetting.yaml (fine-tuning, EWC, MAS, AGS-CL x 3 seeds; running it
again resumes), copies each run's results.json to docs/data/atari_forgetting/ and writes the page
and its figures; --render rebuilds them from the committed results without training. The logic
lives in :mod:`clrl.experiments.atari_forgetting`.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    from clrl.experiments.atari_forgetting import main

    sys.exit(main(root=ROOT))
