"""Continual-learning regularizers as optimizer hooks (Contract 1 of DESIGN.md).

>>> reg = build_regularizer("agscl", trunk, heads, mu=0.1, lamb=100.0, rho=1.0, eta=0.9)
>>> reg.begin_task(t, optimizer); ...; reg.end_task(t, batches, forward)

``REGULARIZER_NAMES`` lists the names; ``HPARAMS[name]`` maps each hyperparameter to its default
(for config validation).
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from clrl.errors import ConfigError, first_line

from .agscl import AGSCL, prox_group
from .base import Regularizer, check_hparams
from .ewc import EWC
from .mas import MAS
from .none import NoRegularizer

__all__ = [
    "AGSCL",
    "EWC",
    "HPARAMS",
    "MAS",
    "NoRegularizer",
    "REGULARIZERS",
    "REGULARIZER_NAMES",
    "Regularizer",
    "build_regularizer",
    "build_from_config",
    "prox_group",
    "validate_hparams",
]

REGULARIZERS: dict[str, type[Regularizer]] = {cls.name: cls for cls in (NoRegularizer, EWC, MAS, AGSCL)}
REGULARIZER_NAMES: list[str] = list(REGULARIZERS)
HPARAMS: dict[str, dict[str, Any]] = {name: dict(cls.HPARAMS) for name, cls in REGULARIZERS.items()}


def _lookup(name: str) -> type[Regularizer]:
    if name not in REGULARIZERS:
        close = difflib.get_close_matches(str(name), REGULARIZER_NAMES, n=1, cutoff=0.3)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown regularizer '{name}'{hint} (valid: {', '.join(REGULARIZER_NAMES)})")
    return REGULARIZERS[name]


def validate_hparams(name: str, **hparams: Any) -> dict[str, Any]:
    """Check a regularizer name and hyperparameters without a network; returns the full set
    (defaults filled in). Raises ValueError naming the bad name, key or value."""
    cls = _lookup(name)
    full = check_hparams(name, cls.HPARAMS, hparams)
    cls.validate(full)
    return full


def build_regularizer(name: str, trunk: nn.Module, heads: nn.Module | None = None, **hparams: Any) -> Regularizer:
    """The regularizer ``name`` (one of ``REGULARIZER_NAMES``) for ``trunk`` and optional
    :class:`~clrl.nets.MultiHead` ``heads``."""
    return _lookup(name)(trunk, heads, **hparams)


def build_from_config(name: str, hparams: dict[str, Any], trunk: nn.Module, heads: nn.Module | None,
                      activation: Any = None) -> Regularizer:
    """:func:`build_regularizer` for a run's config section: a bad value is the config's fault
    and raised as ``ConfigError("regularizer: ...")``; a trunk the method cannot work on (AGS-CL
    on normalization layers) as ``ConfigError("model.activation: ...")`` naming ``activation``,
    the key to change (or ``regularizer.name``). Preflight and both front ends build through here."""
    from clrl.errors import short_repr
    from clrl.regularizers.agscl import UnsupportedTrunk

    try:
        return build_regularizer(name, trunk, heads=heads, **hparams)
    except UnsupportedTrunk as exc:
        raise ConfigError(
            f"model.activation: given {short_repr(activation)}, which regularizer.name {name} cannot work with: "
            + first_line(exc).removeprefix(f"{name}: ")
        ) from exc
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ConfigError(f"regularizer: {first_line(exc)}") from exc
