"""Submasks, flip rate and dead units (Srivastava et al. 2015, "Understanding locally competitive
networks", sec. 3).

A submask is the bit string of which units of a layer are active for one input: ReLU, unit > 0;
LWTA and maxout, the winner of each block; sT, the kept units. Activation modules from
:mod:`clrl.layers` say this themselves through ``active_mask(pre_activation)``; this module adds
the forward-hook plumbing to get pre-activations out of a model.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

__all__ = ["Capture", "capture_layer", "submask", "flip_rate", "dead_unit_share"]


def submask(activation: nn.Module, pre_activation: Tensor) -> Tensor:
    """Bool tensor shaped like ``pre_activation``: True where the unit is active.

    Uses the module's ``active_mask`` when it has one (all clrl activations), ``> 0`` for a
    plain ``torch.nn.ReLU``, and otherwise "output non-zero" for width-preserving modules.

    Always in eval mode, as the analysis records the activations it masks (the monitor's and
    the kNN check's passes run the trunk in eval mode): a normalization stage (``bn``) then
    uses its running statistics, not the probe batch's, so the mask is that of the recorded
    outputs, and no statistics are updated. The module's mode is restored."""
    was = activation.training
    activation.eval()
    try:
        with torch.no_grad():
            if hasattr(activation, "active_mask"):
                return activation.active_mask(pre_activation).bool()
            if isinstance(activation, nn.ReLU):
                return pre_activation > 0
            out = activation(pre_activation)
    finally:
        activation.train(was)
    if out.shape != pre_activation.shape:
        raise ValueError(f"cannot derive a submask for {type(activation).__name__}: it changes width")
    return out != 0


class Capture:
    """Context manager recording the inputs and outputs of ``layer`` on every forward.

    For an activation module, ``inputs`` are its pre-activations. Tensors are detached; with
    ``to_cpu`` they are moved to the CPU. ``input()`` / ``output()`` concatenate over batches."""

    def __init__(self, layer: nn.Module, to_cpu: bool = True) -> None:
        self.layer = layer
        self.to_cpu = to_cpu
        self.inputs: list[Tensor] = []
        self.outputs: list[Tensor] = []
        self._handle = None

    def _hook(self, module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        x, y = args[0].detach(), out.detach()
        if self.to_cpu:
            x, y = x.cpu(), y.cpu()
        self.inputs.append(x)
        self.outputs.append(y)

    def __enter__(self) -> Capture:
        self._handle = self.layer.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def input(self) -> Tensor:
        return torch.cat(self.inputs)

    def output(self) -> Tensor:
        return torch.cat(self.outputs)


def _batches(x: Tensor, batch_size: int | None) -> Iterator[Tensor]:
    step = x.shape[0] if not batch_size else batch_size
    for i in range(0, x.shape[0], step):
        yield x[i : i + step]


@torch.no_grad()
def capture_layer(
    model: nn.Module, layer: nn.Module, x: Tensor, batch_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """Run ``model`` on ``x`` (in eval mode, restored afterwards) and return the (input, output)
    of ``layer``; for an activation layer that is (pre-activation, activation)."""
    was_training = model.training
    model.eval()
    try:
        with Capture(layer) as cap:
            for xb in _batches(x, batch_size):
                model(xb)
    finally:
        model.train(was_training)
    return cap.input(), cap.output()


def flip_rate(mask_a: Tensor, mask_b: Tensor) -> float:
    """Share of entries that differ between two submask snapshots of the same examples: the mean
    over units of the fraction of examples whose unit flipped (Srivastava et al. 2015, Fig. 4)."""
    if mask_a.shape != mask_b.shape:
        raise ValueError(f"mask shapes differ: {tuple(mask_a.shape)} vs {tuple(mask_b.shape)}")
    if mask_a.numel() == 0:
        raise ValueError("empty masks")
    return (mask_a.bool() != mask_b.bool()).float().mean().item()


def dead_unit_share(masks: Tensor) -> float:
    """Share of units never active over a set of inputs. ``masks`` is ``(N, U)`` or
    ``(N, C, *spatial)``; a unit is an index along dim 1 (a conv channel counts as alive when it
    is active at any sample and position)."""
    if masks.dim() < 2 or masks.shape[0] == 0:
        raise ValueError(f"expected masks of shape (N, U, ...), got {tuple(masks.shape)}")
    per_unit = masks.bool().transpose(0, 1).reshape(masks.shape[1], -1).any(dim=1)
    return (~per_unit).float().mean().item()
