"""Fine-tuning: no penalty, no hooks; only the shared diagnostics (sparsity of never-active
nodes, used capacity), so that baselines report the same keys as the other methods."""

from __future__ import annotations

from typing import Any, ClassVar

from .base import Regularizer

__all__ = ["NoRegularizer"]


class NoRegularizer(Regularizer):
    name: ClassVar[str] = "none"
    HPARAMS: ClassVar[dict[str, Any]] = {}
