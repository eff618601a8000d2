"""Variance-constancy loss (VCL; Littwin & Wolf 2018, eq. 17 and sec. 2 "practical").

For every unit of every hooked layer, with pre-activations ``s1`` and ``s2`` of two disjoint
subsets of ``n`` samples of the batch,

    L_unit = (1 - var(s1) / (var(s2) + beta_unit))^2,

where ``var`` is the **unbiased** sample variance (1 / (n - 1), as the paper defines sigma_s^2)
and ``beta`` is a learned per-unit parameter initialized at 1. Unit losses are averaged per
layer, layers are summed, and the sum is weighted by ``gamma``. On conv layers every
(channel, position) is a unit, on Linear layers every output feature.

Subsets: by default the first ``n`` and the next ``n`` samples of the batch, as in the paper;
with a ``generator`` the ``2n`` samples are taken from a random permutation of the batch instead.
``beta`` is not constrained (the paper learns it freely); a training loop that fears
``var(s2) + beta`` near 0 can clip it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.parameter import UninitializedParameter
from torch.utils.hooks import RemovableHandle

__all__ = ["VCL"]


class VCL(nn.Module):
    """Attach VCL to every ``nn.Conv2d`` / ``nn.Linear`` of ``trunk`` through forward hooks.

    Usage::

        vcl = VCL(trunk, gamma=0.01, n=2, example_input=x[:4])   # betas exist now
        opt = torch.optim.Adam([*trunk.parameters(), *vcl.parameters()])
        loss = task_loss(trunk(x)) + vcl.loss()

    Without ``example_input``, Linear betas are created at attach and conv betas (whose shape
    depends on the spatial size) are uninitialized parameters until the first forward: call
    :meth:`materialize` with a batch before building the optimizer. The trunk itself is not a submodule: ``vcl.parameters()``
    holds only the betas.
    """

    def __init__(
        self,
        trunk: nn.Module,
        gamma: float,
        n: int,
        example_input: Tensor | None = None,
        layer_types: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear),
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if int(n) < 2:
            raise ValueError(f"n={n}: the unbiased variance needs at least 2 samples per subset")
        self.gamma = float(gamma)
        self.n = int(n)
        self.generator = generator
        self.betas = nn.ParameterDict()
        self.layer_names: list[str] = []
        self._outputs: dict[str, Tensor] = {}
        self._handles: list[RemovableHandle] = []
        for name, module in trunk.named_modules():
            if isinstance(module, layer_types):
                key = f"layer{len(self.layer_names)}"
                self.layer_names.append(name)
                if isinstance(module, nn.Linear):
                    self.betas[key] = nn.Parameter(torch.ones(module.out_features))
                else:  # shape known at the first forward; the slot keeps the layer order
                    self.betas[key] = UninitializedParameter()
                self._handles.append(module.register_forward_hook(self._make_hook(key)))
        if not self.layer_names:
            raise ValueError("VCL found no layer of the given types in the trunk")
        if example_input is not None:
            self.materialize(trunk, example_input)

    def _make_hook(self, key: str):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            units = output.shape[1:]
            beta = self.betas[key]
            if isinstance(beta, UninitializedParameter):
                with torch.no_grad():
                    beta.materialize(units, device=output.device, dtype=output.dtype)
                    beta.fill_(1.0)
            elif self.betas[key].shape != units:
                raise ValueError(
                    f"VCL layer {key}: output units {tuple(units)} differ from its betas "
                    f"{tuple(self.betas[key].shape)} (input size changed?)"
                )
            self._outputs[key] = output

        return hook

    def materialize(self, trunk: nn.Module, example_input: Tensor) -> None:
        """Run one no-grad forward so that every beta exists (restores train/eval mode)."""
        was_training = trunk.training
        trunk.eval()
        with torch.no_grad():
            trunk(example_input)
        trunk.train(was_training)
        self._outputs.clear()

    def layer_losses(self) -> list[Tensor]:
        """Mean unit loss of each layer seen in the last forward (empty if batch < 2n)."""
        losses = []
        perms: dict[int, Tensor] = {}  # one permutation per call: every layer sees the same samples
        for key, out in self._outputs.items():
            if out.shape[0] < 2 * self.n:
                continue
            s = out.flatten(1)
            if self.generator is not None:
                b = s.shape[0]
                if b not in perms:
                    perms[b] = torch.randperm(b, generator=self.generator)[: 2 * self.n]
                s = s[perms[b].to(s.device)]
            v1 = s[: self.n].var(dim=0, unbiased=True)
            v2 = s[self.n : 2 * self.n].var(dim=0, unbiased=True)
            beta = self.betas[key].flatten()
            losses.append(((1.0 - v1 / (v2 + beta)) ** 2).mean())
        return losses

    def loss(self) -> Tensor:
        """``gamma * sum_layers mean_units L_unit`` from the last forward; 0 if batch < 2n."""
        losses = self.layer_losses()
        if not losses:
            return torch.zeros((), device=next(iter(self.betas.values())).device)
        return self.gamma * torch.stack(losses).sum()

    def clear(self) -> None:
        """Drop the stored pre-activations (and their graphs)."""
        self._outputs.clear()

    def detach(self) -> None:
        """Remove the forward hooks from the trunk; the betas stay."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._outputs.clear()
