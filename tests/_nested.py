"""Comparing nested results blocks (dicts and lists of floats) up to float32 noise."""

from __future__ import annotations

from typing import Any

import numpy as np


def nested_close(x: Any, y: Any, rtol: float = 1e-6, atol: float = 1e-9) -> bool:
    """Same keys, lengths and non-float values; floats within ``rtol``/``atol`` (NaN equals NaN).
    Two forwards of one network over other batch splits differ in float32's last bits."""
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(nested_close(x[k], y[k], rtol, atol) for k in x)
    if isinstance(x, list):
        return isinstance(y, list) and len(x) == len(y) and all(
            nested_close(a, b, rtol, atol) for a, b in zip(x, y, strict=True))
    if isinstance(x, float) and isinstance(y, float):
        return bool(np.isclose(x, y, rtol=rtol, atol=atol, equal_nan=True))
    return x == y
