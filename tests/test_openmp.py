"""clrl.openmp: GOMP_SPINCOUNT is set before torch loads libgomp, and only when nothing else decided it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from clrl.openmp import ENV_VAR, SPINCOUNT

PROBE = (
    "import json, os, sys\n"
    "{first}\n"
    "import clrl.openmp as m\n"
    "print(json.dumps({{'mode': m.openmp_mode(), 'spin': os.environ.get('GOMP_SPINCOUNT')}}))\n"
    "{then}\n"
)


def _probe(env_extra: dict[str, str], first: str = "import clrl", then: str = "") -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", ENV_VAR)}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", PROBE.format(first=first, then=then)], env=env, capture_output=True,
                         text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_clrl_sets_the_spin_count_before_torch():
    got = _probe({}, first="import clrl, torch")
    assert got == {"mode": f"spin {SPINCOUNT}", "spin": str(SPINCOUNT)}


@pytest.mark.parametrize(("extra", "mode", "spin"), [
    ({"GOMP_SPINCOUNT": "777"}, "user", "777"),
    ({"OMP_WAIT_POLICY": "PASSIVE"}, "user", None),
    ({ENV_VAR: "default"}, "default", None),
])
def test_user_settings_win(extra, mode, spin):
    assert _probe(extra) == {"mode": mode, "spin": spin}


def test_a_child_of_a_clrl_process_reports_clrls_setting():
    child = ("import subprocess; print(subprocess.run([sys.executable, '-c', 'import clrl.openmp as m; "
             "print(m.openmp_mode())'], capture_output=True, text=True).stdout.strip())")
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", ENV_VAR)}
    out = subprocess.run([sys.executable, "-c", "import sys, clrl\n" + child], env=env, capture_output=True,
                         text=True, check=True, timeout=120)
    assert out.stdout.strip() == f"spin {SPINCOUNT}"


def test_torch_first_leaves_libgomp_alone():
    """libgomp read its settings when torch loaded: setting the variable afterwards would claim an
    effect it does not have."""
    assert _probe({}, first="import torch") == {"mode": "default", "spin": None}


def test_libgomp_reads_the_variable():
    """The setting reaches torch's OpenMP runtime: libgomp rejects a malformed value at load."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", ENV_VAR)}
    env["GOMP_SPINCOUNT"] = "not-a-number"
    out = subprocess.run([sys.executable, "-c", "import torch; torch.ones(64, 64) @ torch.ones(64, 64)"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert "GOMP_SPINCOUNT" in out.stderr
