"""results.json: schema round trip, atomic writes, clear errors on corrupt or foreign files."""

import json
import math
import os

import numpy as np
import pytest

from clrl import metrics
from clrl.errors import ResultsError
from clrl.results import (
    CurvePoint,
    Reference,
    compute_metrics,
    load_results,
    new_results,
    save_results,
)


def sample(tasks=("A", "B", "C")):
    res = new_results("rl", "demo", 7, {"name": "demo"}, list(tasks))
    res.R[0][0] = 1.0
    res.R[1][:2] = [0.5, 2.0]
    res.curves.append(CurvePoint(step=100, task=0, scores=[1.0]))
    res.curves.append(CurvePoint(step=200, task=1, scores=[0.5, 2.0]))
    res.diagnostics.append({"sparsity": 0.25})
    return res


def test_round_trip(tmp_path):
    res = sample()
    path = tmp_path / "results.json"
    save_results(path, res)
    back = load_results(tmp_path)  # a run directory works too
    assert back.R == res.R and back.curves == res.curves and back.seed == 7
    assert back.versions["torch"] and back.status == "running"
    assert back.tasks_done() == 2


def test_nan_is_written_as_null(tmp_path):
    res = sample()
    res.metrics = {"acc": float("nan"), "curve": np.array([1.0, np.inf])}
    save_results(tmp_path / "results.json", res)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["metrics"] == {"acc": None, "curve": [1.0, None]}


def test_truncated_file_gives_clear_error(tmp_path):
    path = tmp_path / "results.json"
    save_results(path, sample())
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(ResultsError, match=r"results.json: corrupt JSON.*truncated"):
        load_results(path)


def test_foreign_and_wrong_version_files(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ResultsError, match="not a clrl results file"):
        load_results(path)
    data = json.loads(sample().model_dump_json(by_alias=True))
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ResultsError, match="schema version 99"):
        load_results(path)
    data["schema_version"] = 1
    data["R"] = [[1.0]]
    path.write_text(json.dumps(data))
    with pytest.raises(ResultsError, match="invalid results file"):
        load_results(path)
    with pytest.raises(ResultsError, match="no results file"):
        load_results(tmp_path / "nowhere")


def test_atomic_write_leaves_no_temp_files(tmp_path):
    save_results(tmp_path / "results.json", sample())
    save_results(tmp_path / "results.json", sample())
    assert os.listdir(tmp_path) == ["results.json"]


def test_compute_metrics_uses_reference_and_baseline():
    res = sample(("A", "B"))
    res.R[1] = [0.5, 2.0]
    res.baseline = [0.1, 0.2]
    res.reference = Reference(run="ref", max_scores=[2.0, 4.0], diag=[1.0, 4.0])
    out = compute_metrics(res)
    R = res.R_matrix()
    assert out["acc"] == pytest.approx(metrics.acc(R))
    assert out["plasticity"] == pytest.approx((1.0 / 1.0 + 2.0 / 4.0) / 2)
    assert out["accumulated_normalized_reward"] == pytest.approx([0.5, 0.25 + 0.5])
    assert out["normalized_R"][1] == pytest.approx([0.25, 0.5])
    assert out["fwt"] is None  # R[0][1] was not evaluated
    assert not any(isinstance(v, float) and math.isnan(v) for v in out.values())


def test_printed_summary_shows_r_baseline_and_metrics():
    from rich.console import Console

    from clrl.summary import print_summary

    res = sample(("A", "B"))
    res.R[1] = [0.5, 2000.0]
    res.baseline = [0.125, 0.25]
    res.metrics = compute_metrics(res)
    console = Console(width=200, record=True)
    print_summary(res, console)
    text = console.export_text()
    assert "untrained" in text and "0.125" in text and "2,000.0" in text
    assert "ACC" in text and "1,000.2" in text  # (0.5 + 2000) / 2
