"""clrl.allocator: glibc keeps large freed buffers for reuse once tuned (page faults, not time).

Each case runs in a fresh interpreter: malloc settings are process-wide and cannot be undone.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

# Like a training step, 20 rounds of: allocate and write four 16 MiB buffers, free them all; count
# the minor page faults. Untuned, glibc's dynamic thresholds let the freed 64 MiB at the top of the
# heap go back to the kernel (it exceeds twice the mmap threshold), so every round faults its
# pages in again; tuned, the heap keeps them and only the first round faults.
PROBE = """
import json, resource, sys
import numpy as np
from clrl.allocator import malloc_mode, tune_malloc
mode = tune_malloc() if sys.argv[1] == "tune" else None
again = tune_malloc() if sys.argv[1] == "tune" else None
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    bufs = [np.ones(2 * 1024 * 1024) for _ in range(4)]  # 16 MiB of float64 each, every page written
    del bufs
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"mode": mode, "again": again, "reported": malloc_mode(), "faults": faults}))
"""

PAGES = 4 * 16 * 1024 * 1024 // 4096  # pages of one round


def _probe(arg: str, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, arg], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_tuned_malloc_reuses_large_buffers_instead_of_faulting_them_in_again():
    plain = _probe("none")
    tuned = _probe("tune")
    assert plain["reported"] is None
    assert tuned["mode"] == tuned["again"] == tuned["reported"] == "tuned"
    assert tuned["faults"] <= PAGES  # the first round, then reuse
    # fresh pages nearly every round (counts, not pages: transparent huge pages fault 2 MiB at once)
    assert plain["faults"] > 5 * tuned["faults"]


def test_clrl_malloc_default_leaves_glibc_alone():
    res = _probe("tune", CLRL_MALLOC="default")
    assert res["mode"] == res["reported"] == "default"
    assert res["faults"] > 5 * _probe("tune")["faults"]
