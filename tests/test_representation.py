"""Effective rank, dormant units, drift, overlap, probe sets and the monitor, each against an
independent computation (numpy SVD, hand-worked cases, hand-made submasks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _nested import nested_close

from clrl.analysis import (
    dead_unit_share,
    dormant_share,
    dormant_units,
    drift,
    effective_rank,
    feature_change,
    jaccard,
    overlap_matrix,
    submask,
    unit_flip_rate,
)
from clrl.analysis.monitor import (
    RepresentationMonitor,
    analysed_layers,
    protected_nodes,
    summary_lines,
)
from clrl.analysis.probes import Probe, as_uint8, even_subsample, load_probe, save_probe
from clrl.analysis.representation import unit_activity
from clrl.events import EventBus
from clrl.layers import build_activation
from clrl.nets import atari_trunk, digits_trunk

# ----------------------------------------------------------------------------- effective rank


def _srank_numpy(f: np.ndarray, delta: float) -> int:
    s = np.linalg.svd(f.reshape(len(f), -1).astype(np.float64), compute_uv=False)
    total = s.sum()
    if total == 0:
        return 0
    run = 0.0
    for k, v in enumerate(s, start=1):
        run += v
        if run / total >= 1 - delta:
            return k
    return len(s)


def test_effective_rank_hand_worked_spectrum():
    f = torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0]))  # cumulative shares .4 .7 .9 1.0
    assert effective_rank(f, 0.01) == 4
    assert effective_rank(f, 0.15) == 3
    assert effective_rank(f, 0.35) == 2
    assert effective_rank(f, 0.65) == 1
    assert effective_rank(torch.zeros(5, 3)) == 0
    assert effective_rank(torch.outer(torch.arange(1.0, 6.0), torch.ones(7))) == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_effective_rank_matches_numpy_svd(seed):
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(60, 20)))
    v, _ = np.linalg.qr(rng.normal(size=(30, 20)))
    s = np.sort(rng.exponential(size=20))[::-1] * np.geomspace(1, 1e-3, 20)
    f = (u * s) @ v.T
    for delta in (0.01, 0.05, 0.1, 0.3):  # (delta 0 counts round-off singular values)
        assert effective_rank(torch.tensor(f), delta) == _srank_numpy(f, delta)
    conv = rng.normal(size=(16, 3, 2, 2))  # (N, C, H, W) is flattened to (N, 12)
    assert effective_rank(torch.tensor(conv)) == _srank_numpy(conv, 0.01)


def test_effective_rank_rejects_bad_delta():
    with pytest.raises(ValueError, match="delta"):
        effective_rank(torch.eye(3), 1.0)


# ----------------------------------------------------------------------------- dormant units


def test_dormant_share_hand_worked():
    # E|h| per unit: 1, 0.02, 0, 2.98 -> mean 1 -> normalized 1, .02, 0, 2.98
    h = torch.tensor([[1.0, 0.04, 0.0, -2.98], [-1.0, 0.0, 0.0, 2.98]])
    assert dormant_share(h, 0.025) == 0.5
    assert dormant_share(h, 0.0) == 0.25  # tau = 0: only the silent unit
    assert dormant_units(h, 0.025).tolist() == [False, True, True, False]
    assert dormant_share(torch.zeros(3, 4), 0.1) == 1.0
    with pytest.raises(ValueError, match="tau"):
        dormant_share(h, -1)


def test_dormant_share_conv_pools_samples_and_positions():
    h = torch.zeros(2, 3, 2, 2)
    h[:, 0] = 1.0  # channel 0: mean 1
    h[1, 1, 0, 0] = 0.16  # channel 1: mean 0.16 / 8 = 0.02
    h[:, 2] = 2.0  # channel 2: mean 2; layer mean (1 + .02 + 2) / 3 = 1.00667
    assert dormant_units(h, 0.025).tolist() == [False, True, False]
    assert dormant_units(h, 0.019).tolist() == [False, False, False]


def test_lwta_unit_that_never_wins_is_dead_and_dormant_though_large():
    act = build_activation("lwta:block=2")
    # block (0, 1): unit 1 never wins; block (2, 3): both win sometimes
    pre = torch.tensor([[5.0, 4.0, 1.0, 0.0], [6.0, 5.5, 0.0, 2.0], [3.0, -1.0, -3.0, -2.0]])
    mask = submask(act, pre)
    assert mask.tolist() == [[True, False, True, False], [True, False, False, True], [True, False, False, True]]
    assert dead_unit_share(mask) == 0.25
    activity = unit_activity(act, pre, act(pre), mask)
    assert dormant_units(activity, 0.025).tolist() == [False, True, False, False]
    assert dormant_share(pre, 0.025) == 0.0  # the raw magnitudes would call unit 1 busy
    assert dormant_share(pre, 0.025, mask=mask) == 0.25


def test_maxout_activity_is_the_winners_value():
    act = build_activation("maxout:block=2")
    pre = torch.tensor([[1.0, 3.0, -2.0, -5.0], [2.0, 4.0, 0.5, -1.0]])
    out = act(pre)
    mask = submask(act, pre)
    activity = unit_activity(act, pre, out, mask)
    assert activity.tolist() == [[0.0, 3.0, -2.0, 0.0], [0.0, 4.0, 0.5, 0.0]]
    assert dead_unit_share(mask) == 0.5  # units 0 and 3 never win
    assert dormant_units(activity, 0.025).tolist() == [True, False, False, True]


@pytest.mark.parametrize("shape", [(5, 8), (3, 8, 2, 2)])
def test_chained_maxout_activity_is_the_chains_output_on_each_blocks_winner(shape):
    # maxout>gnc: the next layer reads the normalized block maxima, so that is what each
    # winning unit passes on (not its raw pre-activation); losers pass on nothing
    act = build_activation("maxout:block=2>gnc:groups=2")
    pre = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    out = act(pre)
    activity = unit_activity(act, pre, out, submask(act, pre))
    expected = torch.zeros_like(pre)
    for j in range(shape[1] // 2):  # block j: input channels 2j, 2j + 1
        win = pre[:, 2 * j : 2 * j + 2].argmax(dim=1, keepdim=True)
        expected[:, 2 * j : 2 * j + 2].scatter_(1, win, out[:, j : j + 1])
    assert torch.allclose(activity, expected)
    assert not torch.allclose(activity, pre * submask(act, pre))  # the normalization is visible


def test_conv_lwta_competes_per_position_over_channels():
    act = build_activation("lwta:block=2")
    pre = torch.zeros(1, 4, 2, 2)
    pre[0, 0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # channel 0 beats channel 1 everywhere
    pre[0, 1] = torch.tensor([[0.5, 1.0], [2.0, 3.0]])
    pre[0, 2] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # channel 2 wins at (0,0), channel 3 elsewhere
    pre[0, 3] = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    mask = submask(act, pre)
    assert mask[0, 1].sum() == 0 and mask[0, 0].all()
    assert mask[0, 2].tolist() == [[True, False], [False, False]]
    assert dead_unit_share(mask) == 0.25
    activity = unit_activity(act, pre, act(pre), mask)
    # E|h| per channel: 2.5, 0, 0.25, 0.75; mean 0.875 -> channel 2 at 0.286
    assert dormant_units(activity, 0.3).tolist() == [False, True, True, False]


# ----------------------------------------------------------------------------- drift, change, overlap


def test_drift_on_hand_made_submasks():
    ref = torch.tensor([[True, False, True], [False, False, True]])
    now = torch.tensor([[False, False, True], [False, False, True]])  # unit 0 flipped on sample 0
    assert drift(ref, now) == pytest.approx(1 / 6)
    assert unit_flip_rate(ref, now).tolist() == [0.5, 0.0, 0.0]
    assert drift(ref, now, units=torch.tensor([False, True, True])) == 0.0
    assert drift(ref, now, units=torch.tensor([True, False, False])) == 0.5
    assert drift(ref, now, units=torch.zeros(3, dtype=torch.bool)) is None
    assert drift(ref, ref) == 0.0
    with pytest.raises(ValueError):
        drift(ref, now[:, :2])


def test_drift_of_conv_masks_per_channel():
    ref = torch.zeros(2, 2, 2, 2, dtype=torch.bool)
    now = ref.clone()
    now[0, 1, 0, 0] = True  # one of channel 1's 8 entries
    assert unit_flip_rate(ref, now).tolist() == [0.0, 1 / 8]
    assert drift(ref, now) == pytest.approx(1 / 16)


def test_feature_change_and_jaccard():
    assert feature_change(torch.tensor([[3.0, 4.0]]), torch.tensor([[3.0, 0.0]])) == pytest.approx(0.8)
    assert np.isnan(feature_change(torch.zeros(1, 2), torch.ones(1, 2)))
    a = torch.tensor([True, True, True, False])
    b = torch.tensor([False, True, True, True])
    assert jaccard(a, b) == 0.5
    assert np.isnan(jaccard(torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)))
    m = overlap_matrix([a, b, a])
    assert m == [[1.0, 0.5, 1.0], [0.5, 1.0, 0.5], [1.0, 0.5, 1.0]]


# ----------------------------------------------------------------------------- probes


def test_probe_roundtrip_is_exact(tmp_path):
    x = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    masks = [torch.rand(3, 7) > 0.5, torch.rand(3, 2, 3, 3) > 0.5]
    probe = Probe(task=2, inputs=x, masks=masks, features=torch.randn(3, 6))
    save_probe(tmp_path, probe)
    back = load_probe(tmp_path, 2)
    assert np.array_equal(back.inputs, x) and back.inputs.dtype == np.uint8
    assert all(torch.equal(a, b) for a, b in zip(masks, back.masks, strict=True))
    assert torch.equal(back.features, probe.features)
    assert load_probe(tmp_path, 3) is None


def test_as_uint8_keeps_integers_and_rejects_lossy_inputs():
    assert as_uint8([torch.tensor([[0, 255]]), np.array([[16.0, 3.0]])]).tolist() == [[0, 255], [16, 3]]
    with pytest.raises(ValueError, match="integers"):
        as_uint8(np.array([0.5]))
    with pytest.raises(ValueError, match="integers"):
        as_uint8(np.array([300.0]))
    assert even_subsample(np.arange(10), 3).tolist() == [0, 4, 9]
    assert even_subsample(np.arange(2), 3).tolist() == [0, 1]


# ----------------------------------------------------------------------------- monitor


def test_analysed_layers_name_conv_and_fc():
    assert [n for n, _ in analysed_layers(atari_trunk((4, 8, 8), 16))] == ["conv1", "conv2", "conv3", "fc1"]
    assert [n for n, _ in analysed_layers(digits_trunk([8, 8]))] == ["fc1", "fc2"]


def _monitor(trunk, folder, **kw):
    return RepresentationMonitor(trunk, lambda j, x: torch.from_numpy(x.astype(np.float32) / 16), trunk, folder, **kw)


class _Point:
    analysis = None


def test_monitor_measures_against_a_direct_computation(tmp_path):
    torch.manual_seed(0)
    trunk = digits_trunk([16, 8])
    x = np.random.default_rng(0).integers(0, 17, size=(40, 64)).astype(np.uint8)
    mon = _monitor(trunk, tmp_path, probe_size=30)
    mon.on_task_end(task=0, inputs=x)
    assert len(mon.probes[0].inputs) == 30
    p = _Point()
    mon.on_evaluation(point=p, task=0, step=1, end_of_task=True)
    e = p.analysis["tasks"][0]
    assert e["reference"] and e["layers"]["fc1"]["drift"] == 0.0 and e["features"]["feature_change"] == 0.0
    # direct: ReLU outputs of both layers
    xin = torch.from_numpy(even_subsample(x, 30).astype(np.float32) / 16)
    with torch.no_grad():
        h1 = torch.relu(trunk[0](xin))
        h2 = torch.relu(trunk[2](h1))
    assert e["layers"]["fc1"]["dead"] == pytest.approx(((h1 > 0).sum(0) == 0).double().mean().item())
    assert e["layers"]["fc2"]["dormant"] == pytest.approx(dormant_share(h2, 0.025))
    assert e["features"]["effective_rank"] == _srank_numpy(h2.numpy(), 0.01)
    assert p.analysis["overlap"]["all"] == [[1.0]]
    # change only the second layer: fc1's submask cannot move, fc2's does
    with torch.no_grad():
        trunk[2].weight.mul_(-1)
    mon.on_evaluation(point=p, task=1, step=2)
    e = p.analysis["tasks"][0]
    assert e["layers"]["fc1"]["drift"] == 0.0
    assert e["layers"]["fc2"]["drift"] > 0.3
    assert e["features"]["feature_change"] > 0
    assert p.analysis["overlap"] is None


def test_monitor_restores_probes_from_disk(tmp_path):
    torch.manual_seed(1)
    trunk = digits_trunk([16, 8])
    x = np.random.default_rng(1).integers(0, 17, size=(20, 64)).astype(np.uint8)
    mon = _monitor(trunk, tmp_path)
    mon.on_task_end(task=0, inputs=x)
    mon.on_task_end(task=1, inputs=x[::-1].copy())
    with torch.no_grad():
        trunk[0].bias.add_(0.3)
    a, b = _Point(), _Point()
    mon.on_evaluation(point=a, task=1, step=0, end_of_task=True)
    fresh = _monitor(trunk, tmp_path, tasks_done=lambda: 2)  # as after a resume
    fresh.on_evaluation(point=b, task=1, step=0, end_of_task=True)
    for blk in (a.analysis, b.analysis):
        blk.pop("seconds")
    assert a.analysis == b.analysis
    assert b.analysis["tasks"][0]["layers"]["fc1"]["drift"] > 0


def test_current_task_uses_current_inputs_without_reference(tmp_path):
    trunk = digits_trunk([8, 8])
    x = np.full((5, 64), 3, dtype=np.uint8)
    mon = _monitor(trunk, tmp_path, current=lambda j: x)
    p = _Point()
    mon.on_evaluation(point=p, task=0, step=0)
    e = p.analysis["tasks"][0]
    assert not e["reference"] and e["layers"]["fc1"]["drift"] is None and e["features"]["feature_change"] is None


def test_protected_nodes_and_summary_lines():
    class Reg:
        born = [torch.tensor([0, 1, 2**62]), torch.tensor([1, 0])]
        head_born = {0: 0, 1: 1}

    assert [m.tolist() for m in protected_nodes(Reg(), 0, 2)] == [[True, False, False], [False, True]]
    assert [m.tolist() for m in protected_nodes(Reg(), 1, 2)] == [[True, True, False], [True, True]]
    assert protected_nodes(Reg(), 2, 2) is None and protected_nodes(object(), 0, 2) is None

    class Res:
        tasks = ["a"]
        curves = [type("P", (), {"analysis": {"tasks": [{
            "task": 0, "layers": {"fc1": {"drift": 0.1, "drift_protected": 0.0, "dormant": 0.2}},
            "features": {"effective_rank": 5, "feature_change": 0.5, "hoyer": 0.4}}]}})()]

    (line,) = summary_lines(Res())
    assert "drift 0.100" in line and "protected 0.000" in line and "srank 5" in line


# ----------------------------------------------------------------------------- events


def test_event_bus_order_payload_and_unknown_names():
    bus = EventBus()
    seen = []
    bus.subscribe("evaluation", lambda **p: seen.append(("a", p["step"])))
    h = bus.subscribe("evaluation", lambda step, **_: seen.append(("b", step)))
    bus.emit("evaluation", step=3, task=0)
    bus.unsubscribe("evaluation", h)
    bus.emit("evaluation", step=4, task=0)
    assert seen == [("a", 3), ("b", 3), ("a", 4)]
    with pytest.raises(ValueError, match="unknown training event"):
        bus.emit("epoch_end")
    with pytest.raises(ValueError, match="unknown training event"):
        bus.subscribe("nope", print)


# ----------------------------------------------------------------------------- batched = per task


def _direct(trunk, layers, x: torch.Tensor):
    from clrl.analysis import capture_layer

    out = []
    for _, act in layers:
        pre, post = capture_layer(trunk, act, x)
        out.append((act, pre, post))
    with torch.no_grad():
        trunk.eval()
        feats = trunk(x).flatten(1)
    return out, feats


@pytest.mark.parametrize(
    "make",
    [lambda: atari_trunk((4, 8, 8), 16, activation="lwta:block=2"),
     lambda: digits_trunk([16, 8], activation="maxout:block=2"),
     lambda: digits_trunk([16, 8], activation="st_hard:groups=4>gnc:groups=4")],
    ids=["conv-lwta", "maxout", "st-gnc"],
)
def test_batched_measures_equal_the_per_task_functions(tmp_path, make):
    torch.manual_seed(0)
    trunk = make()
    shape = trunk.input_shape
    rng = np.random.default_rng(0)
    data = [rng.integers(0, 256, size=(n, *shape)).astype(np.uint8) for n in (6, 5, 7)]
    prep = lambda j, a: torch.from_numpy(a.astype(np.float32) / 255)  # noqa: E731
    mon = RepresentationMonitor(trunk, prep, trunk, tmp_path, tau=0.3)
    mon.on_task_end(task=0, inputs=data[0])
    mon.on_task_end(task=1, inputs=data[1])
    refs = {j: _direct(trunk, mon.layers, prep(j, data[j])) for j in (0, 1)}
    with torch.no_grad():
        for p in trunk.parameters():
            p.add_(0.05 * torch.randn_like(p))
    mon.current = lambda j: data[2]
    point = _Point()
    mon.on_evaluation(point=point, task=2, step=0, end_of_task=False)
    assert [e["task"] for e in point.analysis["tasks"]] == [0, 1, 2]
    for e in point.analysis["tasks"]:
        j = e["task"]
        layers, feats = _direct(trunk, mon.layers, prep(j, data[j]))
        for k, ((name, _), (act, pre, post)) in enumerate(zip(mon.layers, layers, strict=True)):
            got = e["layers"][name]
            mask = submask(act, pre)
            from clrl.analysis import hoyer_sparsity

            assert got["hoyer"] == pytest.approx(hoyer_sparsity(post), rel=1e-6)  # float32 forwards
            assert got["dead"] == pytest.approx(dead_unit_share(mask))
            assert got["dormant"] == pytest.approx(dormant_share(unit_activity(act, pre, post, mask), 0.3))
            if j < 2:
                ref_act, ref_pre, _ = refs[j][0][k]
                assert got["drift"] == pytest.approx(drift(submask(ref_act, ref_pre), mask))
            else:
                assert got["drift"] is None
        assert e["features"]["effective_rank"] == _srank_numpy(feats.numpy(), 0.01)
        assert e["features"]["dormant"] == pytest.approx(dormant_share(feats, 0.3))
        if j < 2:
            assert e["features"]["feature_change"] == pytest.approx(feature_change(refs[j][1], feats), rel=1e-6)


def test_jaccard_matrix_equals_the_pairwise_definition():
    from clrl.analysis.representation import jaccard_matrix

    u = torch.rand(4, 30) > 0.5
    u[3] = False  # an empty set: NaN against itself
    got, want = np.array(jaccard_matrix(u)), np.array(overlap_matrix(list(u)))
    assert np.allclose(got, want, equal_nan=True) and np.isnan(got[3, 3])


def test_analysis_every_k_th_evaluation_and_every_task_end(tmp_path):
    trunk = digits_trunk([8, 8])
    x = np.full((4, 64), 2, dtype=np.uint8)
    mon = _monitor(trunk, tmp_path, current=lambda j: x, every=3)
    points = [_Point() for _ in range(5)]
    for k, p in enumerate(points):
        mon.on_evaluation(point=p, task=0, step=k, end_of_task=(k == 4))
    assert [p.analysis is not None for p in points] == [True, False, False, True, True]


def test_analysis_every_counts_the_runs_evaluations_across_a_resume(tmp_path):
    # a run stopped after its 4th evaluation resumes with a new monitor: the points it measures
    # are the ones the uninterrupted run measured (every 3rd of the run, not of the session)
    trunk = digits_trunk([8, 8])
    x = np.full((4, 64), 2, dtype=np.uint8)
    curve: list[_Point] = []

    def evaluate(mon, k: int) -> None:
        curve.append(_Point())
        mon.on_evaluation(point=curve[-1], task=0, step=k, end_of_task=False)

    first = _monitor(trunk, tmp_path, current=lambda j: x, every=3, eval_index=lambda: len(curve) - 1)
    for k in range(4):
        evaluate(first, k)
    resumed = _monitor(trunk, tmp_path, current=lambda j: x, every=3, eval_index=lambda: len(curve) - 1)
    for k in range(4, 8):
        evaluate(resumed, k)
    assert [p.analysis is not None for p in curve] == [True, False, False, True, False, False, True, False]


def test_chunked_measurement_equals_one_pass(tmp_path):
    torch.manual_seed(2)
    trunk = digits_trunk([16, 8])
    rng = np.random.default_rng(2)
    data = [rng.integers(0, 17, size=(n, 64)).astype(np.uint8) for n in (5, 6, 7)]
    one, many = _monitor(trunk, tmp_path / "a"), _monitor(trunk, tmp_path / "b")
    many.max_elements = 1  # every task in its own pass
    for mon in (one, many):
        for j in range(3):
            mon.on_task_end(task=j, inputs=data[j])
    with torch.no_grad():
        trunk[0].weight.mul_(0.9)
    a, b = _Point(), _Point()
    one.on_evaluation(point=a, task=2, step=0, end_of_task=True)
    many.on_evaluation(point=b, task=2, step=0, end_of_task=True)
    for blk in (a.analysis, b.analysis):
        blk.pop("seconds")
    assert nested_close(a.analysis, b.analysis)  # (a different batch split may change float32 last bits)
    assert len(many._chunks([(j, data[j], None) for j in range(3)])) == 3
    assert len(one._chunks([(j, data[j], None) for j in range(3)])) == 1
