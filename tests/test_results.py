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


# --------------------------------------------------------------------------- per-game records


def _with_games(res):
    from clrl.results import GameRecord

    g = [GameRecord(score=1.0, frames=400, truncated=False), GameRecord(score=3.0, frames=5000, truncated=True)]
    T = len(res.tasks)
    res.R_games = [[None] * T for _ in range(T)]
    res.R_ci = [[None] * T for _ in range(T)]
    res.R_games[0][0] = g
    res.R_ci[0][0] = [1.0, 3.0]
    res.curves[0].games = [g]
    res.curves[0].ci = [[1.0, 3.0]]
    res.baseline = [0.0] * T
    res.baseline_games = [[GameRecord(score=0.0, frames=40, truncated=False)]] * T
    res.baseline_ci = [[0.0, 0.0]] * T
    return res


def test_game_records_round_trip_and_old_files_still_load(tmp_path):
    res = _with_games(sample())
    save_results(tmp_path / "r.json", res)
    back = load_results(tmp_path / "r.json")
    assert back.R_games[0][0][1].truncated is True and back.R_games[0][0][1].frames == 5000
    assert back.R_ci[0][0] == [1.0, 3.0] and back.R_ci[1][1] is None
    assert back.curves[0].games[0][0].score == 1.0 and back.curves[1].games is None
    data = json.loads((tmp_path / "r.json").read_text())
    for key in ("R_games", "R_ci", "baseline_games", "baseline_ci"):
        data.pop(key)
    for p in data["curves"]:
        p.pop("games"), p.pop("ci")
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = load_results(tmp_path / "old.json")  # a file written before per-game records
    assert old.R_games is None and old.curves[0].ci is None and old.R == back.R


def test_game_records_are_validated(tmp_path):
    res = _with_games(sample())
    data = json.loads(json.dumps(res.model_dump(by_alias=True)))
    bad = json.loads(json.dumps(data))
    bad["R_ci"] = bad["R_ci"][:2]
    (tmp_path / "a.json").write_text(json.dumps(bad))
    with pytest.raises(ResultsError, match="R_ci must be 3 x 3"):
        load_results(tmp_path / "a.json")
    bad = json.loads(json.dumps(data))
    bad["R_games"][0][0][0].pop("frames")
    (tmp_path / "b.json").write_text(json.dumps(bad))
    with pytest.raises(ResultsError, match="frames"):
        load_results(tmp_path / "b.json")
    bad = json.loads(json.dumps(data))
    bad["R_ci"][0][0] = [1.0]
    (tmp_path / "c.json").write_text(json.dumps(bad))
    with pytest.raises(ResultsError, match="R_ci"):
        load_results(tmp_path / "c.json")


def test_summary_shows_half_width_and_marks_the_frame_cap():
    from rich.console import Console

    from clrl.summary import print_summary

    res = _with_games(sample(("A", "B")))
    res.config = {"eval": {"max_frames": 5000}}
    console = Console(width=200, record=True)
    print_summary(res, console)
    text = " ".join(console.export_text().split())  # the caption wraps
    assert "1.0 ± 1.0*" in text  # mean 1.0 (R[0][0]), interval [1, 3], one game capped
    assert "0.0 ± 0.0" in text and "0.0 ± 0.0*" not in text
    assert "0.500" in text  # an entry without records keeps its plain format
    assert "a game hit the frame cap (5000 frames)" in text
    assert "95% bootstrap interval" in text
    plain = sample(("A", "B"))  # no records (a supervised run): no ± and no caption
    console = Console(width=200, record=True)
    print_summary(plain, console)
    assert "±" not in console.export_text() and "frame cap" not in console.export_text()


# --------------------------------------------------------------------------- comparable references


def _ref_file(tmp_path, status="complete", **eval_changes):
    from clrl.results import reference_from_run  # noqa: F401 - imported where it is used below

    res = sample(("A", "B"))
    res.R[1][1] = 4.0
    res.status = status
    res.reason = "interrupted (SIGINT)" if status == "failed" else None
    ev = {"episodes": 10, "deterministic": True, "max_frames": 27000, **eval_changes}
    res.config = {"tasks": {"games": ["A", "B"]}, "eval": ev}
    d = tmp_path / f"ref_{status}_{len(eval_changes)}"
    d.mkdir(exist_ok=True)
    save_results(d / "results.json", res)
    return d


MINE = {"tasks": {"games": ["A", "B"]}, "eval": {"episodes": 10, "deterministic": True, "max_frames": 27000}}


def test_a_comparable_finished_reference_is_accepted(tmp_path):
    from clrl.results import reference_from_run

    ref = reference_from_run(_ref_file(tmp_path), ["A", "B"], config=MINE)
    assert ref.diag == [1.0, 4.0]


@pytest.mark.parametrize(
    ("changes", "key", "theirs", "mine"),
    [
        ({"episodes": 30}, "eval.episodes", "30", "10"),
        ({"deterministic": False}, "eval.deterministic", "False", "True"),
        ({"max_frames": 108000}, "eval.max_frames", "108000", "27000"),
    ],
)
def test_an_incomparable_reference_is_refused_naming_key_and_values(tmp_path, changes, key, theirs, mine):
    from clrl.errors import ConfigError
    from clrl.results import reference_from_run

    with pytest.raises(ConfigError) as exc:
        reference_from_run(_ref_file(tmp_path, **changes), ["A", "B"], config=MINE)
    msg = str(exc.value)
    assert key in msg and f"is {theirs} there but {mine} in this run" in msg


def test_reference_with_other_games_or_unfinished_is_refused(tmp_path):
    from clrl.errors import ConfigError
    from clrl.results import reference_from_run

    other = {**MINE, "tasks": {"games": ["A", "C"]}}
    with pytest.raises((ConfigError, ResultsError), match="tasks"):
        reference_from_run(_ref_file(tmp_path), ["A", "C"], config=other)
    with pytest.raises(ConfigError, match=r"not a finished run \(status running, 2 of 2 tasks done\)"):
        reference_from_run(_ref_file(tmp_path, status="running"), ["A", "B"], config=MINE)
    with pytest.raises(ConfigError, match="status failed.*interrupted"):
        reference_from_run(_ref_file(tmp_path, status="failed"), ["A", "B"], config=MINE)
    # without a config (a report over finished runs) the old, lenient reading stays
    assert reference_from_run(_ref_file(tmp_path, status="running"), ["A", "B"]).diag[0] == 1.0


def test_a_reference_of_the_other_kind_is_named_as_such(tmp_path):
    from clrl.errors import ConfigError
    from clrl.results import reference_from_run

    save_results(tmp_path / "results.json", sample())  # an Atari (rl) run
    assert reference_from_run(tmp_path, ["A", "B", "C"], kind="rl").run == str(tmp_path)
    with pytest.raises(ConfigError, match="is an Atari .* but this run is .*supervised"):
        reference_from_run(tmp_path, ["A", "B", "C"], kind="supervised")
