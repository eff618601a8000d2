"""The torch device a run uses, from the config's ``device`` key (shared by both front ends), and
its CPU thread count for a block of work."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from clrl.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a CUDA device is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but torch sees no CUDA device (use auto or cpu)")
    return torch.device(name)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the body with ``n`` torch CPU threads (0: leave them as they are), then restore them.

    For small-batch inference interleaved with emulation (rollouts, evaluation), where a second
    thread gains nothing and takes a core from the emulators (``train.rollout_threads``)."""
    before = torch.get_num_threads()
    if not n or n == before:
        yield
        return
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
