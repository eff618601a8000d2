"""clrl report: tables against clrl.metrics and numpy, grouping, partial runs, errors, figures, CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from clrl import metrics
from clrl.cli import main as cli_main
from clrl.errors import UserError
from clrl.report import runs as runs_mod
from clrl.report import scores, stats
from clrl.report.build import build_report, default_out, single_run_report
from clrl.results import (
    CurvePoint,
    Reference,
    load_results,
    new_results,
    reference_from_run,
    save_results,
)

TASKS = ["A", "B", "C", "D"]
REPS = 200


def write_run(root: Path, name: str, R, seed: int = 0, reg: dict | None = None, kind: str = "supervised",
              reference: Reference | None = None, curves: list[CurvePoint] | None = None,
              diagnostics: list[dict] | None = None, status: str = "complete", reason: str | None = None,
              baseline: list[float] | None = None, stored: dict | None = None, tasks=TASKS) -> Path:
    cfg = {"name": name, "kind": kind, "seed": seed, "regularizer": reg or {"name": "none"},
           "tasks": {"dataset": "split_digits"}, "output": {"dir": str(root)}}
    res = new_results(kind, name, seed, cfg, list(tasks))
    res.R = [[None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in row] for row in R]
    res.reference = reference
    res.curves = curves or []
    res.diagnostics = diagnostics or []
    res.status, res.reason = status, reason
    res.baseline = baseline
    res.metrics = stored or {}
    run = root / name
    save_results(run / "results.json", res)
    return run


def lower(rng: np.random.Generator, T: int = 4) -> np.ndarray:
    """A random T x T matrix with the upper triangle not evaluated."""
    R = rng.uniform(0.2, 1.0, size=(T, T))
    R[np.triu_indices(T, 1)] = np.nan
    return R


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def f(x: str) -> float:
    return float(x) if x != "" else float("nan")


# --------------------------------------------------------------------------- synthetic RL runs
# A realistic set for the figure tests (and for looking at the figures: call make_rl_set).

GAMES = ["StarGunner", "Boxing", "VideoPinball", "CrazyClimber"]
SCALE = {"StarGunner": 3000.0, "Boxing": 60.0, "VideoPinball": 20000.0, "CrazyClimber": 60000.0}
METHODS = {
    "none": ({"name": "none"}, 0.9, None),
    "ewc": ({"name": "ewc", "lamb": 5000.0}, 0.45, {"importance": 1_690_000 * 4, "anchor": 1_690_000 * 4}),
    "agscl": ({"name": "agscl", "mu": 0.1, "lamb": 100.0}, 0.05, {"importance": 672 * 4, "anchor": 1_690_000 * 4}),
}


def rl_config(reg: dict, seed: int, steps_per_task: int) -> dict:
    return {
        "name": f"{reg['name']}-s{seed}",
        "kind": "rl",
        "seed": seed,
        "tasks": {"games": list(GAMES), "steps_per_task": steps_per_task},
        "model": {"channels": [32, 64, 64], "hidden": 512, "activation": "relu"},
        "regularizer": reg,
        "output": {"dir": "runs"},
    }


def make_rl_run(root: Path, method: str, seed: int, steps_per_task: int = 100_000, every: int = 10_000,
                fail_after: int | None = None, games: list[str] | None = None):
    """A run whose scores rise while a game trains and decay afterwards at the method's rate."""
    games = games or GAMES
    reg, decay, mem = METHODS[method]
    rng = np.random.default_rng(1000 * seed + len(method))
    res = new_results("rl", f"{method}-s{seed}", seed, rl_config(reg, seed, steps_per_task), games)
    res.config["tasks"]["games"] = list(games)
    T = len(games)
    skill = np.zeros(T)
    plast = 1.0 if method != "agscl" else 1.15
    for t in range(T):
        if fail_after is not None and t >= fail_after:
            res.status, res.reason = "failed", "TrainingDiverged: non-finite loss at step 212992"
            break
        for k in range(1, steps_per_task // every + 1):
            frac = k * every / steps_per_task
            skill[t] = plast * (1 - np.exp(-3 * frac)) * (1 + 0.08 * rng.standard_normal())
            for j in range(t):
                skill[j] *= (1 - decay) ** (every / steps_per_task)
            step = t * steps_per_task + k * every
            scores = [float(SCALE[games[j]] * max(skill[j], 0) * (1 + 0.05 * rng.standard_normal())) for j in range(t + 1)]
            res.curves.append(CurvePoint(step=step, task=t, scores=scores, wall_time=float(step) / 500))
        res.R[t] = [float(SCALE[games[j]] * skill[j]) if j <= t else None for j in range(T)]
        diag = {"memory_bytes": dict(mem) if mem else {}}
        if method == "agscl":
            diag["overall"] = {"sparsity": 0.9 * 0.7 ** (t + 1), "used_capacity": 1 - 0.85 * 0.72 ** (t + 1)}
            diag["layers"] = {"conv1": {"sparsity": 0.5}}
        res.diagnostics.append(diag)
    else:
        res.status = "complete"
    run_dir = root / f"{method}-s{seed}"
    save_results(run_dir / "results.json", res)
    return run_dir


def make_rl_set(root: Path, seeds=(0, 1, 2), with_reference: bool = True) -> list[Path]:
    runs = [make_rl_run(root, m, s) for m in METHODS for s in seeds]
    if with_reference:
        ref = reference_from_run(root / "none-s0", GAMES)
        for run in runs:
            res = load_results(run)
            res.reference = ref
            save_results(run / "results.json", res)
    return runs


# --------------------------------------------------------------------------- numbers


def test_per_task_terms_average_to_the_metrics():
    rng = np.random.default_rng(0)
    for T in (2, 3, 5):
        R = rng.uniform(0, 1, (T, T))
        ref = rng.uniform(0.5, 1, T)
        b = rng.uniform(0, 0.2, T)
        terms = scores.per_task_terms(R, ref, b)
        assert np.mean(terms["acc"]) == pytest.approx(metrics.acc(R))
        assert np.mean(terms["learning_acc"]) == pytest.approx(metrics.learning_acc(R))
        assert np.mean(terms["bti"]) == pytest.approx(metrics.bti(R))
        assert np.mean(terms["bwt"]) == pytest.approx(metrics.bwt(R))
        assert np.mean(terms["forgetting"]) == pytest.approx(metrics.forgetting(R))
        assert np.mean(terms["stability"]) == pytest.approx(metrics.stability(R))
        assert np.mean(terms["plasticity"]) == pytest.approx(metrics.plasticity(R, ref))
        assert np.mean(terms["fwt"]) == pytest.approx(metrics.fwt(R, b))


def test_mean_std_matches_numpy_and_skips_nan():
    v = [0.3, 0.5, 0.9, float("nan")]
    mean, std, n = stats.mean_std(v)
    assert (mean, n) == (pytest.approx(np.mean(v[:3])), 3)
    assert std == pytest.approx(np.std(v[:3], ddof=1))
    assert math.isnan(stats.mean_std([1.0])[1]) and stats.mean_std([])[2] == 0


def _iqm_by_hand(x: np.ndarray) -> float:
    s = np.sort(x.ravel())
    k = len(s) // 4
    return float(s[k : len(s) - k].mean())


@pytest.mark.parametrize("use_rliable", [True, False])
def test_iqm_ci_is_ordered_seeded_and_leaves_global_rng_alone(use_rliable):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 4))
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    point, lo, hi, how = stats.iqm_ci(x, reps=300, seed=7, use_rliable=use_rliable)
    assert np.array_equal(np.random.get_state()[1], before)
    assert point == pytest.approx(_iqm_by_hand(x))
    assert lo <= point <= hi and hi - lo > 0
    assert stats.iqm_ci(x, reps=300, seed=7, use_rliable=use_rliable)[1:3] == (lo, hi)
    assert how
    const = np.full((4, 3), 2.5)
    assert stats.iqm_ci(const, reps=50, use_rliable=use_rliable)[:3] == (2.5, 2.5, 2.5)


def test_rliable_and_fallback_bootstrap_agree():
    x = np.random.default_rng(11).normal(size=(6, 3))
    a = stats.iqm_ci(x, reps=2000, seed=1, use_rliable=True)
    b = stats.iqm_ci(x, reps=2000, seed=1, use_rliable=False)
    width = a[2] - a[1]
    assert abs(a[1] - b[1]) < 0.15 * width and abs(a[2] - b[2]) < 0.15 * width


def test_iqm_needs_three_runs_and_finite_scores():
    assert all(math.isnan(v) for v in stats.iqm_ci(np.ones((2, 4)))[:3])
    x = np.ones((4, 2))
    x[0, 0] = np.nan
    assert math.isnan(stats.iqm_ci(x)[0])


def test_method_table_equals_metrics_and_numpy(tmp_path):
    rng = np.random.default_rng(1)
    Rs = [lower(rng) for _ in range(3)]
    ref = Reference(run="ft", max_scores=[1.2, 1.1, 1.0, 0.9], diag=[0.9, 0.8, 0.85, 0.7])
    for s, R in enumerate(Rs):
        pts = [CurvePoint(step=10 * (i + 1), task=i, scores=list(R[i, : i + 1])) for i in range(4)]
        write_run(tmp_path, f"agscl-{s}", R, seed=s, reg={"name": "agscl", "mu": 0.1}, reference=ref, curves=pts,
                  diagnostics=[{"memory_bytes": {"importance": 100, "anchor": 900}}])
    rep = build_report([tmp_path], out=tmp_path / "out", reps=REPS, figures=False)
    (row,) = read_csv(tmp_path / "out" / "methods.csv")
    assert row["method"] == "AGS-CL" and row["n_seeds"] == "3" and row["seeds"] == "0 1 2"
    ref_diag = np.array(ref.diag)
    ref_max = np.array(ref.max_scores)
    expected = {
        "acc": [metrics.acc(R) for R in Rs],
        "bti": [metrics.bti(R) for R in Rs],
        "bwt": [metrics.bwt(R) for R in Rs],
        "forgetting": [metrics.forgetting(R) for R in Rs],
        "stability": [metrics.stability(R) for R in Rs],
        "plasticity": [metrics.plasticity(R, ref_diag) for R in Rs],
        # the last curve point holds the final row, normalized per task by the reference max
        "norm_reward": [float(np.sum(R[-1] / ref_max)) for R in Rs],
    }
    for key, vals in expected.items():
        assert f(row[f"{key}_mean"]) == pytest.approx(np.mean(vals)), key
        assert f(row[f"{key}_std"]) == pytest.approx(np.std(vals, ddof=1)), key
        assert row[f"{key}_n"] == "3"
        lo, mid, hi = f(row[f"{key}_iqm_lo"]), f(row[f"{key}_iqm"]), f(row[f"{key}_iqm_hi"])
        assert lo <= mid <= hi, key
    # IQM of ACC: runs x tasks final scores (12 entries, the middle 6), computed by hand
    assert f(row["acc_iqm"]) == pytest.approx(_iqm_by_hand(np.vstack([R[-1] for R in Rs])))
    assert f(row["memory_bytes"]) == 1000 and f(row["memory_importance_bytes"]) == 100
    assert math.isnan(f(row["fwt_mean"]))  # no baseline stored
    md = (tmp_path / "out" / "report.md").read_text()
    acc = expected["acc"]
    assert f"{np.mean(acc):.3f} ± {np.std(acc, ddof=1):.3f}" in md
    assert "IQM" in md and "stratified" in md
    assert rep.method_rows[0].stats["acc"].mean == pytest.approx(np.mean(acc))


def test_rl_iqm_of_raw_returns_is_over_runs_and_ratios_over_runs_x_tasks(tmp_path):
    """Raw returns differ in scale between games: their IQM pools runs only; S pools runs x tasks."""
    rng = np.random.default_rng(13)
    Rs = [lower(rng) * np.array([1.0, 100.0, 10_000.0, 10.0]) for _ in range(4)]
    for s, R in enumerate(Rs):
        write_run(tmp_path, f"rl-{s}", R, seed=s, kind="rl")
    (row,) = read_csv(build_report([tmp_path], out=tmp_path / "o", reps=REPS, figures=False).out / "methods.csv")
    assert f(row["acc_iqm"]) == pytest.approx(_iqm_by_hand(np.array([metrics.acc(R) for R in Rs])))
    S = np.vstack([metrics.stability_per_task(R) for R in Rs])
    assert f(row["stability_iqm"]) == pytest.approx(_iqm_by_hand(S))


def test_number_formatting():
    from clrl.report.stats import Aggregate
    from clrl.report.tables import fmt, fmt_bytes, fmt_mean_std

    assert fmt(0.51234) == "0.512" and fmt(123.456) == "123.5" and fmt(-12345.6) == "-12,346" and fmt(None) == "-"
    assert fmt_mean_std(Aggregate(14193.2, 910.94, 3)) == "14,193 ± 911"
    assert fmt_mean_std(Aggregate(0.5, float("nan"), 1)) == "0.500"
    assert fmt_bytes(2688) == "2.69 kB" and fmt_bytes(6_760_000) == "6.76 MB" and fmt_bytes(0) == "0 B"


def test_run_table_per_run_values_and_stored_mismatch_warning(tmp_path):
    R = lower(np.random.default_rng(2))
    write_run(tmp_path, "r0", R, stored={"acc": metrics.acc(R) + 0.5, "bti": metrics.bti(R)})
    rep = build_report([tmp_path], out=tmp_path / "out", reps=REPS, figures=False)
    (row,) = read_csv(tmp_path / "out" / "runs.csv")
    assert f(row["acc"]) == pytest.approx(metrics.acc(R))
    assert f(row["forgetting"]) == pytest.approx(metrics.forgetting(R))
    assert any(f"stored metrics.acc = {metrics.acc(R) + 0.5:.6g} but R gives {metrics.acc(R):.6g}" in w
               for w in rep.warnings)
    assert not any("metrics.bti" in w for w in rep.warnings)
    assert f(row["memory_bytes"]) == 0  # fine-tuning keeps no state


# --------------------------------------------------------------------------- grouping


def test_seeds_group_and_labels_name_what_differs(tmp_path):
    R = lower(np.random.default_rng(4))
    for s in range(2):
        write_run(tmp_path, f"ft-{s}", R, seed=s)
        write_run(tmp_path, f"ewc-{s}", R, seed=s, reg={"name": "ewc", "lamb": 5000.0})
        write_run(tmp_path, f"ags100-{s}", R, seed=s, reg={"name": "agscl", "mu": 0.1, "lamb": 100.0})
        write_run(tmp_path, f"ags1000-{s}", R, seed=s, reg={"name": "agscl", "mu": 0.1, "lamb": 1000.0})
    groups = runs_mod.group_runs(runs_mod.load_runs([tmp_path]))
    assert [g.label for g in groups] == ["Fine-tuning", "EWC", "AGS-CL (lamb=100)", "AGS-CL (lamb=1000)"]
    assert all(len(g.runs) == 2 and g.seeds == [0, 1] for g in groups)
    merged = runs_mod.group_runs(runs_mod.load_runs([tmp_path]), group_by=["regularizer.name"])
    assert [len(g.runs) for g in merged] == [2, 2, 4]
    ignored = runs_mod.group_runs(runs_mod.load_runs([tmp_path]), ignore=["regularizer.lamb"])
    assert [g.label for g in ignored] == ["Fine-tuning", "EWC", "AGS-CL"]


def test_non_regularizer_key_that_differs_labels_every_group(tmp_path):
    R = lower(np.random.default_rng(5))
    for act in ("relu", "lwta"):
        run = write_run(tmp_path, f"x-{act}", R)
        res = load_results(run)
        res.config["model"] = {"activation": act}
        save_results(run / "results.json", res)
    labels = sorted(g.label for g in runs_mod.group_runs(runs_mod.load_runs([tmp_path])))
    assert labels == ["Fine-tuning (activation=lwta)", "Fine-tuning (activation=relu)"]


def test_discovery_nested_folders_files_and_report_dirs(tmp_path):
    R = lower(np.random.default_rng(6))
    a = write_run(tmp_path / "sweep" / "g1", "t0", R)
    b = write_run(tmp_path / "sweep" / "g2", "t1", R, seed=1)
    found = runs_mod.discover_runs([tmp_path / "sweep", a / "results.json"])
    assert [p.resolve() for p in found] == [a.resolve(), b.resolve()]
    build_report([tmp_path / "sweep"], reps=REPS, figures=False)
    assert (tmp_path / "sweep" / "report" / "report.md").is_file()  # default: <common parent>/report
    # a glob like sweep/* now includes the report folder: it is skipped, not an error
    again = runs_mod.discover_runs(sorted((tmp_path / "sweep").iterdir()))
    assert len(again) == 2
    with pytest.raises(UserError, match="no such file"):
        runs_mod.discover_runs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no results.json"):
        runs_mod.discover_runs([tmp_path / "empty"])


def test_default_out_is_report_in_common_parent(tmp_path):
    assert default_out([tmp_path / "runs" / "a", tmp_path / "runs" / "b"]) == tmp_path / "runs" / "report"
    assert default_out([tmp_path / "runs" / "a"]) == tmp_path / "runs" / "a" / "report"


# --------------------------------------------------------------------------- partial runs and errors


def test_partial_runs_are_reported_and_left_out_of_aggregates(tmp_path, capsys):
    rng = np.random.default_rng(7)
    full = [lower(rng) for _ in range(2)]
    for s, R in enumerate(full):
        write_run(tmp_path, f"ewc-{s}", R, seed=s, reg={"name": "ewc"})
    part = lower(rng)
    part[2:, :] = np.nan
    write_run(tmp_path, "ewc-2", part, seed=2, reg={"name": "ewc"}, status="failed", reason="TrainingDiverged: nan loss")
    run = write_run(tmp_path, "ewc-3", part, seed=3, reg={"name": "ewc"}, status="running")
    assert cli_main(["report", str(tmp_path), "--no-figures", "--reps", str(REPS), "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert f"{tmp_path / 'ewc-2'}: failed after task 2 of 4: TrainingDiverged: nan loss" in err
    assert f"{run}: not finished (status running; 2 of 4 tasks done)" in err
    (row,) = read_csv(tmp_path / "o" / "methods.csv")
    assert row["n_seeds"] == "2"
    assert f(row["acc_mean"]) == pytest.approx(np.mean([metrics.acc(R) for R in full]))
    assert "excluded" in row["notes"] and "failed after task 2 of 4" in row["notes"]
    runs = {Path(r["run"]).name: r for r in read_csv(tmp_path / "o" / "runs.csv")}
    assert f(runs["ewc-2"]["acc"]) == pytest.approx(metrics.acc(part[:2, :2]))
    assert "first 2 of 4 tasks" in runs["ewc-2"]["note"]
    md = (tmp_path / "o" / "report.md").read_text()
    assert "failed after task 2 of 4" in md


def test_failed_before_first_task_and_group_without_complete_run(tmp_path):
    R = np.full((4, 4), np.nan)
    write_run(tmp_path, "x", R, status="failed", reason="killed")
    rep = build_report([tmp_path], out=tmp_path / "o", reps=REPS, figures=False)
    assert rep.warnings[0].endswith("x: failed before finishing task 1 of 4: killed")
    assert rep.method_rows[0].n_seeds == 0 and rep.method_rows[0].notes[0] == "no complete run"


def test_mixing_kinds_is_a_user_error(tmp_path):
    R = lower(np.random.default_rng(8))
    write_run(tmp_path, "sup", R)
    write_run(tmp_path, "rl", R, kind="rl")
    with pytest.raises(UserError, match="different kinds"):
        runs_mod.load_runs([tmp_path])
    assert cli_main(["report", str(tmp_path), "--no-figures"]) == 2


def test_other_schema_version_is_a_user_error(tmp_path, capsys):
    run = write_run(tmp_path, "old", lower(np.random.default_rng(9)))
    data = json.loads((run / "results.json").read_text())
    data["schema_version"] = 99
    (run / "results.json").write_text(json.dumps(data))
    assert cli_main(["report", str(tmp_path), "--no-figures"]) == 2
    assert "schema version 99" in capsys.readouterr().err


def test_cli_exit_codes(tmp_path, capsys):
    assert cli_main(["report", str(tmp_path / "missing")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    write_run(tmp_path, "ok", lower(np.random.default_rng(10)))
    assert cli_main(["report", str(tmp_path), "--no-figures", "--out", str(tmp_path / "rep")]) == 0
    assert "report.md" in capsys.readouterr().out
    assert cli_main(["report", str(tmp_path), "--reps", "0"]) == 2


# --------------------------------------------------------------------------- diagnostics


def test_memory_and_diagnostics_extraction(tmp_path):
    R = lower(np.random.default_rng(12))
    diags = [{"overall": {"sparsity": 0.8, "used_capacity": 0.1}, "memory_bytes": {"importance": 10, "anchor": 5}},
             {"overall": {"sparsity": None}, "used_capacity": 0.3, "memory_bytes": {"importance": 20, "anchor": 40}}]
    rec = runs_mod.load_runs([write_run(tmp_path, "a", R, reg={"name": "agscl"}, diagnostics=diags)])[0]
    assert scores.memory(rec) == (20, 60)  # the last finished task's dict
    np.testing.assert_allclose(scores.diagnostic_series(rec, "sparsity"), [0.8, np.nan])
    np.testing.assert_allclose(scores.diagnostic_series(rec, "used_capacity"), [0.1, 0.3])
    ewc = runs_mod.load_runs([write_run(tmp_path, "b", R, reg={"name": "ewc"})])[0]
    assert all(math.isnan(v) for v in scores.memory(ewc))  # unknown, not zero
    total_only = runs_mod.load_runs([write_run(tmp_path, "c", R, reg={"name": "mas"},
                                               diagnostics=[{"memory_bytes": 123}])])[0]
    assert math.isnan(scores.memory(total_only)[0]) and scores.memory(total_only)[1] == 123


# --------------------------------------------------------------------------- figures


@pytest.fixture(scope="module")
def synthetic_runs(tmp_path_factory) -> Path:
    """3 methods x 3 seeds x 4 games, RL-like curves, fine-tuning seed 0 as the reference."""
    root = tmp_path_factory.mktemp("synth")
    make_rl_set(root / "runs", seeds=(0, 1, 2))
    return root / "runs"


@pytest.fixture(scope="module")
def synthetic_report(synthetic_runs):
    return build_report([synthetic_runs], out=synthetic_runs.parent / "report", reps=REPS)


FIGURES = ("normalized_reward", "plasticity_stability", "R_heatmaps", "sparsity_capacity", "memory", "eval_curves")


@pytest.mark.slow
def test_every_figure_is_written_as_png_and_pdf(synthetic_report):
    out = synthetic_report.out
    for name in FIGURES:
        for ext, minimum in (("png", 20_000), ("pdf", 8_000)):
            path = out / f"{name}.{ext}"
            assert path.is_file() and path.stat().st_size > minimum, path
    assert synthetic_report.skipped == []
    md = (out / "report.md").read_text()
    assert all(f"]({name}.png)" in md for name in FIGURES)
    assert [r.label for r in synthetic_report.method_rows] == ["Fine-tuning", "EWC", "AGS-CL"]


@pytest.mark.slow
def test_png_has_paper_resolution(synthetic_report):
    from PIL import Image

    with Image.open(synthetic_report.out / "normalized_reward.png") as im:
        dpi = im.info.get("dpi", (0, 0))[0]
        width_in = im.size[0] / dpi
    assert dpi >= 200 and 5.5 <= width_in <= 9.5  # page width, legend beside the axes


def test_synthetic_table_orders_methods_as_built(synthetic_runs, tmp_path):
    """The synthetic set forgets least with AGS-CL: the table must say so (a sanity check of the data flow)."""
    rep = build_report([synthetic_runs], out=tmp_path, reps=REPS, figures=False)
    s = {r.label: r.stats for r in rep.method_rows}
    assert [r.label for r in rep.method_rows] == ["Fine-tuning", "EWC", "AGS-CL"]
    assert s["AGS-CL"]["stability"].mean > s["EWC"]["stability"].mean > s["Fine-tuning"]["stability"].mean
    assert s["AGS-CL"]["norm_reward"].mean > s["Fine-tuning"]["norm_reward"].mean


@pytest.mark.slow
def test_figures_without_reference_are_skipped_with_a_reason(tmp_path):
    for m in ("ewc", "agscl"):
        make_rl_run(tmp_path / "runs", m, 0)
    rep = build_report([tmp_path / "runs"], out=tmp_path / "o", reps=REPS)
    assert not (tmp_path / "o" / "normalized_reward.png").exists()
    assert any(s.startswith("normalized_reward:") for s in rep.skipped)
    assert (tmp_path / "o" / "plasticity_stability.png").is_file()  # the S panel alone
    assert "not drawn: normalized_reward" in (tmp_path / "o" / "report.md").read_text()


def test_rl_heatmap_colours_span_each_tasks_range_negative_scores_included():
    from clrl.report.figures import per_task_min_max

    a = np.array([[-50.0, np.nan], [-10.0, 3.0]])  # Boxing-like negative returns in task 0
    b = np.array([[-30.0, np.nan], [-50.0, 3.0]])
    sa, sb = per_task_min_max([a, b], 2)
    np.testing.assert_allclose(sa[:, 0], [0.0, 1.0])  # -50 is the lowest, -10 the highest
    assert sb[0, 0] == pytest.approx(0.5) and sb[1, 0] == 0.0
    assert np.isnan(sa[0, 1]) and sa[1, 1] == 0.5 and sb[1, 1] == 0.5  # one value only: the middle


def test_a_report_reference_other_than_the_stored_one_raises_no_plasticity_warning(tmp_path):
    R = lower(np.random.default_rng(3))
    stored_ref = Reference(run="elsewhere", max_scores=[1.0] * 4, diag=[float(R[i, i]) for i in range(4)])
    run = write_run(tmp_path / "runs", "ewc", R, reg={"name": "ewc"}, reference=stored_ref,
                    stored={"plasticity": 1.0, "acc": metrics.acc(R)})
    ft = write_run(tmp_path / "refs", "ft", 2 * R)
    (rec,) = runs_mod.load_runs([run], reference=ft)
    new = scores.run_metrics(rec)
    assert new["plasticity"] == pytest.approx(0.5)  # against the --reference run
    assert scores.stored_mismatches(rec, new) == []  # the stored P was against another reference
    (own,) = runs_mod.load_runs([run])
    assert scores.stored_mismatches(own, {**scores.run_metrics(own), "plasticity": 0.25})  # still checked


def test_a_partial_runs_normalized_reward_covers_its_finished_tasks_only(tmp_path):
    R = np.full((3, 3), np.nan)
    R[0, 0], R[1, :2] = 5.0, [4.0, 20.0]
    pts = [CurvePoint(step=1, task=0, scores=[5.0]), CurvePoint(step=2, task=1, scores=[4.0, 20.0]),
           CurvePoint(step=3, task=2, scores=[4.0, 20.0, 30.0])]  # task 3 was still training
    ref = Reference(run="ft", max_scores=[10.0, 20.0, 30.0], diag=[10.0, 20.0, 30.0])
    run = write_run(tmp_path, "cut", R, kind="rl", reference=ref, curves=pts, status="failed",
                    reason="interrupted", tasks=["A", "B", "C"])
    (rec,) = runs_mod.load_runs([run])
    assert rec.done == 2
    assert scores.run_metrics(rec)["norm_reward"] == pytest.approx(4.0 / 10 + 20.0 / 20)


def test_a_cell_over_fewer_runs_than_the_seeds_says_how_many(tmp_path):
    rng = np.random.default_rng(5)
    R0, R1 = lower(rng), lower(rng)
    ref = Reference(run="ft", max_scores=[1.0] * 4, diag=[1.0] * 4)
    write_run(tmp_path, "ewc-0", R0, seed=0, reg={"name": "ewc"}, reference=ref)
    write_run(tmp_path, "ewc-1", R1, seed=1, reg={"name": "ewc"})  # no reference: no P
    build_report([tmp_path], out=tmp_path / "out", reps=REPS, figures=False)
    row = next(line for line in (tmp_path / "out" / "report.md").read_text().splitlines() if line.startswith("| EWC"))
    p0 = metrics.plasticity(R0, [1.0] * 4)
    assert f"| {p0:.3f} (n=1) |" in row, row  # one run: no s.d.
    assert row.count("(n=") == 1  # the metrics both runs have carry no count


def test_a_seed_that_ran_twice_is_one_seed_of_two_runs(tmp_path, capsys):
    """A copied or re-run folder: two runs, one seed. The Seeds column must not say 2."""
    rng = np.random.default_rng(6)
    write_run(tmp_path, "ewc-0", lower(rng), seed=0, reg={"name": "ewc"})
    write_run(tmp_path, "ewc-0-copy", lower(rng), seed=0, reg={"name": "ewc"})
    write_run(tmp_path, "ft-0", lower(rng), seed=0)
    write_run(tmp_path, "ft-1", lower(rng), seed=1)
    build_report([tmp_path], out=tmp_path / "out", reps=REPS, figures=False)
    lines = (tmp_path / "out" / "report.md").read_text().splitlines()
    seeds = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in lines if line.startswith("| ")}
    assert seeds["EWC"] == "1 (2 runs)", seeds
    assert seeds["Fine-tuning"] == "2", seeds  # distinct seeds: just the count


def test_fine_tuning_without_reference_is_its_own(tmp_path):
    run = make_rl_run(tmp_path / "runs", "none", 0)
    (rec,) = runs_mod.load_runs([run])
    assert rec.self_reference
    vals = scores.run_metrics(rec)
    assert vals["plasticity"] == pytest.approx(1.0)
    curve = [p.scores for p in rec.res.curves]
    expected = metrics.accumulated_normalized_reward(curve, metrics.reference_max(curve, 4))[-1]
    assert vals["norm_reward"] == pytest.approx(expected)
    (other,) = runs_mod.load_runs([make_rl_run(tmp_path / "runs", "ewc", 0)])
    assert other.reference is None and math.isnan(scores.run_metrics(other)["plasticity"])


@pytest.mark.slow
def test_single_run_report_into_figures(tmp_path):
    run = make_rl_run(tmp_path, "agscl", 0)
    res = load_results(run)
    res.reference = Reference(run="ft", max_scores=[3000, 60, 20000, 60000], diag=[2800, 55, 19000, 55000])
    save_results(run / "results.json", res)
    paths = single_run_report(run)
    names = sorted(p.name for p in paths)
    assert names == sorted(f"{n}.{e}" for n in ("R", "eval_curves", "sparsity_capacity", "normalized_reward")
                           for e in ("png", "pdf"))
    assert all(p.parent == run / "figures" and p.stat().st_size > 5_000 for p in paths)


def test_single_run_report_of_a_failed_run(tmp_path):
    run = make_rl_run(tmp_path, "ewc", 0, fail_after=2)
    names = {p.name for p in single_run_report(run)}
    assert {"R.png", "eval_curves.png"} <= names and "normalized_reward.png" not in names


def test_readme_figure_script(tmp_path):
    import importlib.util

    path = Path(__file__).parent.parent / "scripts" / "make_readme_figures.py"
    spec = importlib.util.spec_from_file_location("make_readme_figures", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    R = lower(np.random.default_rng(14))
    write_run(tmp_path / "runs", "a", R, reg={"name": "mas"}, diagnostics=[{"memory_bytes": {"importance": 4000}}])
    assert mod.main([str(tmp_path / "runs"), "--out", str(tmp_path / "fig"), "--only", "memory"]) == 0
    assert (tmp_path / "fig" / "report_memory.png").stat().st_size > 10_000
    assert not (tmp_path / "fig" / "report_memory.pdf").exists()
    assert mod.main([str(tmp_path / "missing")]) == 2


def test_task_names_fall_back_to_positions_when_seeds_differ(tmp_path):
    from clrl.report.figures import task_names

    R = lower(np.random.default_rng(15))
    a = write_run(tmp_path, "a", R, tasks=["d01", "d23", "d45", "d67"])
    b = write_run(tmp_path, "b", R, seed=1, tasks=["d89", "d01", "d23", "d45"])
    recs = runs_mod.load_runs([a, b])
    assert task_names(recs[:1]) == ["d01", "d23", "d45", "d67"]
    assert task_names(recs) == ["task 1", "task 2", "task 3", "task 4"]


# --------------------------------------------------------------------------- undefined values, failing figures


def _zero_best_runs(root: Path, max_scores: list[float]) -> list[Path]:
    """Fine-tuning, EWC and AGS-CL on two games with a reference whose best scores are given."""
    games = ["StarGunner", "Boxing"]
    ref = Reference(run="ft", max_scores=max_scores, diag=[2800.0, 55.0])
    runs = []
    for m in METHODS:
        run = make_rl_run(root, m, 0, steps_per_task=20_000, every=5_000, games=games)
        res = load_results(run)
        res.reference = ref
        save_results(run / "results.json", res)
        runs.append(run)
    return runs


def test_report_with_a_reference_best_score_of_zero_writes_report_and_other_figures(tmp_path, capsys):
    """Best score 0 on the first game: every normalized-reward point is NaN. That figure is not
    drawn (with the reason), the others are, and the report is written (exit 0)."""
    _zero_best_runs(tmp_path / "runs", [0.0, 60.0])
    out = tmp_path / "rep"
    assert cli_main(["report", str(tmp_path / "runs"), "--out", str(out), "--reps", "20"]) == 0
    md = (out / "report.md").read_text()
    assert not (out / "normalized_reward.png").exists()
    assert "not drawn: normalized_reward: no finite value to plot (the reference's best score is 0 or negative " \
           "on StarGunner" in md
    for name in ("plasticity_stability", "R_heatmaps", "sparsity_capacity", "memory", "eval_curves"):
        assert (out / f"{name}.png").is_file() and (out / f"{name}.pdf").is_file(), name
        assert f"]({name}.png)" in md
    assert all(row["norm_reward_mean"] == "" for row in read_csv(out / "methods.csv"))  # undefined: empty
    assert "Norm. reward" not in md  # the module's way with a metric no run has: no column of NaN
    assert "failed" not in capsys.readouterr().err


def test_normalized_reward_stops_where_a_later_games_best_score_is_zero(tmp_path, monkeypatch):
    """Best score 0 on the second game: the curve is drawn over the first game only, on the
    whole training axis, with a note naming the game, at page width."""
    from PIL import Image

    from clrl.report import figures as figs

    drawn = []

    def keep(fig, *args, **kwargs):
        ax = fig.axes[0]
        drawn.append((ax.get_xlim(), [t.get_text() for t in ax.texts]))
        return save(fig, *args, **kwargs)

    save = figs.save
    monkeypatch.setattr(figs, "save", keep)
    groups = runs_mod.group_runs(runs_mod.load_runs(_zero_best_runs(tmp_path / "runs", [3000.0, 0.0])))
    curves = [scores.normalized_reward_curve(r) for g in groups for r in g.runs]
    assert all(np.isfinite(c[:4]).all() and np.isnan(c[4:]).all() for c in curves)  # 4 points on game 1
    skipped: list[str] = []
    (png,) = figs.normalized_reward(groups, tmp_path / "f", formats=("png",), skipped=skipped)
    assert skipped == []
    ((xlim, texts),) = drawn
    assert xlim == (0.0, 40_000.0)  # both games' training, not only where the lines are defined
    assert any("undefined" in t and "0 or negative on Boxing" in t for t in texts), texts
    with Image.open(png) as im:
        assert im.size[0] / im.info["dpi"][0] < 9.5


def test_figures_of_nothing_finite_are_not_drawn_and_say_why(tmp_path):
    """Negative returns everywhere and a reference whose best scores are negative: P, S and the
    normalized reward are NaN (zero or negative denominators), evaluation scores missing: NaN."""
    from clrl.report import figures as figs

    runs = _zero_best_runs(tmp_path / "runs", [-1.0, -1.0])
    for run in runs:
        res = load_results(run)
        res.R = [[None if v is None else -abs(v) - 1.0 for v in row] for row in res.R]
        res.reference = Reference(run="ft", max_scores=[-1.0, -1.0], diag=[-1.0, -1.0])
        for p in res.curves:
            p.scores = [None] * len(p.scores)
        save_results(run / "results.json", res)
    groups = runs_mod.group_runs(runs_mod.load_runs(runs))
    skipped: list[str] = []
    for fn in (figs.normalized_reward, figs.plasticity_stability, figs.eval_curves):
        assert fn(groups, tmp_path / "f", formats=("png",), skipped=skipped) == []
    assert [s.split(":")[0] for s in skipped] == ["normalized_reward", "plasticity_stability",
                                                   "plasticity_stability", "eval_curves"]
    assert "no finite P" in skipped[1] and "no finite S" in skipped[2]
    assert figs.r_heatmaps(groups, tmp_path / "f", formats=("png",))  # R itself is finite


def test_one_failing_figure_is_reported_and_the_others_are_drawn(tmp_path, monkeypatch, capsys):
    from clrl.report import figures as figs

    def boom(*_args, **_kwargs):
        raise RuntimeError("boom")

    R = lower(np.random.default_rng(16))
    pts = [CurvePoint(step=k + 1, task=k, scores=[float(v) for v in R[k, : k + 1]]) for k in range(4)]
    run = write_run(tmp_path / "runs", "mas", R, reg={"name": "mas"}, curves=pts,
                    diagnostics=[{"memory_bytes": {"importance": 4000}}])
    monkeypatch.setitem(figs.ALL, "R_heatmaps", boom)  # the first figure of `clrl report`'s R and curves
    rep = build_report([tmp_path / "runs"], out=tmp_path / "rep", reps=REPS, formats=("png",))
    made = {p.name for p in rep.files}
    assert {"plasticity_stability.png", "memory.png", "eval_curves.png", "report.md"} <= made
    assert "R_heatmaps.png" not in made
    err = [line for line in capsys.readouterr().err.splitlines() if "failed" in line]
    assert len(err) == 1 and err[0].startswith("clrl: warning: figure R_heatmaps: failed (RuntimeError: boom)"), err
    (fail,) = [s for s in rep.skipped if s.startswith("R_heatmaps:")]
    assert f"not drawn: {fail}" in (tmp_path / "rep" / "report.md").read_text()

    # `clrl run`'s figures: the R heatmap fails, the eval curves are still drawn
    monkeypatch.setattr(figs, "r_heatmaps", boom)
    assert {p.name for p in single_run_report(run)} == {"eval_curves.png", "eval_curves.pdf"}
    assert "figure R: failed (RuntimeError: boom)" in capsys.readouterr().err
