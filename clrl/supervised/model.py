"""The supervised network: a ``clrl.nets`` trunk, one head per task, and optional VCL.

``model.net`` picks the trunk (``auto``: ``digits`` for Split Digits, ``single_pass`` for the
single-pass CIFAR-100 regime, ``cifar`` otherwise). Every task's head is created up front, in
task order, so that untrained tasks can be scored with their freshly initialized heads (the
entries of R above the diagonal and the FWT baseline) and so that a resumed run rebuilds the
same parameters before loading the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from clrl.config import SupervisedConfig
from clrl.errors import ConfigError
from clrl.layers import VCL
from clrl.nets import MultiHead, Trunk, cifar_trunk, digits_trunk, single_pass_trunk
from clrl.supervised.data import Benchmark

__all__ = ["SupervisedModel", "build_model", "resolve_net"]

_IMAGE_NETS = ("cifar", "single_pass")


def resolve_net(cfg: SupervisedConfig) -> str:
    """The trunk ``model.net`` names, with ``auto`` resolved by dataset."""
    net = cfg.model.net
    dataset = cfg.tasks.dataset
    if net == "auto":
        return {"split_digits": "digits", "single_pass_cifar100": "single_pass"}.get(dataset, "cifar")
    if (net == "digits") != (dataset == "split_digits"):
        need = "digits" if dataset == "split_digits" else "cifar or single_pass"
        raise ConfigError(f"model.net: {net!r} does not fit tasks.dataset {dataset!r}; use {need} (or auto)")
    return net


@dataclass
class SupervisedModel:
    trunk: Trunk
    heads: MultiHead
    vcl: VCL | None

    def __call__(self, x: Tensor, task: int) -> Tensor:
        return self.heads(self.trunk(x), task)

    def train(self, mode: bool = True) -> None:
        self.trunk.train(mode)
        self.heads.train(mode)

    def parameters_for(self, task: int) -> list[nn.Parameter]:
        """What task ``task``'s optimizer updates: the trunk, that task's head, VCL's betas.
        Past (and future) heads are left out: bug (3) in the README's "Departures from the authors' code"."""
        params = list(self.trunk.parameters()) + list(self.heads.parameters_of(task))
        if self.vcl is not None:
            params += list(self.vcl.parameters())
        return params

    def to(self, device: torch.device) -> SupervisedModel:
        self.trunk.to(device)
        self.heads.to(device)
        if self.vcl is not None:
            self.vcl.to(device)
        return self


def build_model(cfg: SupervisedConfig, bench: Benchmark) -> SupervisedModel:
    """Trunk, all heads (in task order) and VCL, from torch's global RNG (seed it first)."""
    net = resolve_net(cfg)
    act = cfg.model.activation
    try:
        if net == "digits":
            trunk = digits_trunk(cfg.model.hidden, act, in_features=bench.input_shape[0])
        elif net == "cifar":
            trunk = cifar_trunk(act, dropout=cfg.model.dropout)
        else:
            trunk = single_pass_trunk(act)
    except ValueError as exc:
        raise ConfigError(f"model.activation: {exc}") from exc
    heads = MultiHead(trunk.out_features)
    for t, task in enumerate(bench.tasks):
        heads.add_head(t, task.n_classes)
    vcl = None
    if cfg.train.vcl.gamma > 0:
        example = torch.zeros(2 * cfg.train.vcl.n, *bench.input_shape)
        vcl = VCL(trunk, cfg.train.vcl.gamma, cfg.train.vcl.n, example_input=example)
    return SupervisedModel(trunk, heads, vcl)
