"""OpenMP spin-wait for training processes: let torch's idle threads yield the cores sooner.

Why: torch's CPU kernels run on GNU OpenMP (libgomp, shipped in the torch wheel), whose worker
threads busy-wait for the next parallel region for ``GOMP_SPINCOUNT`` iterations (300,000 by
default, about a millisecond) before they sleep. In a PPO rollout every inference call is
followed by an env step whose emulators run in C++ threads on the same cores, so the spinning
threads take a core from the emulators for most of that step: on a 2-core machine 8 Boxing envs
step in 0.45 s per 8 x 128 steps after 2-thread inference and in 0.33 s after a spin of 20,000
(``clrl bench ppo`` measures the end-to-end effect; its ``sb3 stock`` row keeps libgomp's
default). A shorter spin still covers the gaps between the kernels of one forward or backward
pass, so training keeps its speed.

libgomp reads the variable once, when torch is imported, so :func:`tune_openmp` runs when
``clrl`` is imported and does nothing if torch came first, if the user set ``GOMP_SPINCOUNT`` or
``OMP_WAIT_POLICY`` themselves, or under ``CLRL_OPENMP=default``.
"""

from __future__ import annotations

import os
import sys

__all__ = ["tune_openmp", "openmp_mode", "SPINCOUNT", "ENV_VAR"]

ENV_VAR = "CLRL_OPENMP"
SPINCOUNT = 20_000

_mode: str | None = None


def tune_openmp() -> str:
    """Set ``GOMP_SPINCOUNT`` for this process (and its children) if nothing else decided it.

    Returns ``"spin 20000"`` when it did (or had), ``"user"`` when the user's own OpenMP
    settings are in the environment, ``"default"`` otherwise (torch already imported, or
    ``CLRL_OPENMP=default``).
    """
    global _mode
    if _mode is not None:
        return _mode
    choice = os.environ.get(ENV_VAR, "").strip().lower()
    if choice == "default":
        _mode = "default"
    elif choice == "spin" and os.environ.get("GOMP_SPINCOUNT") == str(SPINCOUNT):
        _mode = f"spin {SPINCOUNT}"  # inherited from a clrl parent process (a bench's or sweep's child)
    elif "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
        _mode = "user"
    elif "torch" in sys.modules:
        _mode = "default"  # libgomp has read its settings already
    else:
        os.environ["GOMP_SPINCOUNT"] = str(SPINCOUNT)
        os.environ[ENV_VAR] = "spin"  # children that import clrl report the setting as clrl's
        _mode = f"spin {SPINCOUNT}"
    return _mode


def openmp_mode() -> str | None:
    """What :func:`tune_openmp` decided in this process (None if it was not called)."""
    return _mode
