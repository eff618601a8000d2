"""The Atari forgetting experiment (issue 18): config expansion, metrics and intervals against hand
computations, the conclusion read off the intervals, the page and figure writers on a tiny real
experiment and on hand-made results, resuming, and --render from committed-style data."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from clrl.errors import ConfigError, ResultsError, UserError
from clrl.experiments import atari_forgetting as af
from clrl.experiments import forgetting_data as fd
from clrl.experiments import forgetting_stats as fs
from clrl.experiments.forgetting_summary import summarize
from clrl.sweep import expand

REPO = Path(__file__).resolve().parent.parent
SWEEP = REPO / "configs" / "sweep_atari_forgetting.yaml"

TINY_SET = {  # 2 games, 2 PPO updates of 2 envs x 16 steps each, one capped evaluation game
    "device": "cpu",
    "tasks.games": ["DemonAttack", "Asterix"],  # a sampling untrained net scores > 0 within 200 frames
    "tasks.steps_per_task": 64,
    "model.channels": [8, 16, 16],
    "model.hidden": 32,
    "train.n_envs": 2,
    "train.n_steps": 16,
    "train.n_minibatches": 2,
    "train.n_epochs": 1,
    "train.consolidation_samples": 32,
    "train.checkpoint_every_updates": 2,
    "eval.every_steps": 64,  # only the end-of-task evaluations
    "eval.episodes": 1,
    "eval.n_envs": 1,
    "eval.max_frames": 200,
    "output.progress": False,
    "output.tensorboard": False,
    "output.figures": False,
}


def tiny_sweep(folder: Path, methods: dict, seeds: list[int]) -> Path:
    """A sweep over the shipped base config with the tiny settings."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny_forgetting", "base": str(REPO / "configs" / "atari_forgetting.yaml"),
                                    "seeds": seeds, "set": TINY_SET, "methods": methods}, sort_keys=False))
    return path


# --------------------------------------------------------------------------- the shipped configs


def test_shipped_sweep_expands_to_methods_x_seeds_with_references(tmp_path):
    plan = expand(SWEEP, out=tmp_path / "out")
    assert len(plan.trials) == 12
    assert [t.name for t in plan.trials[:3]] == ["finetune-seed=0", "finetune-seed=1", "finetune-seed=2"]
    assert all(t.is_reference and t.config["reference"] is None for t in plan.trials[:3])
    assert {(t.method, t.seed) for t in plan.trials} == {
        (m, s) for m in ("finetune", "ewc", "mas", "agscl") for s in (0, 1, 2)}
    for t in plan.trials[3:]:
        assert t.reference == f"finetune-seed={t.seed}"
        assert t.config["reference"] == str(plan.out / f"finetune-seed={t.seed}")
        assert t.config["regularizer"]["name"] == t.method
    # one setting: only the method, the seed and the wiring differ between trials
    settings = {json.dumps(fd.setting_of(t.config), sort_keys=True) for t in plan.trials}
    assert len(settings) == 1
    cfg = plan.trials[0].config
    assert cfg["train"]["deterministic"] is True and cfg["eval"]["baseline"] is True
    assert cfg["model"]["channels"] == [16, 32, 32] and cfg["model"]["hidden"] == 256
    assert (cfg["train"]["n_envs"], cfg["train"]["n_steps"]) == (8, 128)
    assert len(cfg["tasks"]["games"]) == 2
    # --set reaches every trial (the lead's pilots change games and budget this way)
    small = expand(SWEEP, out=tmp_path / "o2", overrides=["tasks.steps_per_task=1024", "tasks.games=[Boxing, Pong]"])
    assert {t.config["tasks"]["steps_per_task"] for t in small.trials} == {1024}
    assert {tuple(t.config["tasks"]["games"]) for t in small.trials} == {("Boxing", "Pong")}


def test_hyperparameters_are_the_paper_grids(tmp_path):
    """The sweep's comment says the methods use sweep_atari_paper.yaml's hyperparameters: keep it true."""
    ours = {t.method: t.config["regularizer"] for t in expand(SWEEP, out=tmp_path / "a").trials if t.seed == 0}
    paper = {t.method: t.config["regularizer"]
             for t in expand(REPO / "configs" / "sweep_atari_paper.yaml", out=tmp_path / "b").trials if t.seed == 0}
    for method in ("ewc", "mas", "agscl"):
        a, b = dict(ours[method]), dict(paper[method])
        a.pop("max_samples", None), b.pop("max_samples", None)  # 1,024 consolidation states here, 2,560 there
        # the paper grid clips EWC/MAS penalties with the task gradient as the authors' code does;
        # this experiment keeps clrl's default (penalty added after clipping), its comment says so
        assert not a.pop("penalty_clipped", False)
        b.pop("penalty_clipped", None)
        assert a == b, method
    assert ours["ewc"]["max_samples"] == ours["mas"]["max_samples"] == 1024


def test_trial_folders_under_docs_data(tmp_path):
    plan = expand(SWEEP, out=tmp_path / "out")
    assert {af._data_method(t) for t in plan.trials} == {"finetune", "ewc", "mas", "agscl"}


def test_shipped_pilots_load_and_typos_are_errors(tmp_path):
    shipped = fd.load_pilots(REPO / "docs" / fd.DATA_SUBDIR / fd.PILOTS_FILE)
    assert shipped.pilots and all(p.name and p.outcome for p in shipped.pilots)
    assert isinstance(shipped.discussion, str) and shipped.discussion
    bad = tmp_path / "pilots.yaml"
    bad.write_text("pilots:\n  - name: a\n    outcome: b\n    step_per_task: 5\n")
    with pytest.raises(ConfigError, match="step_per_task"):
        fd.load_pilots(bad)
    assert fd.load_pilots(tmp_path / "absent.yaml").pilots == []


# --------------------------------------------------------------------------- numbers


def make_run(R, curves, method="finetune", seed=0, reg="none", baseline=None) -> fd.RunData:
    R = np.array(R, dtype=float)
    return fd.RunData(method=method, seed=seed, path=Path(f"{method}/seed{seed}/results.json"),
                      tasks=[f"g{j}" for j in range(len(R))], R=R,
                      curve_steps=np.array([c[0] for c in curves]), curve_tasks=np.array([c[1] for c in curves]),
                      curve_scores=[c[2] for c in curves],
                      baseline=None if baseline is None else np.array(baseline, dtype=float),
                      config={"regularizer": {"name": reg}}, status="complete", wall_seconds=1.0)


def test_run_metrics_against_a_hand_worked_example():
    nan = float("nan")
    ref = make_run([[5, nan], [8, 10]], [(1, 0, [2.0]), (2, 0, [5.0]), (3, 1, [8.0, 12.0]), (4, 1, [8.0, 10.0])])
    run = make_run([[10, nan], [4, 20]], [(1, 0, [3.0]), (2, 0, [10.0]), (3, 1, [6.0, 15.0]), (4, 1, [4.0, 20.0])],
                   method="ewc", reg="ewc")
    m = fs.run_metrics(run, ref)
    assert m["acc"] == pytest.approx(12.0)  # (4 + 20) / 2
    assert m["forgetting"] == pytest.approx(6.0)  # max(10) - 4
    assert m["bwt"] == pytest.approx(-6.0)
    assert m["first_drop"] == pytest.approx(6.0)
    assert m["plasticity"] == pytest.approx((10 / 5 + 20 / 10) / 2)
    assert m["stability"] == pytest.approx((4 / 10 + 1.0) / 2)
    # reference maxima over its curve: game 0 max(2, 5, 8, 8) = 8, game 1 max(12, 10) = 12
    assert m["norm_reward"] == pytest.approx(4 / 8 + 20 / 12)
    steps, curve = fs.normalized_curve(run, ref)
    assert steps.tolist() == [1, 2, 3, 4]
    assert curve == pytest.approx([3 / 8, 10 / 8, 6 / 8 + 15 / 12, 4 / 8 + 20 / 12])
    assert fs.first_game_curve(run)[1].tolist() == [3.0, 10.0, 6.0, 4.0]
    assert fs.run_metrics(ref, ref)["plasticity"] == 1.0
    one = make_run([[7.0]], [(1, 0, [7.0])])
    single = fs.run_metrics(one, one)  # one game: nothing came after it, so nothing dropped
    assert np.isnan(single["first_drop"]) and np.isnan(single["forgetting"])


def test_interval_closed_forms():
    iv = fs.interval([2.0, 2.0, 2.0])
    assert (iv.point, iv.lo, iv.hi, iv.n) == (2.0, 2.0, 2.0, 3)
    two = fs.interval([1.0, 3.0])  # IQM shown, but no interval from two seeds
    assert two.point == 2.0 and math.isnan(two.lo) and two.side() == "undefined"
    assert fs.interval([1.0, float("nan"), 3.0]).side() == "undefined"
    # IQM of 3 values trims nothing: the mean; the interval spans the resampled means' percentiles
    iv = fs.interval([0.0, 0.0, 3.0], reps=2000)
    assert iv.point == pytest.approx(1.0)
    # P(mean of 3 draws = 0) = 8/27 > 2.5% and P(= 3) = 1/27 > 2.5%: the 95% interval is [0, 3]
    assert (iv.lo, iv.hi) == pytest.approx((0.0, 3.0))


@pytest.mark.parametrize("use_rliable", [True, False])
def test_difference_interval_closed_forms(use_rliable):
    d = fs.difference([1.0, 1.0, 1.0], [0.0, 0.0, 0.0], reps=300, use_rliable=use_rliable)
    assert (d.point, d.lo, d.hi) == (1.0, 1.0, 1.0) and d.side() == "above"
    d = fs.difference([0.0, 0.0, 3.0], [0.0, 0.0, 0.0], reps=2000, use_rliable=use_rliable)
    assert d.point == pytest.approx(1.0) and (d.lo, d.hi) == pytest.approx((0.0, 3.0))
    d = fs.difference([0.0, 0.0, 0.0], [5.0, 6.0, 7.0], reps=300, use_rliable=use_rliable)
    assert d.point == pytest.approx(-6.0) and d.side() == "below" and -7 <= d.lo <= d.hi <= -5
    assert fs.difference([1.0, 2.0], [0.0, 0.0, 0.0], use_rliable=use_rliable).side() == "undefined"
    same = fs.difference([1.0, 5.0, 9.0], [1.0, 5.0, 9.0], reps=300, seed=3, use_rliable=use_rliable)
    assert same.point == 0.0 and same.lo < 0 < same.hi
    again = fs.difference([1.0, 5.0, 9.0], [1.0, 5.0, 9.0], reps=300, seed=3, use_rliable=use_rliable)
    assert (again.lo, again.hi) == (same.lo, same.hi)  # seeded


def test_learned_needs_non_overlapping_intervals():
    assert fs.learning_sentence(["A", "B"], ["yes", "yes"]).startswith("PPO learns every game")
    text = fs.learning_sentence(["A", "B", "C"], ["no", "yes", "n/a"])
    assert text.startswith("PPO does not clearly learn A:") and "whether PPO learns C cannot be decided" in text
    assert fs.learned(fs.Interval(10, 8, 12, 3), fs.Interval(1, 0, 2, 3)) == "yes"
    assert fs.learned(fs.Interval(10, 2, 12, 3), fs.Interval(1, 0, 2, 3)) == "no"  # touching is overlapping
    assert fs.learned(fs.Interval(10, float("nan"), float("nan"), 2), fs.Interval(1, 0, 2, 3)) == "n/a"
    assert fs.learned(fs.Interval(1, 0, 2, 3), fs.Interval(10, 8, 12, 3)) == "no (below)"
    below = fs.learning_sentence(["A", "B"], ["no (below)", "no"])
    assert "ends A worse than the untrained network" in below and "wholly below" in below
    assert "does not clearly learn B" in below and "overlaps" in below


# --------------------------------------------------------------------------- the conclusion


def I(lo: float, hi: float) -> fs.Interval:  # noqa: E743 - a hand-made interval
    return fs.Interval((lo + hi) / 2, lo, hi, 3)


UNDEF = fs.Interval(float("nan"), float("nan"), float("nan"), 2)


def test_conclusion_sentences_follow_the_intervals():
    lines = fs.conclusion(I(50, 150), I(40, 160), [("EWC", I(-20, 30)), ("MAS", I(-90, -10)), ("AGS-CL", I(5, 80))])
    text = "\n".join(lines)
    assert lines[0].startswith("Fine-tuning forgets:") and "[50.0, 150] that lies above zero" in lines[0]
    assert "drops by 100, interval [40.0, 160] above zero" in lines[1]
    assert "EWC does not forget significantly less than fine-tuning" in text and "[-20.0, 30.0] that includes zero" in text
    assert "MAS forgets significantly more than fine-tuning" in text
    assert "AGS-CL forgets significantly less than fine-tuning" in text and "[5.00, 80.0] above zero" in text
    assert lines[-1] == "In short: AGS-CL forgets significantly less than fine-tuning; EWC and MAS do not."


def test_conclusion_when_fine_tuning_does_not_forget_or_seeds_are_missing():
    lines = fs.conclusion(I(-10, 40), I(-5, 30), [("EWC", I(-1, 1))])
    assert lines[0].startswith("Fine-tuning does not forget measurably") and "includes zero" in lines[0]
    assert "which includes zero" in lines[1]
    assert lines[-1].startswith("In short: no method forgets significantly less")
    assert "does not forget measurably here, so this says little" in lines[-1]
    lines = fs.conclusion(I(-40, -10), UNDEF, [("EWC", UNDEF)])
    assert "lies below zero" in lines[0] and "has no interval" in lines[1]
    assert "EWC cannot be compared with fine-tuning" in lines[2]
    lines = fs.conclusion(UNDEF, UNDEF, [("EWC", I(1, 2)), ("MAS", I(3, 4))])
    assert lines[0].startswith("Whether fine-tuning forgets cannot be decided") and "(2 here)" in lines[0]
    assert lines[-1].startswith("In short: every method (EWC and MAS) forgets significantly less")
    assert fs.conclusion(I(1, 2), I(1, 2), [])[-1].startswith("Under fine-tuning")  # no methods: no summary


def test_conclusion_classifies_every_random_interval_by_its_side_of_zero():
    rng = np.random.default_rng(0)
    for _ in range(200):
        diffs = []
        for k in range(3):
            lo = float(rng.normal(0, 10))
            diffs.append((f"M{k}", I(lo, lo + float(rng.uniform(0, 20)))))
        text = "\n".join(fs.conclusion(I(1, 2), I(1, 2), diffs))
        for label, d in diffs:
            less = f"{label} forgets significantly less" in text
            assert less == (d.lo > 0), (label, d)
            assert (f"{label} forgets significantly more" in text) == (d.hi < 0)


# --------------------------------------------------------------------------- reading the data


def write_results(path: Path, template: dict, **changes) -> None:
    data = copy.deepcopy(template)
    data.update(changes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_load_data_names_missing_and_unlisted_runs_and_refuses_mixed_settings(tmp_path, tiny_experiment):
    template = tiny_experiment["template"]
    data = tmp_path / "data"
    write_results(fd.run_path(data, "finetune", 0), template)
    write_results(fd.run_path(data, "finetune", 1), template, seed=1, R_games=[[None]], R_ci=[[None]])  # extra keys
    runs, notes = fd.load_data(data, [("finetune", 0), ("finetune", 1), ("ewc", 0)])
    assert [(r.method, r.seed) for r in runs] == [("finetune", 0), ("finetune", 1)]
    assert any("ewc/seed0/results.json: missing" in n for n in notes)
    write_results(fd.run_path(data, "old", 3), template, seed=3)
    _, notes = fd.load_data(data, [("finetune", 0), ("finetune", 1)])
    assert any("old/seed3" in n and "left out" in n for n in notes)
    write_results(fd.run_path(data, "running", 0), template, status="running")
    _, notes = fd.load_data(data)
    assert any("status 'running'" in n for n in notes)
    other = copy.deepcopy(template)
    other["config"]["tasks"]["steps_per_task"] = 128
    write_results(fd.run_path(data, "other", 0), other)
    with pytest.raises(UserError, match="steps_per_task"):
        fd.load_data(data)
    shutil.rmtree(data / "other")
    write_results(fd.run_path(data, "moved", 2), template, seed=0)
    with pytest.raises(ResultsError, match="seed 0, but its folder says seed 2"):
        fd.load_data(data)
    (data / "x" / "seed0").mkdir(parents=True)
    (data / "x" / "seed0" / "results.json").write_text('{"schema": "other"}')
    with pytest.raises(ResultsError, match="not a clrl results file"):
        fd.load_run(data / "x" / "seed0" / "results.json", "x")


# --------------------------------------------------------------------------- a tiny real experiment


def run_script(args: list[str]) -> int:
    return af.main(args, root=REPO)


@pytest.fixture(scope="module")
def tiny_experiment(tmp_path_factory):
    """Fine-tuning and EWC, one seed each, on the tiny setting, through the script's main()."""
    folder = tmp_path_factory.mktemp("forgetting")
    sweep = tiny_sweep(folder, {"finetune": {"regularizer.name": "none"},
                                "ewc": {"regularizer.name": "ewc", "regularizer.lamb": 1000,
                                        "regularizer.max_samples": 32}}, seeds=[0])
    docs = folder / "docs"
    args = ["--sweep", str(sweep), "--out", str(folder / "out"), "--docs", str(docs), "--workers", "1",
            "--reps", "200"]
    before = torch.get_num_threads()
    code = run_script(args)
    torch.set_num_threads(before)
    template = json.loads((docs / fd.DATA_SUBDIR / "finetune" / "seed0" / "results.json").read_text())
    return {"folder": folder, "docs": docs, "args": args, "code": code, "template": template,
            "doc": (docs / "atari_forgetting.md").read_text() if code == 0 else ""}


def test_tiny_experiment_copies_results_and_writes_the_page(tiny_experiment):
    assert tiny_experiment["code"] == 0
    docs, out = tiny_experiment["docs"], tiny_experiment["folder"] / "out"
    data = docs / fd.DATA_SUBDIR
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file()) == [
        "ewc/seed0/results.json", "experiment.json", "finetune/seed0/results.json"]  # no checkpoints
    assert (data / "ewc" / "seed0" / "results.json").read_bytes() == (out / "ewc-seed=0" / "results.json").read_bytes()
    ewc = json.loads((data / "ewc" / "seed0" / "results.json").read_text())
    assert ewc["reference"]["run"] == str(out / "finetune-seed=0")  # the sweep wired the reference
    ft = json.loads((data / "finetune" / "seed0" / "results.json").read_text())
    assert ewc["reference"]["diag"] == [ft["R"][i][i] for i in range(2)]
    record = json.loads((data / "experiment.json").read_text())
    assert [(t["method"], t["seed"]) for t in record["trials"]] == [("finetune", 0), ("ewc", 0)]
    assert len(record["invocations"]) == 1 and record["invocations"][0]["finished"] is True
    assert record["wall_seconds"] == pytest.approx(record["invocations"][0]["seconds"]) and record["wall_seconds"] > 0
    assert record["invocations"][0]["command"].startswith("python scripts/atari_forgetting.py --sweep ")
    doc = tiny_experiment["doc"]
    for heading in ("## Conclusion", "## Command and wall time", "## Setting", "## Does PPO learn each game?",
                    "## Results", "## Figures", "## Pilot runs", "## Runs"):
        assert heading in doc
    assert "Games, in training order: DemonAttack, Asterix" in doc and "64 env steps per game = 2 PPO updates" in doc
    assert "Whether fine-tuning forgets cannot be decided" in doc  # one seed: no interval
    assert "Whether PPO learns DemonAttack and Asterix cannot be decided" in doc  # no intervals
    for name in ("normalized_reward", "plasticity_stability", "first_game"):
        png = docs / "figures" / f"atari_forgetting_{name}.png"
        assert png.is_file() and png.stat().st_size > 1000
        assert f"(figures/atari_forgetting_{name}.png)" in doc
    # the per-run table holds the runs' own numbers
    R = np.array([[np.nan if v is None else v for v in row] for row in ft["R"]])
    row = next(line for line in doc.splitlines() if line.startswith("| Fine-tuning | 0 |"))
    assert f"| {fs.fmt(R[0, 0] - R[1, 0])} | " in row


def test_rerun_skips_complete_trials_and_adds_its_time(tiny_experiment, tmp_path, capsys):
    assert tiny_experiment["code"] == 0
    folder = tmp_path / "copy"
    shutil.copytree(tiny_experiment["folder"], folder)
    src = str(tiny_experiment["folder"])
    args = [a.replace(src, str(folder)) for a in tiny_experiment["args"]]
    stamp = (folder / "out" / "ewc-seed=0" / "results.json").stat().st_mtime_ns
    assert run_script(args) == 0
    assert "2 of 2 trials already complete: skipped" in capsys.readouterr().out
    assert (folder / "out" / "ewc-seed=0" / "results.json").stat().st_mtime_ns == stamp
    record = json.loads((folder / "docs" / fd.DATA_SUBDIR / "experiment.json").read_text())
    assert len(record["invocations"]) == 2
    assert record["wall_seconds"] == pytest.approx(sum(i["seconds"] for i in record["invocations"]))
    assert "over 2 invocations" in (folder / "docs" / "atari_forgetting.md").read_text()


def test_render_from_committed_data_alone_rebuilds_the_same_page(tiny_experiment, tmp_path):
    assert tiny_experiment["code"] == 0
    docs = tmp_path / "docs"
    shutil.copytree(tiny_experiment["docs"] / fd.DATA_SUBDIR, docs / fd.DATA_SUBDIR)  # what git holds
    assert run_script(["--render", "--docs", str(docs), "--reps", "200"]) == 0
    assert (docs / "atari_forgetting.md").read_text() == tiny_experiment["doc"]
    assert len(list((docs / "figures").glob("atari_forgetting_*.png"))) == 3


def test_interrupted_experiment_records_its_time_and_writes_no_page(tmp_path, monkeypatch, capsys):
    sweep = tiny_sweep(tmp_path, {"finetune": {"regularizer.name": "none"}}, seeds=[0])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("clrl.sweep.run_sweep", interrupted)
    docs = tmp_path / "docs"
    code = run_script(["--sweep", str(sweep), "--out", str(tmp_path / "out"), "--docs", str(docs)])
    assert code == 130 and "run the same command again" in capsys.readouterr().err
    record = json.loads((tmp_path / "out" / "experiment.json").read_text())
    assert len(record["invocations"]) == 1 and record["invocations"][0]["finished"] is False
    assert not (docs / "atari_forgetting.md").exists()


def test_bad_flags_exit_2(tmp_path, capsys):
    assert run_script(["--render", "--set", "seed=1", "--docs", str(tmp_path)]) == 2
    assert "--render reads" in capsys.readouterr().err
    assert run_script(["--render", "--docs", str(tmp_path / "none")]) == 2
    assert "no experiment data" in capsys.readouterr().err
    assert run_script(["--workers", "0", "--docs", str(tmp_path)]) == 2
    sweep = tiny_sweep(tmp_path, {"finetune": {"regularizer.name": "none"}}, seeds=[0])
    assert run_script(["--sweep", str(sweep), "--set", "train.n_envs=abc", "--docs", str(tmp_path)]) == 2
    assert "n_envs" in capsys.readouterr().err


# --------------------------------------------------------------------------- hand-made results, 3 seeds


SYNTH = {  # method: (regularizer, R[0][0] per seed, R[1][0] per seed); R[1][1] = 50 everywhere
    "finetune": ("none", [100, 110, 120], [10, 10, 10]),  # forgetting 90, 100, 110
    "ewc": ("ewc", [100, 110, 120], [10, 10, 10]),  # the same forgetting: the difference includes 0
    "mas": ("mas", [200, 210, 220], [0, 0, 0]),  # forgetting 200-220: significantly more
    "agscl": ("agscl", [100, 110, 120], [95, 108, 119]),  # forgetting 5, 2, 1: significantly less
}


def synthetic_data(data: Path, template: dict) -> None:
    for method, (reg, r00, r10) in SYNTH.items():
        for seed in range(3):
            R = [[r00[seed], None], [r10[seed], 50.0]]
            curves = [{"step": 32, "task": 0, "scores": [r00[seed] / 2]}, {"step": 64, "task": 0, "scores": [r00[seed]]},
                      {"step": 96, "task": 1, "scores": [r10[seed], 25.0]},
                      {"step": 128, "task": 1, "scores": [r10[seed], 50.0]}]
            config = copy.deepcopy(template["config"])
            config["regularizer"] = {"name": reg}
            write_results(fd.run_path(data, method, seed), template, seed=seed, R=R, curves=curves,
                          baseline=[1.0, 2.0], config=config, name=f"{method}-seed={seed}")


def test_render_of_hand_made_results_states_the_right_conclusion(tiny_experiment, tmp_path):
    docs = tmp_path / "docs"
    data = docs / fd.DATA_SUBDIR
    synthetic_data(data, tiny_experiment["template"])
    (data / fd.PILOTS_FILE).write_text(yaml.safe_dump({
        "pilots": [{"name": "half budget", "games": ["KungFuMaster", "Seaquest"], "steps_per_task": 32768,
                    "seeds": [0, 1, 2], "changes": {"eval.episodes": 16}, "wall_time": "20 min",
                    "outcome": "no forgetting; budget doubled.", "command": "python scripts/atari_forgetting.py"}],
        "discussion": "EWC's lambda was not tuned."}))
    assert run_script(["--render", "--docs", str(docs), "--reps", "200"]) == 0
    doc = (docs / "atari_forgetting.md").read_text()
    conclusion = doc.split("## Conclusion")[1].split("Rule:")[0]
    assert "PPO learns every game" in conclusion
    assert "Fine-tuning forgets: its forgetting is 100 with a 95% interval" in conclusion
    assert "drops by 100" in conclusion
    assert "AGS-CL forgets significantly less than fine-tuning" in conclusion
    assert "EWC does not forget significantly less than fine-tuning" in conclusion
    assert "MAS forgets significantly more than fine-tuning" in conclusion
    assert "In short: AGS-CL forgets significantly less than fine-tuning; EWC and MAS do not." in conclusion
    # the table: forgetting of fine-tuning is the mean of 90, 100, 110 with an interval inside [90, 110]
    row = next(line for line in doc.splitlines() if line.startswith("| Fine-tuning | 3 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3].startswith("100 [") and cells[2].startswith("30.0 [")  # forgetting, ACC = (10 + 50) / 2
    assert cells[5].startswith("1.00 [1.00, 1.00]")  # P of fine-tuning is 1
    assert "| DemonAttack | 1.00 [1.00, 1.00] | 110 [" in doc and doc.count("| yes |") == 2  # learned both
    assert "**half budget** (games KungFuMaster, Seaquest; 32,768 steps per game; seeds 0, 1, 2; " in doc
    assert "## Discussion\n\nEWC's lambda was not tuned." in doc
    assert "computed with rliable" in doc or "clrl stratified bootstrap" in doc
    for name in ("normalized_reward", "plasticity_stability", "first_game"):
        assert (docs / "figures" / f"atari_forgetting_{name}.png").is_file()
    # the numbers behind the page, from the same data
    runs, _ = fd.load_data(data)
    summary = summarize(runs, reps=200)
    agscl = next(m for m in summary.methods if m.method == "agscl")
    assert agscl.vs_reference.point == pytest.approx(100 - 8 / 3)
    assert agscl.intervals["norm_reward"].point == pytest.approx(np.mean(
        [95 / 100 + 1, 108 / 110 + 1, 119 / 120 + 1]))  # reference maxima: its R[0][0] and 50
    steps, ivs = agscl.norm_curve
    assert steps.tolist() == [32, 64, 96, 128] and len(ivs) == 4


def test_readme_names_the_experiment_commands_and_files():
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Forgetting on Atari")[1].split("\n### ")[0]
    assert "python scripts/atari_forgetting.py " in section and "python scripts/atari_forgetting.py --render" in section
    for path in ("configs/sweep_atari_forgetting.yaml", "configs/atari_forgetting.yaml", "scripts/atari_forgetting.py"):
        assert (REPO / path).is_file() and (path in section or path.startswith("scripts/"))


def test_a_killed_invocation_gets_its_time_from_the_sweep_log(tmp_path):
    log = tmp_path / "sweep_log.txt"
    log.write_text("2026-01-01T10:00:05+00:00 6 trials to run\n"
                   "2026-01-01T10:20:00+00:00 finetune-seed=0: complete in 1195.0 s\n"
                   "2026-01-01T11:00:10+00:00 6 trials to run (2 resume from a checkpoint)\n")
    record = fd.new_record("configs/x.yaml")
    record["invocations"] = [{"started": "2026-01-01T10:00:00+00:00", "seconds": None},  # killed at ~10:20
                             {"started": "2026-01-01T11:00:00+00:00", "seconds": 300.0}]
    assert fd.close_killed_invocations(record, log) == 1
    assert record["invocations"][0] == {"started": "2026-01-01T10:00:00+00:00", "seconds": 1200.0, "killed": True}
    fd.save_record(tmp_path / "e.json", record)
    assert fd.load_record(tmp_path / "e.json")["wall_seconds"] == 1500.0
    assert fd.close_killed_invocations(record, log) == 0


def test_one_driver_per_sweep_folder(tmp_path):
    with af.experiment_lock(tmp_path):
        with pytest.raises(UserError, match="in use by another"):
            with af.experiment_lock(tmp_path):
                pass
    with af.experiment_lock(tmp_path):  # released
        pass
