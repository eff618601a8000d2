"""`clrl report`'s analysis figures and the per-task forgetting they plot, on hand-made results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clrl import metrics
from clrl.report.analysis_figures import (
    dormant_rank,
    drift_forgetting,
    layer_mean,
    task_drift,
    task_overlap,
)
from clrl.report.figures import make_figures
from clrl.report.runs import RunRecord, group_runs
from clrl.results import CurvePoint, new_results, save_results


def test_forgetting_per_task_hand_worked():
    R = [[0.9, None, None], [0.5, 0.8, None], [0.6, 0.4, 1.0]]
    f = metrics.forgetting_per_task(R)
    assert f.tolist() == pytest.approx([0.9 - 0.6, 0.8 - 0.4])
    assert metrics.forgetting(R) == pytest.approx(np.mean(f))
    assert np.isnan(metrics.forgetting_per_task([[1.0, None], [None, 1.0]])[0])


def _entry(j: int, drift: float | None, dormant: float, rank: int, change: float | None) -> dict:
    layer = {"hoyer": 0.5, "dead": 0.0, "dormant": dormant, "drift": drift}
    return {"task": j, "n": 8, "reference": drift is not None, "layers": {"fc1": layer, "fc2": dict(layer)},
            "features": {"hoyer": 0.5, "dead": 0.0, "dormant": dormant, "effective_rank": rank, "feature_change": change}}


def _run(folder: Path, reg: str, seed: int, drift_scale: float) -> Path:
    res = new_results("supervised", f"r_{reg}", seed, {"regularizer": {"name": reg}, "seed": seed}, ["a", "b", "c"])
    res.R = [[0.9, 0.5, 0.5], [0.9 - drift_scale, 0.9, 0.5], [0.9 - 2 * drift_scale, 0.9 - drift_scale, 0.9]]
    for step, t in [(1, 0), (2, 1), (3, 2)]:
        tasks = [_entry(j, drift_scale * (t - j), 0.1 * t, 5 + t, drift_scale) for j in range(t + 1)]
        overlap = {"tasks": list(range(t + 1)), "all": np.eye(t + 1).tolist(), "layers": {}}
        res.curves.append(CurvePoint(step=step, task=t, scores=[0.9] * (t + 1),
                                     analysis={"tau": 0.025, "delta": 0.01, "seconds": 0.0, "tasks": tasks, "overlap": overlap}))
    res.status = "complete"
    path = folder / f"{reg}_{seed}"
    path.mkdir(parents=True)
    save_results(path / "results.json", res)
    return path


def test_task_drift_reads_the_last_point(tmp_path):
    path = _run(tmp_path, "none", 0, 0.2)
    from clrl.results import load_results

    rec = RunRecord(path, load_results(path), None)
    d, f = task_drift(rec)
    assert d.tolist() == pytest.approx([0.4, 0.2, 0.0])
    assert f.tolist() == pytest.approx([0.2, 0.2, 0.2])
    assert layer_mean(rec.res.curves[0].analysis["tasks"][0], "dormant") == 0.0


def test_analysis_figures_are_drawn_and_in_the_report(tmp_path):
    paths = [_run(tmp_path / "runs", reg, s, scale) for reg, scale in (("none", 0.2), ("agscl", 0.0)) for s in (0, 1)]
    from clrl.report.runs import load_runs

    groups = group_runs(load_runs(paths))
    out = tmp_path / "figs"
    for fn in (drift_forgetting, dormant_rank, task_overlap):
        files = fn(groups, out, formats=("png",))
        assert files and all(p.is_file() and p.stat().st_size > 1000 for p in files)
    wanted = ["drift_forgetting", "dormant_rank", "task_overlap"]
    made = make_figures(groups, tmp_path / "report", formats=("png",), which=wanted)  # what `clrl report` calls
    assert sorted(p.stem for p in made) == sorted(wanted)


def test_analysis_figures_skip_runs_without_analysis(tmp_path):
    res = new_results("supervised", "plain", 0, {"regularizer": {"name": "none"}}, ["a", "b"])
    res.R = [[1.0, 0.5], [0.5, 1.0]]
    res.curves.append(CurvePoint(step=1, task=0, scores=[1.0]))
    path = tmp_path / "plain"
    path.mkdir()
    save_results(path / "results.json", res)
    from clrl.report.runs import load_runs

    groups = group_runs(load_runs([path]))
    skipped: list[str] = []
    for fn in (drift_forgetting, dormant_rank, task_overlap):
        assert fn(groups, tmp_path / "f", skipped=skipped) == []
    assert len(skipped) == 3


def test_analysis_figures_with_nothing_finite_are_not_drawn_and_say_why(tmp_path):
    """No dormant share, no effective rank, no tau and NaN-only overlaps: those figures are left
    out with a reason (an empty dormant/rank plot, or a TypeError on the missing tau, before);
    the drift figure, whose values are finite, is still drawn."""
    path = _run(tmp_path / "runs", "none", 0, 0.2)
    from clrl.report.runs import load_runs
    from clrl.results import load_results

    res = load_results(path)
    for p in res.curves:
        p.analysis["tau"] = None
        p.analysis["overlap"]["all"] = np.full((p.task + 1, p.task + 1), np.nan).tolist()
        for e in p.analysis["tasks"]:
            e["features"]["effective_rank"] = None
            for layer in e["layers"].values():
                layer["dormant"] = None
    save_results(path / "results.json", res)
    groups = group_runs(load_runs([path]))
    skipped: list[str] = []
    made = make_figures(groups, tmp_path / "f", formats=("png",), skipped=skipped,
                        which=["drift_forgetting", "dormant_rank", "task_overlap"])
    assert [p.stem for p in made] == ["drift_forgetting"]
    assert [s.split(":")[0] for s in skipped] == ["dormant_rank", "task_overlap"]
    assert "no finite" in skipped[0] and "finite entry" in skipped[1]
