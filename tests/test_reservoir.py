"""Reservoir buffer: uniform inclusion (algorithm R), capacity, sampling, exact resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clrl.supervised.reservoir import ReservoirBuffer


def _stream(buf: ReservoirBuffer, n: int, batch_sizes: list[int]) -> None:
    """Stream items 0..n-1 (x = y = item id) in batches cycling through ``batch_sizes``."""
    start, i = 0, 0
    while start < n:
        k = min(batch_sizes[i % len(batch_sizes)], n - start)
        ids = torch.arange(start, start + k)
        buf.add(ids.float().unsqueeze(1), ids, task=0)
        assert len(buf) <= buf.capacity
        start, i = start + k, i + 1


def _inclusion_ok(counts: np.ndarray, p: float, trials: int, z: float = 5.0) -> bool:
    """Every item's inclusion count within z binomial standard deviations of trials * p.

    With 100 items and z = 5 a correct buffer fails with probability < 1e-4 (union bound)."""
    sd = math.sqrt(trials * p * (1 - p))
    return bool(np.all(np.abs(counts - trials * p) <= z * sd))


def _inclusion_counts(make, n: int, trials: int, batch_sizes: list[int]) -> np.ndarray:
    counts = np.zeros(n)
    for trial in range(trials):
        buf = make(trial)
        _stream(buf, n, batch_sizes)
        counts[buf.y[: len(buf)].numpy()] += 1
    return counts


@pytest.mark.parametrize(("n", "m", "trials", "batch_sizes"), [
    (40, 8, 800, [1]),
    (100, 10, 2000, [7, 3, 10]),
    # batches that straddle the full buffer (4 + 4 + 4 > 10) and draw one slot twice (13 > 10):
    # a later item of a batch must win the slot, as it would one item at a time
    (60, 10, 2000, [4, 13]),
])
def test_every_item_is_kept_with_probability_m_over_n(n, m, trials, batch_sizes):
    counts = _inclusion_counts(lambda s: ReservoirBuffer(m, seed=s), n, trials, batch_sizes)
    assert counts.sum() == trials * m  # the buffer is full after every stream
    assert _inclusion_ok(counts, m / n, trials)
    # no extra dispersion either: each count has variance trials*p*(1-p), so this statistic has
    # mean n and standard deviation about sqrt(2n)
    p = m / n
    stat = float(((counts - trials * p) ** 2 / (trials * p * (1 - p))).sum())
    assert stat < n + 6 * math.sqrt(2 * n)


def test_the_inclusion_check_rejects_a_biased_buffer():
    """A buffer that keeps the first M items, or one that keeps the n-th item with probability
    M/n but always overwrites the last slot, fails the same check (the test can fail)."""

    class FirstM(ReservoirBuffer):
        def slots_for(self, n_new):
            ns = self.seen + 1 + np.arange(n_new)
            self.seen += n_new
            keep = np.flatnonzero(ns <= self.capacity)
            return keep, ns[keep] - 1

    class LastSlot(ReservoirBuffer):
        def slots_for(self, n_new):
            first = self.seen
            pos, slots = super().slots_for(n_new)
            beyond = first + 1 + pos > self.capacity
            return pos, np.where(beyond, self.capacity - 1, slots)

    n, m, trials = 50, 5, 200
    for cls in (FirstM, LastSlot):
        counts = _inclusion_counts(lambda s, cls=cls: cls(m, seed=s), n, trials, [1])
        assert not _inclusion_ok(counts, m / n, trials), cls.__name__


def test_fills_in_order_then_never_exceeds_capacity():
    buf = ReservoirBuffer(5, seed=0)
    buf.add(torch.arange(3.0).unsqueeze(1), torch.arange(3), task=2)
    assert len(buf) == 3 and buf.seen == 3
    assert buf.y[:3].tolist() == [0, 1, 2] and buf.task[:3].tolist() == [2, 2, 2]
    for _ in range(50):
        buf.add(torch.zeros(4, 1), torch.zeros(4, dtype=torch.long), task=1)
        assert len(buf) == 5 and buf.x.shape[0] == 5
    assert buf.seen == 203


def test_zero_capacity_stores_nothing():
    buf = ReservoirBuffer(0, seed=0)
    buf.add(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), task=0)
    assert len(buf) == 0 and buf.seen == 3
    with pytest.raises(ValueError, match="empty"):
        buf.sample(2)


def test_sample_returns_distinct_stored_examples_with_their_tasks():
    buf = ReservoirBuffer(20, seed=3)
    for t in range(4):
        ids = torch.arange(10 * t, 10 * t + 10)
        buf.add(ids.float().unsqueeze(1), ids, task=t)
    x, y, task = buf.sample(8)
    assert len(y) == 8 and len(set(y.tolist())) == 8
    stored = set(buf.y[: len(buf)].tolist())
    assert set(y.tolist()) <= stored
    assert torch.equal(x.squeeze(1).long(), y)
    assert torch.equal(task, y // 10)
    assert len(buf.sample(100)[1]) == 20  # capped at the stored count


def test_state_dict_resumes_exactly():
    a = ReservoirBuffer(6, seed=7)
    _stream(a, 40, [3])
    b = ReservoirBuffer(6, seed=999)
    b.load_state_dict(a.state_dict())
    for buf in (a, b):
        _stream(buf, 25, [4])
    assert a.seen == b.seen == 65
    assert torch.equal(a.y, b.y) and torch.equal(a.x, b.x) and torch.equal(a.task, b.task)
    assert torch.equal(a.sample(3)[1], b.sample(3)[1])


def test_state_dict_is_weights_only_loadable(tmp_path):
    from clrl.io import load_checkpoint, save_checkpoint

    buf = ReservoirBuffer(4, seed=1)
    _stream(buf, 10, [3])
    save_checkpoint(tmp_path / "c.pt", {"format": "clrl.checkpoint", "buf": buf.state_dict()})
    again = ReservoirBuffer(4, seed=0)
    again.load_state_dict(load_checkpoint(tmp_path / "c.pt")["buf"])
    assert torch.equal(again.y, buf.y) and again.seen == 10
