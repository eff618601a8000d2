"""Metrics against matrices worked out by hand (the README's "Metrics" definitions) and properties."""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clrl import metrics as m

nan = float("nan")

# 3 tasks, NaN above the diagonal (tasks not evaluated before they are trained).
R3 = [
    [0.8, nan, nan],
    [0.6, 0.9, nan],
    [0.5, 0.7, 0.95],
]

# 4 tasks; task 0 improves at the end (0.9 > its best earlier 0.7): forgetting's max runs
# over rows j..T-2 only, stability's over rows j..T-1.
R4 = [
    [0.5, nan, nan, nan],
    [0.7, 0.6, nan, nan],
    [0.6, 0.4, 0.8, nan],
    [0.9, 0.3, 0.5, 0.7],
]


def test_three_by_three_by_hand():
    assert m.acc(R3) == pytest.approx((0.5 + 0.7 + 0.95) / 3)
    assert m.learning_acc(R3) == pytest.approx((0.8 + 0.9 + 0.95) / 3)
    # BTI averages over all T tasks (the last contributes 0), BWT over the first T-1.
    assert m.bti(R3) == pytest.approx((-0.3 - 0.2 + 0.0) / 3)
    assert m.bwt(R3) == pytest.approx((-0.3 - 0.2) / 2)
    assert m.forgetting(R3) == pytest.approx((0.3 + 0.2) / 2)
    assert m.stability(R3) == pytest.approx((0.5 / 0.8 + 0.7 / 0.9 + 1.0) / 3)
    assert m.plasticity(R3, [1.0, 0.9, 0.5]) == pytest.approx((0.8 + 1.0 + 1.9) / 3)
    assert m.acc_after_each_task(R3) == pytest.approx([0.8, 0.75, 2.15 / 3])
    assert math.isnan(m.fwt(R3, [0.1, 0.1, 0.1]))  # needs R[j-1][j], not evaluated here


def test_four_by_four_by_hand():
    assert m.acc(R4) == pytest.approx(0.6)
    assert m.learning_acc(R4) == pytest.approx(0.65)
    assert m.bti(R4) == pytest.approx(-0.05)
    assert m.bwt(R4) == pytest.approx((0.4 - 0.3 - 0.3) / 3)
    # j=0: max(.5,.7,.6) - .9 = -.2 (the final .9 is not part of the max); j=1: .6-.3; j=2: .8-.5
    assert m.forgetting(R4) == pytest.approx((-0.2 + 0.3 + 0.3) / 3)
    # j=0: .9/max(.5,.7,.6,.9)=1; j=1: .3/.6; j=2: .5/.8; j=3: 1
    assert m.stability(R4) == pytest.approx((1 + 0.5 + 0.625 + 1) / 4)
    np.testing.assert_allclose(m.stability_per_task(R4), [1, 0.5, 0.625, 1])


def test_fwt_on_a_full_matrix():
    R = [[0.8, 0.3, 0.2], [0.6, 0.9, 0.4], [0.5, 0.7, 0.95]]
    assert m.fwt(R, [0.1, 0.25, 0.5]) == pytest.approx(((0.3 - 0.25) + (0.4 - 0.5)) / 2)


def test_none_is_not_evaluated():
    R = [[1.0, None], [0.5, 2.0]]
    assert m.acc(R) == pytest.approx(1.25)
    assert math.isnan(m.fwt(R, [0, 0]))


def test_zero_or_negative_denominators_give_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = m.plasticity_per_task(R3, [0.0, 0.9, -1.0])
        assert math.isnan(p[0]) and p[1] == pytest.approx(1.0) and math.isnan(p[2])
        assert math.isnan(m.plasticity(R3, [0.0, 0.9, -1.0]))
        zero_col = [[0.0, nan], [0.0, 1.0]]
        s = m.stability_per_task(zero_col)
        assert math.isnan(s[0]) and s[1] == 1.0
        normed = m.normalize([[1.0, 2.0], [3.0, 4.0]], [0.0, 2.0])
        assert np.isnan(normed[:, 0]).all()
        np.testing.assert_allclose(normed[:, 1], [1.0, 2.0])
        assert not np.isinf(normed).any()
        assert math.isnan(m.bwt([[0.7]]))  # one task: nothing to average
        assert math.isnan(m.forgetting([[0.7]]))


def test_normalize_divides_columns():
    out = m.normalize(np.array([[2.0, 9.0], [4.0, 3.0]]), [2.0, 3.0])
    np.testing.assert_allclose(out, [[1.0, 3.0], [2.0, 1.0]])


def test_accumulated_normalized_reward_by_hand():
    curve = [[5.0], [10.0, 1.0], [5.0, 4.0, 30.0]]
    ref_max = m.reference_max(curve, 3)
    np.testing.assert_allclose(ref_max, [10.0, 4.0, 30.0])
    acc_curve = m.accumulated_normalized_reward(curve, [10.0, 2.0, 30.0])
    np.testing.assert_allclose(acc_curve, [0.5, 1.0 + 0.5, 0.5 + 2.0 + 1.0])
    bad = m.accumulated_normalized_reward(curve, [10.0, 0.0, 30.0])
    assert bad[0] == pytest.approx(0.5) and np.isnan(bad[1:]).all()


def test_a_seen_task_without_a_score_makes_its_point_nan_not_zero():
    # task 0 is seen at point 1 (two scores listed) but its score is missing there
    out = m.accumulated_normalized_reward([[5.0], [None, 1.0], [5.0, 2.0]], [10.0, 2.0])
    assert out[0] == pytest.approx(0.5) and np.isnan(out[1]) and out[2] == pytest.approx(1.5)


def test_a_reference_with_more_tasks_than_the_run_is_cut_to_the_runs_tasks():
    ref_curve = [[4.0], [2.0, 6.0], [1.0, 3.0, 9.0]]  # a 3-task fine-tuning run
    np.testing.assert_allclose(m.reference_max(ref_curve, 2), [4.0, 6.0])
    assert m.curve_matrix(ref_curve, 2).shape == (3, 2)


def test_non_square_is_rejected():
    with pytest.raises(ValueError, match="square"):
        m.acc([[1.0, 2.0]])


def lower_triangular(draw_values, T):
    R = np.full((T, T), np.nan)
    k = 0
    for i in range(T):
        for j in range(i + 1):
            R[i, j] = draw_values[k]
            k += 1
    return R


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6).flatmap(lambda T: st.tuples(st.just(T), st.lists(
    st.floats(0.01, 100.0), min_size=T * (T + 1) // 2, max_size=T * (T + 1) // 2))))
def test_bti_is_acc_minus_learning_acc(args):
    T, values = args
    R = lower_triangular(values, T)
    assert m.bti(R) == pytest.approx(m.acc(R) - m.learning_acc(R), rel=1e-9, abs=1e-9)
    if T > 1:
        assert m.bwt(R) * (T - 1) == pytest.approx(m.bti(R) * T, rel=1e-9, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.01, 100.0), min_size=1, max_size=7))
def test_no_forgetting_gives_forgetting_zero_and_stability_one(diag):
    T = len(diag)
    R = np.full((T, T), np.nan)
    for j, v in enumerate(diag):
        R[j:, j] = v  # every task keeps exactly the score it reached
    assert m.stability(R) == pytest.approx(1.0)
    if T > 1:
        assert m.forgetting(R) == pytest.approx(0.0)
        assert m.bwt(R) == pytest.approx(0.0)
    assert m.plasticity(R, diag) == pytest.approx(1.0)


# --------------------------------------------------------------------------- bootstrap CI


def test_bootstrap_ci_three_values_is_min_max_by_hand():
    # 27 equally likely resamples; P(all three = the smallest) = 1/27 = 3.7% > 2.5%, so the
    # 2.5% percentile of the resample means is the smallest value (and symmetrically the largest)
    assert m.bootstrap_ci([1.0, 2.0, 10.0], seed=0) == (1.0, 10.0)


def test_bootstrap_ci_matches_exact_enumeration():
    """n = 5: all 5^5 resamples enumerated give the exact bootstrap distribution of the mean."""
    import itertools

    v = np.array([0.0, 100.0, 150.0, 400.0, 1200.0])
    exact = np.array([v[list(idx)].mean() for idx in itertools.product(range(5), repeat=5)])
    want = np.percentile(exact, [2.5, 97.5])
    got = m.bootstrap_ci(v, seed=3, reps=200_000)
    np.testing.assert_allclose(got, want, atol=0.02 * (v.max() - v.min()))


def test_bootstrap_ci_matches_scipy_and_normal_theory():
    from scipy import stats

    rng = np.random.default_rng(1)
    v = rng.exponential(300.0, size=30)
    res = stats.bootstrap((v,), np.mean, method="percentile", n_resamples=50_000, random_state=7)
    got = m.bootstrap_ci(v, seed=0, reps=50_000)
    width = res.confidence_interval.high - res.confidence_interval.low
    np.testing.assert_allclose(got, [res.confidence_interval.low, res.confidence_interval.high], atol=0.03 * width)
    big = rng.normal(5.0, 2.0, size=400)
    lo, hi = m.bootstrap_ci(big, seed=0)
    half = 1.959964 * big.std() / math.sqrt(big.size)  # the plug-in (ddof=0) standard error
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.06)
    assert (hi + lo) / 2 == pytest.approx(big.mean(), abs=0.1 * half)


def test_bootstrap_ci_edge_cases_and_seeding():
    assert m.bootstrap_ci([7.5], seed=0) == (7.5, 7.5)
    assert m.bootstrap_ci([0.1, 0.1, 0.1], seed=0) == (0.1, 0.1)
    assert all(math.isnan(x) for x in m.bootstrap_ci([], seed=0))
    assert all(math.isnan(x) for x in m.bootstrap_ci([float("nan")], seed=0))
    v = [3.0, 5.0, 8.0, 13.0, 40.0, 0.0]
    assert m.bootstrap_ci(v + [float("nan")], seed=4) == m.bootstrap_ci(v, seed=4)
    assert m.bootstrap_ci(v, seed=4) == m.bootstrap_ci(v, seed=4)
    w = np.random.default_rng(0).normal(size=40)  # enough distinct resample means to tell seeds apart
    assert m.bootstrap_ci(w, seed=4) != m.bootstrap_ci(w, seed=5)
    lo, hi = m.bootstrap_ci(v, seed=4)
    assert min(v) <= lo < np.mean(v) < hi <= max(v)
    with pytest.raises(ValueError):
        m.bootstrap_ci(v, reps=0)


# --------------------------------------------------------------------------- mutation audit


def test_forgetting_per_task_by_hand_and_its_mean_is_forgetting():
    """R4 by hand: j=0: max(.5, .7, .6) - .9 = -.2 (the final row is not part of the max);
    j=1: max(.6, .4) - .3 = .3; j=2: .8 - .5 = .3.

    Mutation caught: the max over rows j..T-1 (the final row included) in ``forgetting_per_task``."""
    np.testing.assert_allclose(m.forgetting_per_task(R4), [-0.2, 0.3, 0.3])
    assert float(np.mean(m.forgetting_per_task(R4))) == pytest.approx(m.forgetting(R4))


def test_summary_row_by_hand():
    """Every entry of the table row on a full 3 x 3 matrix, worked out by hand; plasticity and FWT
    are NaN without their references.

    Mutations caught: the ``bwt`` entry computed as BTI; ``fwt`` dropped."""
    R = [[0.8, 0.3, 0.2], [0.6, 0.9, 0.4], [0.5, 0.7, 0.95]]
    row = m.summary(R, ref_diag=[1.0, 0.9, 0.5], b=[0.1, 0.25, 0.5])
    want = {
        "acc": (0.5 + 0.7 + 0.95) / 3,
        "learning_acc": (0.8 + 0.9 + 0.95) / 3,
        "bti": (-0.3 - 0.2 + 0.0) / 3,
        "bwt": (-0.3 - 0.2) / 2,
        "forgetting": ((0.8 - 0.5) + (0.9 - 0.7)) / 2,
        "stability": (0.5 / 0.8 + 0.7 / 0.9 + 1.0) / 3,
        "plasticity": (0.8 / 1.0 + 0.9 / 0.9 + 0.95 / 0.5) / 3,
        "fwt": ((0.3 - 0.25) + (0.4 - 0.5)) / 2,
    }
    assert set(row) == set(want)
    for k, v in want.items():
        assert row[k] == pytest.approx(v), k
    bare = m.summary(R)
    assert math.isnan(bare["plasticity"]) and math.isnan(bare["fwt"])
    assert bare["bwt"] == pytest.approx(want["bwt"])


def test_bootstrap_ci_leaves_out_infinite_values_too():
    """Non-finite entries (NaN and +-inf) are left out, not averaged into infinite means.

    Mutation caught: filtering with ``~isnan`` (infinities kept)."""
    v = [3.0, 5.0, 8.0, 13.0, 40.0, 0.0]
    assert m.bootstrap_ci(v + [float("inf"), float("-inf")], seed=4) == m.bootstrap_ci(v, seed=4)
