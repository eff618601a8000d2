"""The analysis quantities on hand-made inputs, against hand-worked values, numpy or brute force:
the cases the batched-equals-per-task tests do not reach (a threshold met exactly, silent rows and
silent tasks, AGS-CL's protected nodes, head features that are not the last layer's output, the
unit sets of the overlap, a normalization stage recorded in eval mode). Found by a mutation audit:
each test here kills mutants the other tests let through."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _nested import nested_close

from clrl.analysis import (
    capture_layer,
    dead_unit_share,
    dormant_units,
    effective_rank,
    hoyer_sparsity,
    jaccard,
    submask,
    unit_flip_rate,
)
from clrl.analysis.batched import measure_tasks
from clrl.analysis.monitor import RepresentationMonitor
from clrl.analysis.probes import Probe
from clrl.analysis.representation import unit_activity
from clrl.layers import build_activation
from clrl.nets import digits_trunk


def _measure(pres, counts, *, specs=None, feats=None, refs=None, protected=None, tau=0.025, delta=0.01):
    """measure_tasks on hand-made pre-activations of ReLU (or ``specs``) layers."""
    acts = [build_activation(s) for s in (specs or ["relu"] * len(pres))]
    layers = [(f"fc{i + 1}", a) for i, a in enumerate(acts)]
    with torch.no_grad():
        outs = [a(p) for a, p in zip(acts, pres, strict=True)]
    feats = outs[-1].flatten(1) if feats is None else feats
    T = len(counts)
    return measure_tasks(layers, pres, outs, feats, counts, refs or [None] * T, protected or [None] * T, tau, delta)


# ----------------------------------------------------------------------------- srank at the threshold


def test_effective_rank_threshold_met_exactly_counts():
    """srank = min{k : sum_{i<=k} s_i >= (1 - delta) sum s} (Kumar et al. 2021): s = (2, 1, 1),
    delta = 1/4 asks for 3 = s_1 + s_2 exactly, so k = 2, not 3; s = (1, 1), delta = 1/2: k = 1."""
    f = torch.diag(torch.tensor([2.0, 1.0, 1.0]))
    assert effective_rank(f, 0.25) == 2
    assert effective_rank(torch.eye(2), 0.5) == 1
    (e,), _ = _measure([f], [3], delta=0.25)  # relu(f) = f: the heads read f
    assert e["features"]["effective_rank"] == 2
    (e,), _ = _measure([torch.eye(2)], [2], delta=0.5)
    assert e["features"]["effective_rank"] == 1


# ----------------------------------------------------------------------------- silent rows and tasks


def test_batched_tau_zero_silent_rows_and_a_silent_task():
    pre = torch.tensor([
        [1.0, -1.0, 2.0, 0.5],  # task 0
        [0.0, -2.0, 1.0, 0.0],
        [-1.0, -1.0, -1.0, -1.0],  # a row with no active unit: Hoyer is undefined, skipped
        [-1.0, -3.0, -0.5, -2.0],  # task 1: nothing active on any of its inputs
        [-2.0, -1.0, -1.0, -0.1],
    ])
    for tau, dormant0 in ((0.0, 0.25), (0.025, 0.25), (0.5, 0.5)):
        # task 0's E|h|: 1/3, 0, 1, 1/6 -> over the mean 0.375: 0.889, 0, 2.667, 0.444
        (e0, e1), _ = _measure([pre], [3, 2], tau=tau)
        assert e0["layers"]["fc1"]["dormant"] == dormant0, tau  # tau = 0: exactly the silent unit
        assert e1["layers"]["fc1"]["dormant"] == 1.0 and e1["features"]["dormant"] == 1.0
    assert e0["layers"]["fc1"]["dead"] == 0.25 and e1["layers"]["fc1"]["dead"] == 1.0
    r0 = (2 - 3.5 / math.sqrt(5.25)) / (2 - 1)  # (1, 0, 2, .5): |h|_1 3.5, |h|_2 sqrt(5.25), n 4
    assert e0["layers"]["fc1"]["hoyer"] == pytest.approx((r0 + 1.0) / 2)  # row 2 left out
    assert e0["layers"]["fc1"]["hoyer"] == pytest.approx(hoyer_sparsity(pre[:3].relu()))
    assert e1["layers"]["fc1"]["hoyer"] is None and e1["features"]["hoyer"] is None
    assert e1["features"]["effective_rank"] == 0


# ----------------------------------------------------------------------------- protected nodes


def test_drift_on_protected_nodes_and_their_share_by_hand():
    ref0 = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 1]], dtype=torch.bool)
    ref1 = torch.tensor([[0, 0, 0, 0]], dtype=torch.bool)
    pre = torch.tensor([[1.0, -1.0, 1.0, -1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, -1.0, -1.0]])
    # task 0 flips per unit: (0, 1, .5, 0), drift .375; task 1 flips units 0 and 1: drift .5
    f_ref0, f_ref1 = torch.tensor([[3.0, 0, 0, 0], [0, 4.0, 0, 0]]), torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    refs = [Probe(0, np.zeros((2, 1), np.uint8), [ref0], f_ref0), Probe(1, np.zeros((1, 1), np.uint8), [ref1], f_ref1)]
    protected = [[torch.tensor([True, False, True, True])], [torch.zeros(4, dtype=torch.bool)]]
    (e0, e1), used = _measure([pre], [2, 1], refs=refs, protected=protected)
    l0, l1 = e0["layers"]["fc1"], e1["layers"]["fc1"]
    assert l0["drift"] == pytest.approx(0.375) and l1["drift"] == pytest.approx(0.5)
    assert l0["drift_protected"] == pytest.approx((0 + 0.5 + 0) / 3)  # units 0, 2, 3
    assert l0["protected_share"] == 0.75
    assert l1["drift_protected"] is None and l1["protected_share"] == 0.0  # no node protected
    # head features now relu(pre): ||F - F_ref|| / ||F_ref||
    now0 = np.array([[1.0, 0, 1, 0], [1, 1, 1, 1]])
    want0 = np.linalg.norm(now0 - f_ref0.numpy()) / 5.0
    assert e0["features"]["feature_change"] == pytest.approx(want0)
    assert e1["features"]["feature_change"] == pytest.approx(math.sqrt(2) / 2)
    assert used[0] is not None and used[1] is not None
    (e,), _ = _measure([pre[:2]], [2], refs=refs[:1], protected=[None])
    assert "drift_protected" not in e["layers"]["fc1"]  # regularizers without protected nodes


# ----------------------------------------------------------------------------- head features


def test_head_features_that_are_not_the_last_layer():
    """Heads reading something other than the last layer's output (signed values): dead means
    never non-zero, dormant uses |h|, Hoyer is the features' own."""
    pre = torch.tensor([[1.0, 2.0], [3.0, 1.0], [0.5, 4.0]])
    feats = torch.tensor([[1.0, -2.0, 0.0], [-1.0, -1.0, 0.0], [3.0, -1.0, 0.0]])
    (e,), _ = _measure([pre], [3], feats=feats, tau=0.025)
    f = e["features"]
    assert f["dead"] == pytest.approx(1 / 3)  # column 1 is never positive but always non-zero
    assert f["dormant"] == pytest.approx(1 / 3)  # E|h| = 5/3, 4/3, 0
    assert f["hoyer"] == pytest.approx(hoyer_sparsity(feats))
    assert f["effective_rank"] == effective_rank(feats)


def test_head_features_equal_to_the_last_layer_take_its_hoyer():
    pre1 = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 1.0, 2.0, 1.0]])  # dense
    pre2 = torch.tensor([[3.0, -1.0, -1.0], [-1.0, 2.0, -1.0]])  # one-hot
    (e,), _ = _measure([pre1, pre2], [2])
    assert e["features"]["hoyer"] == pytest.approx(1.0)
    assert e["layers"]["fc2"]["hoyer"] == pytest.approx(1.0)
    assert e["layers"]["fc1"]["hoyer"] < 0.2


# ----------------------------------------------------------------------------- overlap


def test_overlap_sets_are_the_non_dormant_units_of_every_layer(tmp_path):
    torch.manual_seed(3)
    trunk = digits_trunk([16, 8], activation="lwta:block=2")
    rng = np.random.default_rng(3)
    data = [rng.integers(0, 17, size=(12, 64)).astype(np.uint8) for _ in range(2)]
    prep = lambda j, a: torch.from_numpy(a.astype(np.float32) / 16)  # noqa: E731
    mon = RepresentationMonitor(trunk, prep, trunk, tmp_path, tau=0.5)
    for j in range(2):
        mon.on_task_end(task=j, inputs=data[j])

    class P:
        analysis = None
    p = P()
    mon.on_evaluation(point=p, task=1, step=0, end_of_task=True)
    used = []  # per task, per layer: ~tau-dormant of what each unit passes on
    for j in range(2):
        per_layer = []
        for _, act in mon.layers:
            pre, out = capture_layer(trunk, act, prep(j, data[j]))
            per_layer.append(~dormant_units(unit_activity(act, pre, out, submask(act, pre)), 0.5))
        used.append(per_layer)
    ov = p.analysis["overlap"]
    for i, (name, _) in enumerate(mon.layers):
        assert ov["layers"][name][0][1] == pytest.approx(jaccard(used[0][i], used[1][i]))
    want = jaccard(torch.cat(used[0]), torch.cat(used[1]))
    assert ov["all"][0][1] == pytest.approx(want) and ov["all"][1][0] == pytest.approx(want)
    assert 0 < want < 1  # the sets differ, and neither is empty: not vacuous
    assert not all(u.all() for u in used[0])


# ----------------------------------------------------------------------------- brute force per unit


def test_dead_flip_and_dormant_per_unit_by_brute_force():
    g = torch.Generator().manual_seed(4)
    for shape in [(5, 3), (4, 3, 2, 5)]:
        rate = torch.tensor([1.1, 0.7, 0.0]).view(1, 3, *[1] * (len(shape) - 2))  # always, sometimes, never
        a = torch.rand(*shape, generator=g) < rate
        b = torch.rand(*shape, generator=g) > 0.8
        h = torch.randn(*shape, generator=g) * torch.arange(1.0, 4.0).view(1, 3, *[1] * (len(shape) - 2))
        an, bn, hn = a.numpy(), b.numpy(), h.numpy().astype(np.float64)
        alive = [an[:, u].any() for u in range(3)]
        assert dead_unit_share(a) == pytest.approx(1 - np.mean(alive)) == pytest.approx(1 / 3)
        flips = [np.mean(an[:, u] != bn[:, u]) for u in range(3)]
        assert unit_flip_rate(a, b).tolist() == pytest.approx(flips)
        score = np.array([np.abs(hn[:, u]).mean() for u in range(3)])
        for tau in (0.3, 0.6, 1.0):
            assert dormant_units(h, tau).tolist() == (score / score.mean() <= tau).tolist()


# ----------------------------------------------------------------------------- activity


def test_width_preserving_chain_passes_on_its_output():
    """st_hard>gnc: what an active unit passes on is the normalized value, not its pre-activation."""
    act = build_activation("st_hard:groups=2>gnc:groups=2")
    pre = torch.randn(6, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = act(pre)
    mask = submask(act, pre)
    activity = unit_activity(act, pre, out, mask)
    assert torch.equal(activity, out * mask)
    assert not torch.allclose(activity, pre * mask)


# ----------------------------------------------------------------------------- eval mode


def _warm_bn(model, gen):
    model.train()
    for _ in range(10):
        model(torch.randn(32, 64, generator=gen))


def _bn_stats(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_capture_and_monitor_record_in_eval_mode_and_update_no_statistics(tmp_path):
    """With a bn stage, the recorded activations are the eval-mode ones (running statistics) and
    analysing updates no statistics; the trunk is left in training mode."""
    gen = torch.Generator().manual_seed(6)
    trunk = digits_trunk([8, 8], activation="bn>relu")
    _warm_bn(trunk, gen)
    stats = _bn_stats(trunk)
    assert stats
    x = torch.randn(16, 64, generator=gen) * 0.5 + 1.0  # shifted from the running statistics
    pre, out = capture_layer(trunk, trunk[1], x, batch_size=5)
    trunk.eval()
    with torch.no_grad():
        want = trunk[1](trunk[0](x))
    trunk.train()
    assert torch.allclose(out, want)
    mon = RepresentationMonitor(trunk, lambda j, a: torch.from_numpy(a.astype(np.float32) / 16), trunk, tmp_path)
    xs = np.random.default_rng(6).integers(0, 17, size=(10, 64)).astype(np.uint8)
    mon.on_task_end(task=0, inputs=xs)
    trunk.eval()
    with torch.no_grad():
        feats = trunk(torch.from_numpy(xs.astype(np.float32) / 16))
    trunk.train()
    assert torch.allclose(mon.probes[0].features, feats)

    class P:
        analysis = None

    p = P()
    mon.on_evaluation(point=p, task=0, step=0, end_of_task=True)
    assert p.analysis["tasks"][0]["layers"]["fc1"]["drift"] == 0.0
    assert trunk.training
    for k, v in _bn_stats(trunk).items():
        assert torch.equal(v, stats[k]), k


# ----------------------------------------------------------------------------- summary


def test_summary_line_puts_every_value_in_its_column():
    from clrl.analysis.monitor import summary_lines

    def point(drift):
        if drift is None:
            return type("P", (), {"analysis": None})()
        return type("P", (), {"analysis": {"tasks": [{
            "task": 0, "layers": {"fc1": {"drift": drift, "drift_protected": 0.05, "dormant": 0.2},
                                  "fc2": {"drift": 3 * drift, "drift_protected": 0.15, "dormant": 0.4}},
            "features": {"effective_rank": 5, "feature_change": 0.5, "hoyer": 0.7}}]}})()

    class Res:
        tasks = ["a"]
        curves = [point(0.9), point(0.1), point(None)]  # the last point with an analysis block

    (line,) = summary_lines(Res())
    # means over layers for drift, protected drift and dormant share; the features' own otherwise
    assert line == "0: a  drift 0.200  protected 0.100  feat. change 0.500  dormant 0.300  srank 5  hoyer 0.700"


# ----------------------------------------------------------------------------- rollout states


def test_rollout_states_spread_over_every_env_of_a_full_buffer():
    from clrl.analysis.monitor import rollout_states

    obs = np.arange(6 * 3 * 2, dtype=np.float32).reshape(6, 3, 1, 2)  # (steps, envs, *obs_shape)
    buf = type("Buf", (), {"observations": obs, "obs_shape": (1, 2), "full": True})()
    model = type("Model", (), {"rollout_buffer": buf})()
    flat = obs.reshape(18, 1, 2)  # step-major, all envs: rows 0, 6, 11, 17 spread over it
    got = rollout_states(model, 4)
    assert got.dtype == np.uint8 and np.array_equal(got, flat[[0, 6, 11, 17]])
    buf.observations = flat  # after SB3's get(): already (steps * envs, ...)
    assert np.array_equal(rollout_states(model, 4), flat[[0, 6, 11, 17]])
    buf.full = False  # a buffer still being filled holds zeros past its position
    assert rollout_states(model, 4) is None
    assert rollout_states(object(), 4) is None


# ----------------------------------------------------------------------------- report readers


def test_report_reads_protected_drift_and_layer_means(tmp_path):
    from clrl.report.analysis_figures import _series, layer_mean, task_drift
    from clrl.report.runs import RunRecord
    from clrl.results import CurvePoint, new_results

    def entry(j, scale):
        layers = {"fc1": {"drift": 0.1 * scale, "drift_protected": 0.0, "dormant": 0.1 * scale},
                  "fc2": {"drift": 0.3 * scale, "drift_protected": 0.02 * scale, "dormant": 0.5 * scale}}
        return {"task": j, "n": 4, "reference": True, "layers": layers,
                "features": {"dormant": 0.9, "effective_rank": 2 + j, "feature_change": 0.5 * scale}}

    res = new_results("supervised", "r", 0, {"regularizer": {"name": "agscl"}}, ["a", "b"])
    res.curves = [CurvePoint(step=1, task=0, scores=[1.0], analysis={"tasks": [entry(0, 1.0)]}),
                  CurvePoint(step=2, task=1, scores=[1.0, 1.0], analysis={"tasks": [entry(0, 2.0), entry(1, 1.0)]})]
    rec = RunRecord(tmp_path, res, None)
    assert layer_mean(entry(0, 1.0), "drift") == pytest.approx(0.2)
    d, f = task_drift(rec)
    assert d.tolist() == pytest.approx([0.4, 0.2]) and f.tolist() == pytest.approx([1.0, 0.5])
    dp, _ = task_drift(rec, protected=True)
    assert dp.tolist() == pytest.approx([0.02, 0.01])
    steps, dormant = _series(rec, "dormant")  # mean over layers, then over seen tasks
    assert steps.tolist() == [1.0, 2.0] and dormant.tolist() == pytest.approx([0.3, (0.6 + 0.3) / 2])
    _, rank = _series(rec, "rank")
    assert rank.tolist() == pytest.approx([2.0, 2.5])


# ----------------------------------------------------------------------------- monitor input handling


def test_monitor_batches_its_forward_and_spreads_the_current_tasks_inputs(tmp_path):
    """A probe set larger than ``batch_size`` is measured in several passes with the same result,
    and the task being trained is measured on ``probe_size`` of its inputs spread over them."""
    torch.manual_seed(7)
    trunk = digits_trunk([16, 8])
    rng = np.random.default_rng(7)
    x0 = rng.integers(0, 17, size=(9, 64)).astype(np.uint8)
    cur = rng.integers(0, 17, size=(20, 64)).astype(np.uint8)
    prep = lambda j, a: torch.from_numpy(a.astype(np.float32) / 16)  # noqa: E731
    blocks = []
    for bs in (256, 3):
        mon = RepresentationMonitor(trunk, prep, trunk, tmp_path / str(bs), probe_size=7, batch_size=bs,
                                    current=lambda j: cur)
        mon.on_task_end(task=0, inputs=x0)

        class P:
            analysis = None

        p = P()
        mon.on_evaluation(point=p, task=1, step=0)
        p.analysis.pop("seconds")
        blocks.append(p.analysis)
    assert [e["n"] for e in blocks[0]["tasks"]] == [7, 7]
    assert nested_close(blocks[0], blocks[1], atol=1e-6)
    x1 = prep(1, cur[np.linspace(0, 19, 7).round().astype(int)])  # the current task's 7 inputs
    with torch.no_grad():
        h1 = torch.relu(trunk[0](x1))
    assert blocks[1]["tasks"][1]["layers"]["fc1"]["hoyer"] == pytest.approx(hoyer_sparsity(h1), rel=1e-6)
    assert blocks[1]["tasks"][1]["layers"]["fc1"]["dead"] == pytest.approx(dead_unit_share(h1 > 0))
