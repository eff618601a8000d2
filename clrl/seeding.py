"""One place that seeds python, numpy and torch and hands out generators.

Every source of randomness in clrl goes through here so that a CPU run with a
given seed is repeatable, and a checkpoint can capture and restore it exactly.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import numpy as np
import torch


def derive_seed(seed: int, *keys: object) -> int:
    """A stable 31-bit seed for a named sub-stream (``derive_seed(0, "env", task)``).

    Uses a hash, not ``hash()``, so it is the same across processes and Python runs.
    """
    text = repr((int(seed), *keys)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "little") & 0x7FFFFFFF


@dataclass
class Generators:
    """Independent generators for one run: ``np_rng`` for numpy code, ``torch_gen`` for torch."""

    seed: int
    np_rng: np.random.Generator
    torch_gen: torch.Generator

    def child(self, *keys: object) -> Generators:
        """Generators for a named sub-stream, independent of this one's state."""
        return make_generators(derive_seed(self.seed, *keys))


def make_generators(seed: int) -> Generators:
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    return Generators(int(seed), np.random.default_rng(int(seed)), gen)


def seed_everything(seed: int, deterministic: bool = False) -> Generators:
    """Seed python's ``random``, numpy's global RNG and torch (CPU and CUDA).

    ``deterministic`` also asks torch for deterministic kernels (slower on CUDA).
    Returns generators for code that prefers explicit ones.
    """
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    return make_generators(seed)


def get_rng_state() -> dict:
    """Global RNG states as tensors and plain values, so ``torch.load(weights_only=True)`` reads them."""
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state = {
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached": float(np_cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` captured."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["name"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def generator_state(gen: np.random.Generator) -> dict:
    """A numpy Generator's state with its big integers as strings (safe for weights_only loads)."""
    return _stringify(gen.bit_generator.state)


def set_generator_state(gen: np.random.Generator, state: dict) -> None:
    gen.bit_generator.state = _unstringify(state)


def _stringify(obj):
    if isinstance(obj, dict):
        return {k: _stringify(v) for k, v in obj.items()}
    if isinstance(obj, int) and not isinstance(obj, bool):
        return {"__int__": str(obj)}
    return obj


def _unstringify(obj):
    if isinstance(obj, dict):
        if set(obj) == {"__int__"}:
            return int(obj["__int__"])
        return {k: _unstringify(v) for k, v in obj.items()}
    return obj
