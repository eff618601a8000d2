"""Memory aware synapses (Aljundi et al. 2018) as an optimizer hook.

Importance of task t: ``Omega_t,i = mean_x |d ||f(x)||_2^2 / d theta_i|`` with the gradient taken
per sample (``f`` = ``forward``'s output, e.g. the task's logits). ``norm="l2"`` uses the
non-squared norm ``||f(x)||_2`` as the AGS-CL code does (its gradient is defined as 0 where
``f(x) = 0``). Over tasks: ``accumulate="sum"`` (MAS paper) or ``"mean"`` (running average over
tasks). One anchor (the latest weights). Penalty ``lamb / 2 * sum Omega (theta - theta*)^2``, the
same form as EWC (the MAS paper writes ``lamb * sum ...``: its lambda is half of ours).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .base import _choice
from .quadratic import LossFn, QuadraticRegularizer

__all__ = ["MAS"]


def _sq_norm(out: Tensor, y: Tensor | None) -> Tensor:
    return (out * out).sum()


def _l2_norm(out: Tensor, y: Tensor | None) -> Tensor:
    sq = (out * out).sum()
    # sqrt has an infinite derivative at 0; define the gradient there as 0 (no signal)
    safe = torch.where(sq > 0, sq, torch.ones_like(sq))
    return torch.where(sq > 0, torch.sqrt(safe), torch.zeros_like(sq))


class MAS(QuadraticRegularizer):
    name: ClassVar[str] = "mas"
    HPARAMS: ClassVar[dict[str, Any]] = {
        "lamb": 1.0,
        "norm": "squared",
        "accumulate": "sum",
        "include_heads": False,
        "max_samples": None,
        "chunk_size": 16,
        "per_sample": "auto",
        "penalty_clipped": False,
    }
    _reduce: ClassVar[str] = "abs"

    @classmethod
    def validate(cls, hp: dict[str, Any]) -> None:
        super().validate(hp)
        _choice(cls.name, "norm", hp["norm"], ("squared", "l2"))
        _choice(cls.name, "accumulate", hp["accumulate"], ("sum", "mean"))

    def _loss_fn(self) -> LossFn:
        return _sq_norm if self.hparams["norm"] == "squared" else _l2_norm

    def _merge(self, new: dict[str, Tensor], anchor: dict[str, Tensor]) -> None:
        if not self.terms:
            self.terms = [{"importance": new, "anchor": anchor}]
            return
        old = self.terms[0]["importance"]
        k = self.n_consolidated
        if self.hparams["accumulate"] == "sum":
            merged = {n: old[n] + v if n in old else v for n, v in new.items()}
        else:
            merged = {n: (k * old[n] + v) / (k + 1) if n in old else v for n, v in new.items()}
        self.terms = [{"importance": merged, "anchor": anchor}]
