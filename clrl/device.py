"""The torch device a run uses, from the config's ``device`` key (shared by both front ends)."""

from __future__ import annotations

import torch

from clrl.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a CUDA device is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but torch sees no CUDA device (use auto or cpu)")
    return torch.device(name)
