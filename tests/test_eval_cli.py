"""`clrl eval RUN_DIR`: scores from a checkpoint, JSON, videos, progress and bad input; and the
per-game records a real (tiny) run writes to results.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from clrl import cli
from clrl.config import config_from_dict
from clrl.metrics import bootstrap_ci
from clrl.results import load_results
from clrl.rl.runner import run_experiment
from clrl.rundir import prepare_run_dir

GAMES = ["DemonAttack", "Asterix"]
TINY = {
    "name": "tiny_eval",
    "kind": "rl",
    "seed": 0,
    "device": "cpu",
    "tasks": {"games": GAMES, "steps_per_task": 32},
    "model": {"channels": [8, 16, 16], "hidden": 32},
    "train": {"n_envs": 2, "n_steps": 16, "n_minibatches": 2, "n_epochs": 1, "consolidation_samples": 32,
              "torch_threads": 1},
    "eval": {"every_steps": 1000, "episodes": 2, "n_envs": 2, "max_frames": 200, "deterministic": False,
             "baseline": True},
    "output": {"progress": False, "tensorboard": False, "figures": False},
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    before = torch.get_num_threads()
    cfg = config_from_dict(TINY)
    rd = prepare_run_dir(cfg, out=tmp_path_factory.mktemp("evalcli") / "run")
    res = run_experiment(cfg, rd)
    torch.set_num_threads(before)
    assert res.status == "complete"
    return rd


def test_results_json_keeps_every_game_and_its_interval(tiny_run):
    res = load_results(tiny_run.root)
    for i in range(2):
        for j in range(2):
            if res.R[i][j] is None:
                assert res.R_games[i][j] is None and res.R_ci[i][j] is None
                continue
            scores = [g.score for g in res.R_games[i][j]]
            assert len(scores) == 2 and res.R[i][j] == pytest.approx(np.mean(scores))
            assert res.R_ci[i][j] == list(bootstrap_ci(scores, seed=0))
            assert all(g.frames % 4 == 0 and 0 < g.frames <= 200 for g in res.R_games[i][j])
    for p in res.curves:
        assert len(p.games) == len(p.ci) == len(p.scores) == p.task + 1
        assert p.scores == pytest.approx([np.mean([g.score for g in gs]) for gs in p.games])
    assert len(res.baseline_games) == len(res.baseline_ci) == 2
    assert res.baseline == pytest.approx([np.mean([g.score for g in gs]) for gs in res.baseline_games])
    # a 200-frame cap ends games long before the game does: every game is marked
    assert all(g.truncated == (g.frames == 200) for gs in res.baseline_games for g in gs)


def _eval(*argv: str) -> int:
    return cli.main(["eval", *argv])


def test_clrl_eval_prints_every_game_and_writes_json_and_videos(tiny_run, tmp_path, capsys):
    out = tmp_path / "out" / "eval.json"
    videos = tmp_path / "videos"
    assert _eval(str(tiny_run.root), "--episodes", "2", "--max-frames", "120", "--sample",
                 "--json", str(out), "--video", str(videos)) == 0
    text = capsys.readouterr().out
    assert "DemonAttack" in text and "Asterix" in text and "±" in text
    doc = json.loads(out.read_text())
    assert doc["episodes"] == 2 and doc["max_frames"] == 120 and doc["deterministic"] is False
    assert [e["game"] for e in doc["results"]] == GAMES
    for e in doc["results"]:
        scores = [g["score"] for g in e["games"]]
        assert len(e["games"]) == 2 and e["mean"] == pytest.approx(np.mean(scores))
        assert e["ci"] == list(bootstrap_ci(scores, seed=0))
        assert all(g["frames"] == 120 and g["truncated"] for g in e["games"])
    import imageio.v3 as iio

    # the first env's first game: 30 agent steps to the cap, plus the first observation; in
    # DemonAttack (action 1 is FIRE) two of them are the FIRE reset, which the learner never sees
    learner_frames = {"DemonAttack": 29, "Asterix": 31}
    for game in GAMES:
        frames = iio.imread(videos / f"{game}.mp4")
        assert frames.shape == (learner_frames[game], 336, 336, 3)
    # same seed, same numbers; another seed, other games
    again = tmp_path / "again.json"
    assert _eval(str(tiny_run.root), "--episodes", "2", "--max-frames", "120", "--sample", "--json", str(again)) == 0
    assert json.loads(again.read_text())["results"] == doc["results"]


def test_clrl_eval_one_game_deterministic_defaults_from_the_run(tiny_run, tmp_path):
    out = tmp_path / "e.json"
    assert _eval(str(tiny_run.root), "--game", "asterix", "--deterministic", "--json", str(out),
                 "--checkpoint", str(tiny_run.task_checkpoint(1))) == 0
    doc = json.loads(out.read_text())
    assert [e["game"] for e in doc["results"]] == ["Asterix"]
    assert doc["deterministic"] is True and doc["max_frames"] == 200 and doc["episodes"] == 2


def _nothing_written(tmp_path: Path) -> bool:
    return not (tmp_path / "x.json").exists() and not (tmp_path / "v").exists()


def test_clrl_eval_bad_input_exits_2_and_writes_nothing(tiny_run, tmp_path, capsys):
    w = ["--json", str(tmp_path / "x.json"), "--video", str(tmp_path / "v")]
    assert _eval(str(tmp_path / "nowhere"), *w) == 2
    assert "no such run directory" in capsys.readouterr().err
    corrupt = tmp_path / "bad.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    assert _eval(str(tiny_run.root), "--checkpoint", str(corrupt), *w) == 2
    assert "bad.pt" in capsys.readouterr().err
    assert _eval(str(tiny_run.root), "--game", "Pong", *w) == 2
    err = capsys.readouterr().err
    assert "no head for Pong" in err and "DemonAttack, Asterix" in err
    assert _eval(str(tiny_run.root), "--game", "Pongg", *w) == 2
    assert "unknown Atari game 'Pongg'" in capsys.readouterr().err
    # the checkpoint taken before task 1 began has only task 0's head
    assert _eval(str(tiny_run.root), "--checkpoint", str(tiny_run.task_checkpoint(0)), "--game", "Asterix", *w) == 2
    assert "it has heads for: DemonAttack" in capsys.readouterr().err
    assert _eval(str(tiny_run.root), "--episodes", "0", *w) == 2
    assert "--episodes must be at least 1" in capsys.readouterr().err
    assert _nothing_written(tmp_path)


def test_clrl_eval_refuses_a_checkpoint_of_another_run(tiny_run, tmp_path, capsys):
    """Heads are matched to games by task index: another run's checkpoint (another game order, a
    head of another size, another network) would score one game's head on another game."""
    from clrl.rl import checkpoint as ckpt

    w = ["--json", str(tmp_path / "x.json"), "--video", str(tmp_path / "v")]

    def variant(name: str, change) -> str:  # noqa: ANN001
        state = ckpt.read(tiny_run.latest_checkpoint)
        doc = json.loads(state["results"])
        change(state, doc)
        state["results"] = json.dumps(doc)
        path = tmp_path / f"{name}.pt"
        ckpt.write(path, state)
        return str(path)

    def reversed_games(state, doc):  # noqa: ANN001
        doc["config"]["tasks"]["games"] = GAMES[::-1]

    def other_head(state, doc):  # noqa: ANN001
        state["heads"][0] = state["heads"][0] + 1

    def other_net(state, doc):  # noqa: ANN001
        doc["config"]["model"]["hidden"] = 64

    for name, change, words in [("order", reversed_games, "tasks.games was ['Asterix', 'DemonAttack']"),
                                ("head", other_head, "task 0 (DemonAttack) has a head of"),
                                ("net", other_net, "model.hidden was 64, now 32")]:
        assert _eval(str(tiny_run.root), "--checkpoint", variant(name, change), *w) == 2, name
        err = capsys.readouterr().err
        assert words in err and "pass a checkpoint of this run" in err, err
    assert _eval(str(tiny_run.root), "--checkpoint", variant("same", lambda s, d: None), "--episodes", "1",
                 "--max-frames", "40") == 0
    assert _nothing_written(tmp_path)


def test_clrl_eval_output_paths_are_checked_before_playing(tiny_run, tmp_path, capsys, monkeypatch):
    import clrl.rl.evaluation as evaluation

    played = []
    monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: played.append(1))
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    assert _eval(str(tiny_run.root), "--json", str(a_file / "out.json")) == 2
    assert "afile is a file, not a directory" in capsys.readouterr().err
    assert _eval(str(tiny_run.root), "--json", str(tmp_path / "out.json"), "--video", str(a_file / "v")) == 2
    assert "--video" in capsys.readouterr().err
    assert _eval(str(tiny_run.root), "--video", str(a_file)) == 2  # the folder named is a file
    assert "afile is a file, not a directory" in capsys.readouterr().err
    assert not played and not (tmp_path / "out.json").exists()


def test_a_reference_evaluated_otherwise_is_refused_by_clrl_run(tiny_run, tmp_path, capsys):
    data = json.loads(json.dumps(TINY))
    data["reference"] = str(tiny_run.root)
    data["eval"]["max_frames"] = 300
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    assert cli.main(["run", str(path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "eval.max_frames is 200 there but 300 in this run" in err


def test_report_curves_show_the_per_game_interval_of_a_single_run(tiny_run, tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from clrl.report import figures, scores
    from clrl.report.runs import group_runs, load_runs

    records = load_runs([tiny_run.root])
    lo, hi = scores.curve_interval(records[0])
    res = records[0].res
    for k, p in enumerate(res.curves):
        for j, ci in enumerate(p.ci):
            assert [lo[k, j], hi[k, j]] == ci  # recomputed from the games = what the run stored
        assert np.isnan(lo[k, len(p.ci):]).all()
    bands = []
    real = Axes.fill_between

    def spy(self, x, y1, y2=0, *a, **kw):  # noqa: ANN001, ANN002, ANN003
        bands.append((np.asarray(y1, dtype=float), np.asarray(y2, dtype=float)))
        return real(self, x, y1, y2, *a, **kw)

    monkeypatch.setattr(Axes, "fill_between", spy)
    paths = figures.eval_curves(group_runs(records), tmp_path, formats=("png",))
    assert [p.name for p in paths] == ["eval_curves.png"]
    want_lo = lo[:, 0][np.isfinite(lo[:, 0])]
    assert any(b[0].shape == want_lo.shape and np.array_equal(b[0], want_lo) for b in bands)


def test_tables_sent_to_a_file_are_not_cut(monkeypatch):
    """Redirected output (a log, ``| tee``): rich would assume 80 columns and cut the wider eval
    table's cells to '…'; clrl's table console is as wide as the table there."""
    import io

    from clrl.rl.eval_cli import _table
    from clrl.summary import table_console

    monkeypatch.delenv("COLUMNS", raising=False)
    entries = [{"task": 0, "game": "ChopperCommand", "mean": 12345.56, "ci": (11111.1, 13579.9),
                "episodes": 16, "truncated": 3}]
    out = io.StringIO()
    table_console(file=out).print(_table(entries, "clrl eval runs/atari_quick"))
    text = out.getvalue()
    assert "…" not in text
    for cell in ("ChopperCommand", "12,345.6 ± 1,234.4", "[11,111.1, 13,579.9]", "capped"):
        assert cell in text
    monkeypatch.setenv("COLUMNS", "60")  # the user's own width is kept
    narrow = io.StringIO()
    table_console(file=narrow).print(_table(entries, "t"))
    assert max(map(len, narrow.getvalue().splitlines())) <= 60
