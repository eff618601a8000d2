"""Submasks, flip rate, kNN, Hoyer sparsity and dead units on hand-made examples and brute force."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from clrl.analysis import (
    Capture,
    capture_layer,
    dead_unit_share,
    flip_rate,
    hoyer_per_sample,
    hoyer_sparsity,
    knn_accuracy,
    knn_predict,
    pairwise_distance,
    submask,
)
from clrl.analysis.knn_check import CheckResult, build_mlp, plot_results, run_one, write_markdown
from clrl.layers import build_activation

# --------------------------------------------------------------------------- submasks


def test_submask_hand_examples():
    x = torch.tensor([[-1.0, 2.0, 0.0, 3.0, 5.0, -4.0]])
    assert submask(build_activation("relu"), x).tolist() == [[0, 1, 0, 1, 1, 0]]
    assert submask(nn.ReLU(), x).tolist() == [[0, 1, 0, 1, 1, 0]]
    assert submask(build_activation("lwta:block=2"), x).tolist() == [[0, 1, 0, 1, 1, 0]]
    assert submask(build_activation("lwta:block=3"), x).tolist() == [[0, 1, 0, 0, 1, 0]]
    assert submask(build_activation("maxout:block=3"), x).tolist() == [[0, 1, 0, 0, 1, 0]]
    # 3 interleaved groups of 2: {-1, 3} mean 2, {2, 5} mean 3.5, {0, -4} mean 2
    assert submask(build_activation("st_hard:groups=3"), x).tolist() == [[0, 0, 0, 1, 1, 1]]
    # a plain module without active_mask: non-zero output
    assert submask(nn.Hardshrink(1.5), x).tolist() == [[0, 1, 0, 1, 1, 1]]


def test_capture_gives_pre_activations_and_restores_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), build_activation("lwta:block=2"), nn.Linear(6, 2))
    x = torch.randn(10, 4)
    pre, out = capture_layer(model, model[1], x, batch_size=3)
    with torch.no_grad():
        torch.testing.assert_close(pre, model[0](x))
        torch.testing.assert_close(out, model[1](model[0](x)))
    assert model.training
    with Capture(model[1]) as cap:
        model(x)
        model(x[:2])
    assert [t.shape[0] for t in cap.inputs] == [10, 2]
    model(x)
    assert len(cap.inputs) == 2  # hook removed on exit


def test_flip_rate_hand_example():
    a = torch.tensor([[1, 0, 1], [1, 1, 0]], dtype=torch.bool)
    b = torch.tensor([[1, 1, 1], [0, 1, 0]], dtype=torch.bool)
    assert flip_rate(a, b) == pytest.approx(2 / 6)
    assert flip_rate(a, a) == 0.0
    assert flip_rate(a, ~a) == 1.0
    with pytest.raises(ValueError):
        flip_rate(a, b[:1])


def test_dead_unit_share():
    m = torch.tensor([[1, 0, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    assert dead_unit_share(m) == pytest.approx(0.5)  # units 1 and 3 never fire
    conv = torch.zeros(2, 3, 2, 2, dtype=torch.bool)
    conv[1, 2, 1, 0] = True  # channel 2 fires once, at one sample and one position
    assert dead_unit_share(conv) == pytest.approx(2 / 3)


# --------------------------------------------------------------------------- Hoyer


def test_hoyer_one_hot_constant_and_hand_value():
    assert hoyer_sparsity(torch.tensor([[0.0, 0.0, 5.0, 0.0]])) == pytest.approx(1.0)
    assert hoyer_sparsity(torch.tensor([[2.0, 2.0, 2.0, 2.0]])) == pytest.approx(0.0, abs=1e-12)
    assert hoyer_sparsity(torch.tensor([[-2.0, 2.0, 2.0, -2.0]])) == pytest.approx(0.0, abs=1e-12)
    # h = (3, 4): |h|_1 = 7, |h|_2 = 5, n = 2
    expected = (math.sqrt(2) - 7 / 5) / (math.sqrt(2) - 1)
    assert hoyer_sparsity(torch.tensor([[3.0, 4.0]])) == pytest.approx(expected)


def test_hoyer_skips_zero_rows_and_matches_numpy():
    h = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    h[2] = 0.0
    per = hoyer_per_sample(h)
    assert math.isnan(per[2].item())
    a = h.numpy().astype(np.float64)
    ref = [(np.sqrt(7) - np.abs(r).sum() / np.sqrt((r**2).sum())) / (np.sqrt(7) - 1) for r in a if r.any()]
    assert hoyer_sparsity(h) == pytest.approx(float(np.mean(ref)))
    assert math.isnan(hoyer_sparsity(torch.zeros(3, 4)))


# --------------------------------------------------------------------------- kNN


def test_hamming_distance_brute_force():
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(6, 9, generator=g) > 0.5, torch.rand(4, 9, generator=g) > 0.5
    d = pairwise_distance(a, b, "hamming")
    for i in range(6):
        for j in range(4):
            assert d[i, j].item() == sum(int(a[i, u]) != int(b[j, u]) for u in range(9))


def test_knn_hand_example_hamming():
    train = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 1, 1], [0, 0, 0, 1], [0, 1, 1, 1]]).bool()
    ytr = torch.tensor([0, 0, 1, 1, 1])
    test = torch.tensor([[1, 1, 0, 1], [0, 0, 1, 0]]).bool()
    # distances: q0 -> (1, 2, 3, 2, 3); q1 -> (3, 2, 1, 2, 2)
    assert knn_predict(train, ytr, test, k=1).tolist() == [0, 1]
    # k=3 for q0: idx 0 (d1), 1 (d2), 3 (d2) -> labels 0, 0, 1 -> 0
    assert knn_predict(train, ytr, test, k=3).tolist() == [0, 1]
    assert knn_accuracy(train, ytr, test, torch.tensor([0, 0]), k=1) == 0.5
    # vote tie at k=2 (labels 0 and 1 once each): the nearer neighbour's label wins
    assert knn_predict(train, ytr, test, k=2).tolist() == [0, 1]


def test_knn_distance_ties_prefer_lower_index_and_labels_can_be_any_values():
    train = np.array([[0.0], [2.0], [4.0]])
    y = np.array([7, 3, 9])
    assert knn_predict(train, y, np.array([[1.0], [3.0]]), k=1, metric="euclidean").tolist() == [7, 3]


def brute_knn(xtr, ytr, xte, k):
    preds = []
    for q in xte:
        d = [(float(np.sqrt(((q - r) ** 2).sum())), i) for i, r in enumerate(xtr)]
        ranked = [ytr[i] for _, i in sorted(d)][:k]
        counts = {c: ranked.count(c) for c in ranked}
        best = max(counts.values())
        preds.append(next(c for c in ranked if counts[c] == best))
    return preds


def test_knn_euclidean_matches_brute_force():
    rng = np.random.default_rng(0)
    xtr, xte = rng.normal(size=(40, 3)), rng.normal(size=(15, 3))
    ytr = rng.integers(0, 3, size=40)
    for k in (1, 3, 4):
        got = knn_predict(xtr, ytr, xte, k=k, metric="euclidean", chunk=4).tolist()
        assert got == brute_knn(xtr, ytr, xte, k)
    with pytest.raises(ValueError, match="metric"):
        knn_predict(xtr, ytr, xte, metric="cosine")
    with pytest.raises(ValueError, match="k=41"):
        knn_predict(xtr, ytr, xte, k=41)


# --------------------------------------------------------------------------- the digits check


def test_build_mlp_widths():
    relu = build_mlp("relu", hidden=32)
    maxout = build_mlp("maxout:block=2", hidden=32)
    assert [m.out_features for m in relu if isinstance(m, nn.Linear)] == [32, 32, 10]
    assert [m.out_features for m in maxout if isinstance(m, nn.Linear)] == [64, 64, 10]
    assert maxout(torch.zeros(3, 64)).shape == (3, 10)


def test_report_writers(tmp_path):
    results = [
        CheckResult(spec=s, seed=i, net_acc=0.9, knn={"submask k=1": 0.85, "activation k=1": 0.9},
                    flip_rates=[0.1, 0.05], dead_share=0.1, hoyer=0.3, hidden=32, epochs=2)
        for s in ("relu", "lwta:block=2") for i in (0, 1)
    ]
    text = write_markdown(results, tmp_path / "r.md", "cmd", ["figures/x.png"])
    assert "| `relu` | 90.0 ± 0.0 | 85.0 ± 0.0 | 90.0 ± 0.0 | +5.0 |" in text
    plot_results(results, tmp_path / "bar.png", tmp_path / "flip.png")
    assert (tmp_path / "bar.png").stat().st_size > 1000 and (tmp_path / "flip.png").stat().st_size > 1000


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["relu", "lwta:block=2", "maxout:block=2"])
def test_submask_knn_close_to_net_on_digits(spec):
    r = run_one(spec, seed=0, hidden=256, epochs=15)  # narrower codes widen the gap
    best_submask = max(v for k, v in r.knn.items() if k.startswith("submask"))
    assert r.net_acc > 0.85
    assert best_submask > 0.6  # chance is 0.1
    assert r.net_acc - best_submask < 0.10
    assert r.flip_rates[-1] < r.flip_rates[0]  # submasks settle during training


def test_submask_is_the_eval_mode_mask_of_the_recorded_outputs():
    """The analysis records activations in eval mode (capture_layer, the monitor's pass) and
    masks them afterwards, with the network back in training mode: a ``bn`` stage must then use
    its running statistics (the recorded outputs' mask), not the probe batch's, update nothing,
    and the module keeps its mode."""
    from clrl.analysis.submasks import submask
    from clrl.layers.registry import build_activation

    chain = build_activation("bn>relu")
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):  # running statistics of inputs around 0
        chain(torch.randn(32, 6, generator=gen))
    probe = torch.randn(64, 6, generator=gen) * 0.5 + 0.8  # a probe set shifted from them
    chain.eval()
    with torch.no_grad():
        recorded = chain(probe)
    chain.train()
    with torch.no_grad():
        batch_stats_mask = copy.deepcopy(chain[0])(probe).relu() != 0  # training mode's (on a copy: it updates stats)
    stats = {k: v.clone() for k, v in chain[0].state_dict().items()}
    mask = submask(chain, probe)
    assert chain.training
    assert torch.equal(mask, recorded != 0)
    assert not torch.equal(mask, batch_stats_mask)  # the two modes disagree on this probe set
    for k, v in chain[0].state_dict().items():
        assert torch.equal(v, stats[k]), k
