"""Elastic weight consolidation (Kirkpatrick et al. 2017) as an optimizer hook.

Importance: the diagonal Fisher ``F_i = mean_x g_i(x, y)^2`` with ``g = d log p(y|x) / d theta``
computed per sample (torch.func vmap of grad, or a loop), never from a minibatch-mean gradient.

* ``fisher="true"`` (default): ``y`` is drawn from the model's own predictive distribution
  ``Categorical(logits=forward(x))``: the label for a classifier, the action for a policy. Drawn
  with the ``seed`` generator, or torch's global RNG when ``seed`` is None.
* ``fisher="empirical"``: ``y`` is the label from ``(x, y)`` batches (what the AGS-CL
  supervised code uses).

Modes: ``"separate"`` keeps one Fisher and anchor per task (the AGS-CL RL code, "offline");
``"online"`` keeps one running Fisher ``F <- gamma * F + F_t`` and the latest anchor (Schwarz et
al. 2018). Penalty ``lamb / 2 * sum F (theta - theta*)^2`` (see :mod:`.quadratic`). Heads are
excluded unless ``include_heads=True`` (the AGS-CL RL code includes them). ``max_samples`` caps the
samples used per task.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import _choice, _number, _seed
from .quadratic import LossFn, QuadraticRegularizer

__all__ = ["EWC"]


def _nll(out: Tensor, y: Tensor | None) -> Tensor:
    """-log p(y|x) of one sample's logits; its gradient squared is the Fisher term."""
    return F.cross_entropy(out.unsqueeze(0), y.reshape(1).long())


class EWC(QuadraticRegularizer):
    name: ClassVar[str] = "ewc"
    HPARAMS: ClassVar[dict[str, Any]] = {
        "lamb": 5000.0,
        "mode": "separate",
        "gamma": 1.0,
        "fisher": "true",
        "include_heads": False,
        "max_samples": None,
        "chunk_size": 16,
        "per_sample": "auto",
        "penalty_clipped": False,
        "seed": None,
    }
    _reduce: ClassVar[str] = "square"

    @classmethod
    def validate(cls, hp: dict[str, Any]) -> None:
        super().validate(hp)
        _choice(cls.name, "mode", hp["mode"], ("separate", "online"))
        _number(cls.name, "gamma", hp["gamma"], low=0, high=1)
        _choice(cls.name, "fisher", hp["fisher"], ("true", "empirical"))
        _seed(cls.name, hp["seed"])

    def _loss_fn(self) -> LossFn:
        return _nll

    def _labels(self, x: Any, y: Tensor | None, out: Tensor) -> Tensor:
        if out.dim() != 2:
            raise ValueError(f"ewc: forward must return (batch, classes) logits, got shape {tuple(out.shape)}")
        if self.hparams["fisher"] == "empirical":
            if y is None:
                raise ValueError("ewc: fisher='empirical' needs batches of (x, y) pairs")
            return y.to(out.device)
        probs = torch.softmax(out.detach().float().cpu(), dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(1).to(out.device)

    def _merge(self, new: dict[str, Tensor], anchor: dict[str, Tensor]) -> None:
        if self.hparams["mode"] == "separate" or not self.terms:
            if self.hparams["mode"] == "online":
                self.terms = [{"importance": new, "anchor": anchor}]
            else:
                self.terms.append({"importance": new, "anchor": anchor})
            return
        gamma = float(self.hparams["gamma"])
        old = self.terms[0]["importance"]
        merged = {k: (gamma * old[k] + v) if k in old else v for k, v in new.items()}
        self.terms = [{"importance": merged, "anchor": anchor}]
