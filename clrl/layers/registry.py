"""Build activations from spec strings: ``"st_hard:groups=32>gnc:groups=32"``.

Grammar: ``spec := part ('>' part)*``, ``part := name [':' key '=' int (',' key '=' int)*]``.
Parts are applied left to right. Whitespace around tokens is ignored. Every key is a positive
integer. A bad spec raises ``ValueError`` naming the bad part.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .competitive import (
    GNC,
    LWTA,
    BatchNorm,
    GroupNorm,
    Identity,
    LayerNorm,
    Maxout,
    ReLU,
    SparseTransform,
)

__all__ = ["ACTIVATION_NAMES", "ActivationChain", "build_activation", "parse_spec"]

# name -> (required keys, factory(**keys))
_REGISTRY: dict[str, tuple[tuple[str, ...], Callable[..., nn.Module]]] = {
    "relu": ((), ReLU),
    "lwta": (("block",), LWTA),
    "maxout": (("block",), Maxout),
    "st_hard": (("groups",), lambda groups: SparseTransform(groups, hard=True)),
    "st_soft": (("groups",), lambda groups: SparseTransform(groups, hard=False)),
    "gnc": (("groups",), GNC),
    "bn": ((), BatchNorm),
    "gn": (("groups",), GroupNorm),
    "ln": ((), LayerNorm),
    "identity": ((), Identity),
}

ACTIVATION_NAMES: list[str] = list(_REGISTRY)


class ActivationChain(nn.Sequential):
    """Activations applied left to right (``a>b``); widths and submasks compose."""

    def out_width(self, in_width: int) -> int:
        for m in self:
            in_width = m.out_width(in_width)
        return in_width

    def active_mask(self, x_in: Tensor) -> Tensor:
        """A unit of the input is active when every stage lets it through: each stage's mask is
        lifted back to the input width (a maxout output unit stands for its ``block`` inputs).

        The stages run only to feed the next stage's mask, and in eval mode (the mode restored
        afterwards): a ``bn`` stage then uses its running statistics, as the analysis records
        the activations it masks, and does not count the mask's input as a batch of them."""
        was = self.training
        self.eval()
        mask = torch.ones_like(x_in, dtype=torch.bool)
        factor = 1
        x = x_in.detach()
        try:
            with torch.no_grad():
                for m in self:
                    stage = m.active_mask(x)
                    if factor > 1:
                        stage = stage.repeat_interleave(factor, dim=1)
                    mask = mask & stage
                    factor *= x.shape[1] // m.out_width(x.shape[1])
                    x = m(x)
        finally:
            self.train(was)
        return mask


def _parse_int(part: str, key: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"in '{part}': {key}={raw!r} is not an integer") from None
    if value <= 0:
        raise ValueError(f"in '{part}': {key}={value} must be positive")
    return value


def parse_spec(spec: str) -> list[tuple[str, dict[str, int]]]:
    """Split a spec into ``[(name, {key: value})]`` with full validation."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty activation spec {spec!r}; valid names: {ACTIVATION_NAMES}")
    parsed = []
    for part in spec.split(">"):
        part = part.strip()
        if not part:
            raise ValueError(f"empty part in activation spec {spec!r}")
        name, colon, args = part.partition(":")
        name = name.strip()
        if name not in _REGISTRY:
            close = difflib.get_close_matches(name, ACTIVATION_NAMES, n=1, cutoff=0.0)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"unknown activation '{name}' in '{part}'{hint} (valid: {ACTIVATION_NAMES})")
        required = _REGISTRY[name][0]
        kwargs: dict[str, int] = {}
        if args.strip():
            for item in args.split(","):
                key, eq, raw = item.partition("=")
                key, raw = key.strip(), raw.strip()
                if not eq or not key:
                    raise ValueError(f"in '{part}': '{item.strip()}' is not of the form key=value")
                if key not in required:
                    allowed = ", ".join(required) or "no keys"
                    raise ValueError(f"in '{part}': unknown key '{key}' for '{name}' (takes {allowed})")
                if key in kwargs:
                    raise ValueError(f"in '{part}': key '{key}' given twice")
                kwargs[key] = _parse_int(part, key, raw)
        elif colon:
            raise ValueError(f"in '{part}': nothing after ':'")
        missing = [k for k in required if k not in kwargs]
        if missing:
            raise ValueError(f"in '{part}': missing required key '{missing[0]}' for '{name}'")
        parsed.append((name, kwargs))
    return parsed


def build_activation(spec: str) -> nn.Module:
    """Build the module for ``spec``; a single part gives that module, a chain an
    :class:`ActivationChain`. Every result has ``out_width`` and ``active_mask``."""
    modules = [_REGISTRY[name][1](**kwargs) for name, kwargs in parse_spec(spec)]
    if len(modules) == 1:
        return modules[0]
    return ActivationChain(*modules)
