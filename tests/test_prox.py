"""prox_group (Lemma 1, eq. 6) against brute-force minimization and its exact thresholds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from clrl.regularizers.agscl import prox_group


def _objective(theta: np.ndarray, v: np.ndarray, c: np.ndarray, t: float) -> float:
    return t * np.linalg.norm(theta - c) + 0.5 * np.sum((theta - v) ** 2)


def _brute(v: np.ndarray, c: np.ndarray, t: float) -> np.ndarray:
    """Minimize t*||theta - c|| + ||theta - v||^2 / 2 numerically (best of several starts)."""
    best, best_f = None, np.inf
    for start in (v, c, (v + c) / 2, v + 0.3):
        res = minimize(_objective, start, args=(v, c, t), method="Powell", options={"xtol": 1e-10, "ftol": 1e-14, "maxiter": 200000})
        if res.fun < best_f:
            best, best_f = res.x, res.fun
    return best


@pytest.mark.parametrize("seed", range(6))
def test_matches_numerical_minimization(seed):
    rng = np.random.default_rng(seed)
    d = 4
    v = rng.normal(size=(3, d))
    c = rng.normal(size=(3, d)) if seed % 2 else np.zeros((3, d))
    dist = np.linalg.norm(v - c, axis=1)
    # one row well below, one near, one above its threshold
    t = np.array([dist[0] * 1.5, dist[1] * 0.9, dist[2] * 0.3])
    center = torch.tensor(c) if seed % 2 else None
    got = prox_group(torch.tensor(v), torch.tensor(t), center).numpy()
    for i in range(3):
        ref = _brute(v[i], c[i], t[i])
        np.testing.assert_allclose(got[i], ref, atol=2e-5)
        # and the closed form is at least as good as the numerical optimum
        assert _objective(got[i], v[i], c[i], t[i]) <= _objective(ref, v[i], c[i], t[i]) + 1e-12


def test_matches_grid_in_two_dimensions():
    v, c, t = np.array([0.8, -0.5]), np.array([0.1, 0.2]), 0.4
    xs = np.linspace(-1.5, 1.5, 1201)  # step 0.0025
    g0, g1 = np.meshgrid(xs, xs, indexing="ij")
    f = t * np.hypot(g0 - c[0], g1 - c[1]) + 0.5 * ((g0 - v[0]) ** 2 + (g1 - v[1]) ** 2)
    i, j = np.unravel_index(np.argmin(f), f.shape)
    got = prox_group(torch.tensor(v), t, torch.tensor(c)).numpy()
    np.testing.assert_allclose(got, [xs[i], xs[j]], atol=0.003)


def test_exact_zero_and_freeze_at_the_threshold():
    v = torch.tensor([[3.0, 4.0], [3.0, 4.0], [0.6, 0.8]])  # norms 5, 5, 1
    out = prox_group(v, torch.tensor([5.0, 4.0, 1.0]))
    assert torch.equal(out[0], torch.zeros(2)) and torch.equal(out[2], torch.zeros(2))  # norm == threshold
    torch.testing.assert_close(out[1], v[1] * (1 - 4.0 / 5.0), rtol=0, atol=1e-7)  # shrunk, not zero
    assert torch.all(out[1] != 0)
    center = torch.tensor([[1.0, 1.0], [1.0, 1.0], [2.0, -1.0]])
    w = center + torch.tensor([[3.0, 4.0], [3.0, 4.0], [0.0, 0.0]])
    frozen = prox_group(w, torch.tensor([5.0, 4.999, 0.0]), center)
    assert torch.equal(frozen[0], center[0])  # distance == threshold: exactly the anchor
    assert not torch.equal(frozen[1], center[1])
    assert torch.equal(frozen[2], center[2])  # distance 0, threshold 0: no NaN


def test_zero_threshold_is_identity_and_zero_vectors_are_safe():
    v = torch.randn(5, 7, dtype=torch.float64)
    v[2] = 0
    out = prox_group(v, 0.0)
    assert torch.equal(out, v) and not torch.isnan(out).any()
    out = prox_group(torch.zeros(3, 4), 0.5)
    assert torch.equal(out, torch.zeros(3, 4))


def test_scalar_threshold_one_group_and_shape_errors():
    v = torch.tensor([1.0, 2.0, 2.0])  # norm 3
    torch.testing.assert_close(prox_group(v, 1.0), v * (2.0 / 3.0))
    with pytest.raises(ValueError, match=">= 0"):
        prox_group(v, -1.0)
    with pytest.raises(ValueError, match="entries"):
        prox_group(torch.ones(3, 2), torch.ones(2))


def test_optimality_condition():
    """Away from the center the result satisfies theta - v + t (theta - c)/||theta - c|| = 0."""
    torch.manual_seed(0)
    v = torch.randn(20, 9, dtype=torch.float64)
    c = torch.randn(20, 9, dtype=torch.float64)
    t = torch.rand(20, dtype=torch.float64) * 0.5
    out = prox_group(v, t, c)
    d = out - c
    moved = d.norm(dim=1) > 0
    assert moved.all()
    residual = out - v + t[:, None] * d / d.norm(dim=1, keepdim=True)
    assert residual.abs().max() < 1e-12
