"""VCL against an independent numpy computation of Littwin & Wolf 2018, eq. 17."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.parameter import UninitializedParameter

from clrl.layers.vcl import VCL


def make_trunk() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 3 * 3, 6), nn.ReLU(), nn.Linear(6, 4)
    )


def numpy_vcl(pre_acts: list[np.ndarray], betas: list[np.ndarray], n: int, gamma: float) -> float:
    """Loop over units: (1 - var_unbiased(s1) / (var_unbiased(s2) + beta))^2, mean per layer."""
    total = 0.0
    for a, b in zip(pre_acts, betas, strict=True):
        a = a.reshape(a.shape[0], -1)
        b = b.reshape(-1)
        unit_losses = []
        for u in range(a.shape[1]):
            s1, s2 = a[:n, u], a[n : 2 * n, u]
            v1 = np.sum((s1 - s1.mean()) ** 2) / (n - 1)
            v2 = np.sum((s2 - s2.mean()) ** 2) / (n - 1)
            unit_losses.append((1.0 - v1 / (v2 + b[u])) ** 2)
        total += float(np.mean(unit_losses))
    return gamma * total


def manual_pre_acts(trunk: nn.Sequential, x: torch.Tensor) -> list[np.ndarray]:
    with torch.no_grad():
        c = trunk[0](x)
        l1 = trunk[3](torch.relu(c).flatten(1))
        l2 = trunk[5](torch.relu(l1))
    return [c.numpy().astype(np.float64), l1.numpy().astype(np.float64), l2.numpy().astype(np.float64)]


@pytest.mark.parametrize("n,batch", [(2, 4), (3, 9), (5, 10)])
def test_vcl_matches_numpy(n, batch):
    trunk = make_trunk()
    x = torch.randn(batch, 2, 5, 5, generator=torch.Generator().manual_seed(n))
    vcl = VCL(trunk, gamma=0.3, n=n, example_input=x[:1])
    # betas: one per unit, conv units are (channel, position)
    assert [tuple(b.shape) for b in vcl.betas.values()] == [(3, 3, 3), (6,), (4,)]
    assert all(torch.equal(b, torch.ones_like(b)) for b in vcl.betas.values())
    with torch.no_grad():  # move betas off 1 so they matter
        for b in vcl.betas.values():
            b.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(1))
    trunk(x)
    got = vcl.loss()
    betas = [b.detach().numpy().astype(np.float64) for b in vcl.betas.values()]
    expected = numpy_vcl(manual_pre_acts(trunk, x), betas, n, 0.3)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert expected > 0


def test_random_subsets_with_generator():
    trunk = make_trunk()
    x = torch.randn(10, 2, 5, 5, generator=torch.Generator().manual_seed(3))
    vcl = VCL(trunk, gamma=1.0, n=3, example_input=x[:1], generator=torch.Generator().manual_seed(9))
    trunk(x)
    got = vcl.loss().item()
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(9))[:6].numpy()
    pre = [a[perm] for a in manual_pre_acts(trunk, x)]
    expected = numpy_vcl(pre, [np.ones(b.shape) for b in vcl.betas.values()], 3, 1.0)
    assert got == pytest.approx(expected, rel=1e-5)
    first = numpy_vcl(manual_pre_acts(trunk, x), [np.ones(b.shape) for b in vcl.betas.values()], 3, 1.0)
    assert got != pytest.approx(first, rel=1e-3)  # the permutation is actually used


def test_small_batch_gives_zero_and_gradients_reach_betas_and_trunk():
    trunk = make_trunk()
    vcl = VCL(trunk, gamma=1.0, n=4, example_input=torch.zeros(1, 2, 5, 5))
    trunk(torch.randn(7, 2, 5, 5))
    assert vcl.loss().item() == 0.0
    trunk(torch.randn(8, 2, 5, 5))
    loss = vcl.loss()
    loss.backward()
    assert all(b.grad is not None and b.grad.abs().sum() > 0 for b in vcl.betas.values())
    assert trunk[0].weight.grad is not None and trunk[0].weight.grad.abs().sum() > 0


def test_parameters_are_betas_only_and_detach_removes_hooks():
    trunk = make_trunk()
    vcl = VCL(trunk, gamma=1.0, n=2)
    # Linear betas exist at attach, the conv's is sized at the first forward
    assert [isinstance(p, UninitializedParameter) for p in vcl.parameters()] == [True, False, False]
    vcl.materialize(trunk, torch.zeros(1, 2, 5, 5))
    assert not any(isinstance(p, UninitializedParameter) for p in vcl.parameters())
    assert sum(p.numel() for p in vcl.parameters()) == 27 + 6 + 4
    assert trunk.training
    vcl.detach()
    trunk(torch.randn(8, 2, 5, 5))
    assert vcl.loss().item() == 0.0
    assert not trunk[0]._forward_hooks


def test_bad_n_and_changed_input_size():
    with pytest.raises(ValueError, match="n=1"):
        VCL(make_trunk(), gamma=1.0, n=1)
    trunk = nn.Sequential(nn.Conv2d(1, 2, 3))
    VCL(trunk, gamma=1.0, n=2, example_input=torch.zeros(1, 1, 5, 5))
    with pytest.raises(ValueError, match="differ"):
        trunk(torch.zeros(4, 1, 6, 6))
