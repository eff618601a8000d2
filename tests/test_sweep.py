"""Sweeps: expansion, names, reference wiring and order, resuming, and real runs locally and on Ray."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from clrl.cli import main
from clrl.errors import ConfigError, UserError
from clrl.results import load_results, new_results, save_results
from clrl.sweep import expand, load_manifest, run_sweep
from clrl.sweep.driver import SweepLog
from clrl.sweep.spec import axis_labels, format_value

REPO = Path(__file__).resolve().parent.parent

TINY = {  # Split Digits small enough that one trial trains in about a second on a shared CPU
    "name": "tiny",
    "kind": "supervised",
    "device": "cpu",
    "tasks": {"dataset": "split_digits", "n_tasks": 3},
    "model": {"hidden": [16]},
    "train": {"epochs": 3, "batch_size": 64},
    "eval": {"fwt_baseline": False, "every_epochs": 0},
    "output": {"tensorboard": False, "figures": False, "progress": False},
}


def write_sweep(folder: Path, sweep: dict, base: dict | None = None, name: str = "sweep.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text(yaml.safe_dump(base or TINY))
    path = folder / name
    path.write_text(yaml.safe_dump({"name": "t", "base": "base.yaml", **sweep}, sort_keys=False))
    return path


GRID = {
    "seeds": [0, 1],
    "set": {"train.epochs": 1},
    "methods": {
        "finetune": {"regularizer.name": "none"},
        "ewc": {"regularizer.name": "ewc", "regularizer.lamb": [1000, 10000.0]},
        "agscl": {"regularizer": {"name": "agscl", "lamb": 100, "mu": 0.1}, "train.epochs": 2},
    },
}


# --------------------------------------------------------------------------- expansion (no training)


def test_expansion_names_order_and_values(tmp_path):
    plan = expand(write_sweep(tmp_path, GRID), out=tmp_path / "out")
    assert [t.name for t in plan.trials] == [
        "finetune-seed=0", "finetune-seed=1",  # references first
        "ewc-lamb=1000-seed=0", "ewc-lamb=1000-seed=1",
        "ewc-lamb=10000-seed=0", "ewc-lamb=10000-seed=1",
        "agscl-seed=0", "agscl-seed=1",
    ]
    by = {t.name: t for t in plan.trials}
    ewc = by["ewc-lamb=10000-seed=1"].config
    assert ewc["name"] == "ewc-lamb=10000-seed=1" and ewc["seed"] == 1
    assert ewc["regularizer"]["name"] == "ewc" and ewc["regularizer"]["lamb"] == 10000.0
    assert ewc["train"]["epochs"] == 1  # from `set`
    assert by["agscl-seed=0"].config["train"]["epochs"] == 2  # the method's key beats `set`
    assert by["agscl-seed=0"].config["regularizer"]["mu"] == 0.1
    assert by["finetune-seed=0"].config["model"]["hidden"] == [16]  # from the base file
    assert by["ewc-lamb=1000-seed=0"].params == {"regularizer.lamb": 1000}


def test_references_point_at_the_same_seed(tmp_path):
    out = tmp_path / "out"
    plan = expand(write_sweep(tmp_path, GRID), out=out)
    for t in plan.trials:
        if t.method == "finetune":
            assert t.is_reference and t.reference is None and t.config["reference"] is None
        else:
            assert not t.is_reference
            assert t.reference == f"finetune-seed={t.seed}"
            assert t.config["reference"] == str(out.resolve() / f"finetune-seed={t.seed}")
    first_dependent = min(i for i, t in enumerate(plan.trials) if not t.is_reference)
    assert all(t.is_reference for t in plan.trials[:first_dependent])


def test_reference_options(tmp_path):
    sweep = {"methods": {"ft": {"regularizer.name": "none"}, "ft2": {"regularizer.name": "none", "train.epochs": 2},
                         "ewc": {"regularizer.name": "ewc"}}}
    with pytest.raises(ConfigError, match="could use any of ft-seed=0, ft2-seed=0"):
        expand(write_sweep(tmp_path, sweep))
    plan = expand(write_sweep(tmp_path, {**sweep, "reference": "ft2"}), out=tmp_path / "o")
    assert plan.trial("ewc-seed=0").reference == "ft2-seed=0"
    assert not plan.trial("ft-seed=0").is_reference and plan.trial("ft-seed=0").reference == "ft2-seed=0"
    plan = expand(write_sweep(tmp_path, {**sweep, "reference": None}), out=tmp_path / "o")
    assert all(t.reference is None and not t.is_reference for t in plan.trials)
    # no fine-tuning method: a reference given in the base config is kept
    plan = expand(write_sweep(tmp_path, {"methods": {"ewc": {"regularizer.name": "ewc"}}}, {**TINY, "reference": "/r"}))
    assert plan.trials[0].config["reference"] == "/r" and plan.trials[0].reference is None


def test_grid_axes_cross_every_method_and_references_match_the_point(tmp_path):
    sweep = {
        "seeds": [3],
        "grid": {"model.hidden": [[8], [16, 16]]},  # a list-valued key: a list of lists
        "methods": {"finetune": {"regularizer.name": "none"}, "mas": {"regularizer.name": "mas"}},
    }
    plan = expand(write_sweep(tmp_path, sweep), out=tmp_path / "o")
    names = [t.name for t in plan.trials]
    assert names == ["finetune-hidden=8-seed=3", "finetune-hidden=16_16-seed=3",
                     "mas-hidden=8-seed=3", "mas-hidden=16_16-seed=3"]
    assert plan.trial("mas-hidden=16_16-seed=3").config["model"]["hidden"] == [16, 16]
    assert plan.trial("mas-hidden=16_16-seed=3").reference == "finetune-hidden=16_16-seed=3"
    assert plan.trial("mas-hidden=8-seed=3").reference == "finetune-hidden=8-seed=3"
    # a one-value list is a fixed value: not in the name
    one = expand(write_sweep(tmp_path, {"methods": {"a": {"model.hidden": [[8, 8]]}}}))
    assert one.trials[0].name == "a-seed=0" and one.trials[0].config["model"]["hidden"] == [8, 8]


def test_switching_regularizer_drops_the_base_hyperparameters(tmp_path):
    base = {**TINY, "regularizer": {"name": "agscl", "mu": 0.5}}
    sweep = {"methods": {"ewc": {"regularizer.name": "ewc"}, "ags": {"regularizer.lamb": 7}}}
    plan = expand(write_sweep(tmp_path, sweep, base))
    assert plan.trial("ewc-seed=0").config["regularizer"]["name"] == "ewc"  # no 'unknown key mu'
    ags = plan.trial("ags-seed=0").config["regularizer"]
    assert ags["name"] == "agscl" and ags["mu"] == 0.5 and ags["lamb"] == 7


def test_set_and_grid_regularizer_values_survive_each_methods_switch(tmp_path):
    sweep = {
        "set": {"regularizer.include_heads": True},
        "grid": {"regularizer.lamb": [1, 10]},
        "methods": {"ewc": {"regularizer.name": "ewc"}, "mas": {"regularizer.name": "mas"}},
    }
    plan = expand(write_sweep(tmp_path, sweep))
    for method in ("ewc", "mas"):
        for lamb in (1, 10):
            reg = plan.trial(f"{method}-lamb={lamb}-seed=0").config["regularizer"]
            assert reg["name"] == method and reg["lamb"] == lamb and reg["include_heads"] is True


def test_a_methods_keys_apply_whatever_their_order(tmp_path):
    # yaml.safe_dump sorts keys: `lamb` comes before `name`
    sweep = {"methods": {"ewc": {"regularizer.lamb": 7, "regularizer.name": "ewc"},
                         "mas": {"regularizer": {"lamb": 3, "name": "mas"}}}}
    plan = expand(write_sweep(tmp_path, sweep))
    assert plan.trial("ewc-seed=0").config["regularizer"]["lamb"] == 7
    assert plan.trial("mas-seed=0").config["regularizer"]["lamb"] == 3
    grid = {"grid": {"regularizer.lamb": [1, 10], "regularizer.name": ["ewc", "mas"]}, "methods": {"m": {}}}
    lambs = sorted(t.config["regularizer"]["lamb"] for t in expand(write_sweep(tmp_path, grid, name="g.yaml")).trials)
    assert lambs == [1, 1, 10, 10]


def test_a_date_in_a_sweep_file_is_a_config_error(tmp_path, capsys):
    path = tmp_path / "date.yaml"
    write_sweep(tmp_path, {"methods": {"a": {}}})
    path.write_text("name: t\nbase: base.yaml\nset:\n  output.dir: 2024-01-01\nmethods:\n  a: {}\n")
    assert main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "set: output.dir: datetime.date(2024, 1, 1) is a date" in err and "quote it" in err


def test_seeds_default_to_the_base_seed(tmp_path):
    plan = expand(write_sweep(tmp_path, {"methods": {"a": {}}}, {**TINY, "seed": 7}))
    assert [t.name for t in plan.trials] == ["a-seed=7"] and plan.trials[0].config["seed"] == 7


def test_set_values_are_literal_and_command_line_wins(tmp_path):
    sweep = {"set": {"model.hidden": [8, 8], "train.epochs": 2},
             "methods": {"a": {"train.epochs": 3}, "b": {"train.batch_size": [16, 32]}}}
    path = write_sweep(tmp_path, sweep)
    plan = expand(path)
    assert [t.name for t in plan.trials] == ["a-seed=0", "b-batch_size=16-seed=0", "b-batch_size=32-seed=0"]
    assert all(t.config["model"]["hidden"] == [8, 8] for t in plan.trials)  # not a grid of 8 and 8
    assert plan.trial("a-seed=0").config["train"]["epochs"] == 3
    plan = expand(path, overrides=["train.epochs=1", "model.hidden=[4]"])
    assert all(t.config["train"]["epochs"] == 1 and t.config["model"]["hidden"] == [4] for t in plan.trials)
    assert plan.overrides == ["train.epochs=1", "model.hidden=[4]"]
    with pytest.raises(ConfigError, match="--set: seed: the sweep sets this itself"):
        expand(path, overrides=["seed=4"])


def test_value_formatting_and_axis_labels():
    assert format_value(1000.0) == "1000" and format_value(1e-5) == "1e-05" and format_value(0.25) == "0.25"
    assert format_value(7) == "7" and format_value(True) == "true" and format_value(None) == "none"
    assert format_value("lwta:block=2") == "lwta_block_2"
    assert format_value("st_hard:groups=32>gnc:groups=32") == "st_hard_groups_32_gnc_groups_32"
    assert format_value([64, 64]) == "64_64"
    assert axis_labels(["regularizer.lamb", "train.epochs"]) == {"regularizer.lamb": "lamb", "train.epochs": "epochs"}
    assert axis_labels(["regularizer.gamma", "train.vcl.gamma"]) == {
        "regularizer.gamma": "regularizer.gamma", "train.vcl.gamma": "vcl.gamma"}


def test_names_are_valid_run_names(tmp_path):
    sweep = {"methods": {"a": {"model.activation": ["relu", "lwta:block=2", "st_hard:groups=4>gnc:groups=4"]}}}
    plan = expand(write_sweep(tmp_path, sweep))
    assert [t.name for t in plan.trials] == [
        "a-activation=relu-seed=0", "a-activation=lwta_block_2-seed=0",
        "a-activation=st_hard_groups_4_gnc_groups_4-seed=0"]


BAD = [
    ({"methods": {"ewc": {"regularizer.name": "ewc", "regularizer.lamb": [1, "abc"]}}},
     ["sweep.yaml (trial ewc-lamb=abc-seed=0)", "regularizer.lamb", "'abc'"]),
    ({"methods": {"ewc": {"regularizer.name": "ewc", "regularizer.lamda": 3}}},
     ["trial ewc-seed=0", "regularizer.lamda", "did you mean 'lamb'"]),
    ({"methods": {"a": {"seed": 1}}}, ["methods.a: seed", "seeds:"]),
    ({"methods": {}}, ["sweep.yaml: methods"]),
    ({"methods": {"a": {}}, "sedes": [1]}, ["sweep.yaml: sedes: unknown key", "did you mean 'seeds'"]),
    ({"methods": {"a": {"train.epochs": []}}}, ["methods.a: train.epochs: empty list"]),
    ({"methods": {"a": {"train.epochs": [1, 1]}}}, ["both named 'a-epochs=1-seed=0'"]),
    ({"methods": {"a": {}}, "seeds": [1, 1]}, ["seeds: seeds repeat"]),
    ({"methods": {"a": {}}, "reference": "b"}, ["reference: given 'b'", "allowed: auto, null, a"]),
    ({"methods": {"a": {}}, "set": {"seed": 2}}, ["sweep.yaml: set: seed: the sweep sets this itself"]),
    ({"methods": {"a": {}}, "grid": {"train.epochs": 3}}, ["grid: train.epochs: needs a list"]),
    ({"methods": {"a": {"train.epochs.x": 1}}}, ["methods.a", "train.epochs is a value, not a section"]),
    ({"methods": {"a b": {}}}, ["methods", "method name 'a b'"]),
    ({"methods": {"a": {}}, "resources": {"gpu": -1}}, ["resources.gpu"]),
    ({"methods": {"a": {}}, "base": "missing.yaml"}, ["base: 'missing.yaml' not found"]),
]


@pytest.mark.parametrize(("sweep", "fragments"), BAD)
def test_bad_sweep_files_exit_2_naming_file_and_key(tmp_path, capsys, sweep, fragments):
    path = write_sweep(tmp_path, sweep)
    assert main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clrl: error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


def test_bad_files_and_flags_exit_2(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "nope.yaml")]) == 2
    assert "sweep file not found" in capsys.readouterr().err
    (tmp_path / "list.yaml").write_text("- 1\n")
    assert main(["sweep", str(tmp_path / "list.yaml")]) == 2
    assert "mapping" in capsys.readouterr().err
    (tmp_path / "broken.yaml").write_text("name: [\n")
    assert main(["sweep", str(tmp_path / "broken.yaml")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    path = write_sweep(tmp_path, {"methods": {"a": {}}})
    assert main(["sweep", str(path), "--workers", "0"]) == 2
    assert main(["sweep", str(path), "--address", "auto"]) == 2
    assert "--backend ray" in capsys.readouterr().err
    assert main(["sweep", str(path), "--set", "train.epochs=zero", "--dry-run"]) == 2
    assert "train.epochs" in capsys.readouterr().err


def test_ray_missing_is_a_user_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    path = write_sweep(tmp_path, {"methods": {"a": {}}})
    assert main(["sweep", str(path), "--backend", "ray", "--out", str(tmp_path / "o"), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "pip install -e .[ray]" in err and "Traceback" not in err


def test_dry_run_lists_the_plan_and_writes_nothing(tmp_path, capsys):
    path = write_sweep(tmp_path, GRID)
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "ewc-lamb=10000-seed=1" in text and "finetune-seed=1" in text
    assert "│ run" in text  # the action column of a trial never started
    assert not out.exists()


def test_shipped_sweep_files_expand(tmp_path):
    for path in sorted((REPO / "configs").glob("sweep_*.yaml")):
        plan = expand(path, out=tmp_path / path.stem)
        assert plan.trials and plan.trials[0].is_reference, path
        assert all(t.reference for t in plan.trials if not t.is_reference), path
    digits = expand(REPO / "configs" / "sweep_digits.yaml", out=tmp_path / "d")
    assert len(digits.trials) >= 4
    paper = expand(REPO / "configs" / "sweep_atari_paper.yaml", out=tmp_path / "p")
    assert {t.method for t in paper.trials} == {"finetune", "ewc", "mas", "agscl"}
    assert sorted({t.seed for t in paper.trials}) == [0, 1, 2, 3, 4] and len(paper.trials) == 20
    assert paper.trials[0].config["tasks"]["games"] == [
        "StarGunner", "Boxing", "VideoPinball", "CrazyClimber", "Gopher", "Robotank", "DemonAttack", "NameThisGame"]
    assert 0 < paper.spec.resources.gpu < 1


@pytest.mark.parametrize(("sweep", "single"), [("sweep_digits", "split_digits"), ("sweep_atari_paper", "atari_paper")])
def test_shipped_sweeps_match_the_single_run_configs(tmp_path, sweep, single):
    """Each method of a shipped sweep runs what configs/<single>_<method>.yaml runs (up to epochs/threads)."""
    from clrl.config import config_to_dict, load_config

    plan = expand(REPO / "configs" / f"{sweep}.yaml", out=tmp_path)
    tweaked = set(plan.spec.set)
    checked = 0
    for trial in plan.trials:
        if trial.seed != 0:
            continue
        path = REPO / "configs" / f"{single}_{trial.method}.yaml"
        if trial.method == "agscl" and not path.exists():
            path = REPO / "configs" / f"{single}.yaml"  # split_digits.yaml is the AGS-CL one
        want = config_to_dict(load_config(path))
        got = dict(trial.config)
        for cfg in (want, got):
            for key in ("name", "reference", "output"):
                cfg.pop(key)
            for dotted in tweaked:  # what the sweep changes on purpose (set:), e.g. fewer epochs
                section, leaf = dotted.rsplit(".", 1)
                cfg[section].pop(leaf)
        assert got == want, f"{sweep} method {trial.method} differs from {path.name}"
        checked += 1
    assert checked == 4


# --------------------------------------------------------------------------- scheduling (fake runner)


class FakeRunner:
    """Stands in for run_experiment: records calls, writes results.json and a checkpoint."""

    def __init__(self, fail: set[str] = frozenset(), crash_once: set[str] = frozenset()):
        self.calls: list[tuple[str, bool]] = []
        self.fail, self.crash_once = set(fail), set(crash_once)

    def __call__(self, cfg, rd, resume=False):
        self.calls.append((cfg.name, resume))
        if cfg.reference:  # what the real runners do: read the reference when the run starts
            assert load_results(cfg.reference).status == "complete", f"{cfg.name} started before its reference"
        res = new_results(cfg.kind, cfg.name, cfg.seed, {}, ["a", "b"])
        if cfg.name in self.crash_once:
            self.crash_once.discard(cfg.name)
            rd.latest_checkpoint.write_bytes(b"checkpoint")
            save_results(rd.results_path, res)
            raise RuntimeError("simulated crash")
        res.R = [[0.9, None], [0.5, 0.8]]
        res.status = "failed" if cfg.name in self.fail else "complete"
        res.metrics = {"acc": 0.65}
        rd.latest_checkpoint.parent.mkdir(parents=True, exist_ok=True)
        rd.latest_checkpoint.write_bytes(b"checkpoint")  # the real runners keep their last good one
        save_results(rd.results_path, res)
        return res


@pytest.fixture
def fake(monkeypatch):
    def install(runner):
        monkeypatch.setattr("clrl.sweep.trial._runner", lambda kind: runner)
        return runner

    return install


def quiet_log(out):
    import io

    return SweepLog(out, stream=io.StringIO())


def test_failed_reference_blocks_its_dependents_and_rerun_finishes_only_the_rest(tmp_path, fake):
    sweep = {"seeds": [0, 1], "methods": {"ft": {"regularizer.name": "none"}, "ewc": {"regularizer.name": "ewc"}}}
    plan = expand(write_sweep(tmp_path, sweep), out=tmp_path / "out")
    runner = fake(FakeRunner(fail={"ft-seed=1"}))
    manifest = run_sweep(plan, workers=1, log=quiet_log(plan.out))
    status = {t.name: t.status for t in manifest.trials}
    assert status == {"ft-seed=0": "complete", "ft-seed=1": "failed", "ewc-seed=0": "complete", "ewc-seed=1": "blocked"}
    assert [c[0] for c in runner.calls] == ["ft-seed=0", "ft-seed=1", "ewc-seed=0"]
    saved = load_manifest(plan.out)
    assert {t.name: t.status for t in saved.trials} == status
    assert saved.entry("ewc-seed=1").reference == "ft-seed=1" and "ft-seed=1" in saved.entry("ewc-seed=1").reason

    runner = fake(FakeRunner())
    manifest = run_sweep(plan, workers=1, log=quiet_log(plan.out))
    assert [c[0] for c in runner.calls] == ["ft-seed=1", "ewc-seed=1"]  # complete trials are not run again
    assert all(t.status == "complete" for t in manifest.trials)
    assert manifest.entry("ft-seed=0").attempts == 1 and manifest.entry("ft-seed=1").attempts == 2


def test_crashed_trial_is_retried_from_its_checkpoint(tmp_path, fake):
    plan = expand(write_sweep(tmp_path, {"methods": {"a": {}}, "retries": 1}), out=tmp_path / "out")
    runner = fake(FakeRunner(crash_once={"a-seed=0"}))
    manifest = run_sweep(plan, workers=1, log=quiet_log(plan.out))
    assert runner.calls == [("a-seed=0", False), ("a-seed=0", True)]
    entry = manifest.entry("a-seed=0")
    assert entry.status == "complete" and entry.attempts == 2 and entry.resumed

    plan = expand(write_sweep(tmp_path, {"methods": {"b": {}}, "retries": 0}), out=tmp_path / "out0")
    runner = fake(FakeRunner(crash_once={"b-seed=0"}))
    manifest = run_sweep(plan, workers=1, log=quiet_log(plan.out))
    assert runner.calls == [("b-seed=0", False)]
    assert manifest.entry("b-seed=0").status == "failed" and "simulated crash" in manifest.entry("b-seed=0").reason


def test_a_trial_with_scores_but_no_checkpoint_is_refused_and_kept(tmp_path, capsys):
    """What `clrl run --resume` refuses to overwrite, a re-run sweep must not delete either."""
    from clrl.config import config_from_dict, config_to_dict
    from clrl.rundir import prepare_run_dir
    from clrl.sweep.trial import disk_state, run_trial

    cfg = config_from_dict({**TINY, "name": "a-seed=0"})
    rd = prepare_run_dir(cfg, out=tmp_path / "a-seed=0")
    res = new_results("supervised", cfg.name, 0, config_to_dict(cfg), ["a", "b", "c"])
    res.R = [[0.9, None, None], [0.5, 0.8, None], [None, None, None]]
    save_results(rd.results_path, res)  # status running: 2 tasks done, then the checkpoint was lost
    rd.task_checkpoint(1).write_bytes(b"kept")
    kept = rd.results_path.read_bytes()
    assert disk_state(rd.root) == "scored"
    out = run_trial({"name": cfg.name, "dir": str(rd.root), "config": config_to_dict(cfg)})
    assert out["status"] == "failed" and "cannot continue without overwriting them" in out["reason"]
    assert f"copy {rd.task_checkpoint(1)} to {rd.latest_checkpoint}" in out["reason"]
    assert rd.results_path.read_bytes() == kept and rd.task_checkpoint(1).read_bytes() == b"kept"


def test_changed_sweep_refuses_to_mix_configs(tmp_path, fake):
    path = write_sweep(tmp_path, {"methods": {"a": {}}})
    plan = expand(path, out=tmp_path / "out")
    fake(FakeRunner())
    run_sweep(plan, workers=1, log=quiet_log(plan.out))
    changed = expand(path, out=tmp_path / "out", overrides=["train.epochs=9"])
    with pytest.raises(UserError, match=r"a-seed=0: .* different config \(train.epochs: 3 -> 9\)"):
        run_sweep(changed, workers=1, log=quiet_log(changed.out))
    # output settings are not part of the experiment: changing them is fine
    same = expand(path, out=tmp_path / "out", overrides=["output.progress=true"])
    assert all(t.status == "complete" for t in run_sweep(same, workers=1, log=quiet_log(same.out)).trials)


def test_one_driver_per_sweep_folder(tmp_path, fake):
    import fcntl

    plan = expand(write_sweep(tmp_path, {"methods": {"a": {}}}), out=tmp_path / "out")
    runner = fake(FakeRunner())
    plan.out.mkdir()
    with open(plan.out / ".sweep.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running driver holds it
        with pytest.raises(UserError, match="in use by another clrl sweep"):
            run_sweep(plan, workers=1, log=quiet_log(plan.out))
        assert runner.calls == []
    assert run_sweep(plan, workers=1, log=quiet_log(plan.out)).entry("a-seed=0").status == "complete"


# --------------------------------------------------------------------------- real runs (Split Digits)

SMALL = {"seeds": [0, 1], "set": {"train.epochs": 1},
         "methods": {"finetune": {"regularizer.name": "none"}, "ewc": {"regularizer.name": "ewc", "regularizer.lamb": 100}}}
NAMES = ["finetune-seed=0", "finetune-seed=1", "ewc-seed=0", "ewc-seed=1"]


def check_complete_sweep(out: Path) -> None:
    manifest = load_manifest(out)
    assert [t.name for t in manifest.trials] == NAMES
    assert all(t.status == "complete" for t in manifest.trials)
    for name in NAMES:
        res = load_results(out / name)
        assert res.status == "complete" and res.name == name
        if name.startswith("ewc"):
            seed = name[-1]
            assert res.reference is not None and Path(res.reference.run) == out / f"finetune-seed={seed}"
            ref = load_results(out / f"finetune-seed={seed}")
            assert res.reference.diag == [ref.R[i][i] for i in range(len(ref.tasks))]


@pytest.fixture(scope="module")
def digits_sweep(tmp_path_factory):
    """One real 4-trial sweep, in this process, with the report; tests copy it before changing it."""
    folder = tmp_path_factory.mktemp("digits")
    path = write_sweep(folder, SMALL)
    out = folder / "out"
    start = time.perf_counter()
    code = main(["sweep", str(path), "--out", str(out), "--workers", "1", "--no-figures"])
    return path, out, code, time.perf_counter() - start


def test_digits_sweep_local_end_to_end(digits_sweep, capsys):
    path, out, code, seconds = digits_sweep
    assert code == 0, (out / "sweep_log.txt").read_text()
    check_complete_sweep(out)
    report = (out / "report" / "report.md").read_text()
    assert "EWC" in report and "Fine-tuning" in report
    runs = (out / "report" / "runs.csv").read_text()
    assert all(name in runs for name in NAMES)
    assert not list((out / "report").glob("*.png"))  # --no-figures
    assert load_manifest(out).report == "report"
    print(f"digits sweep, 4 trials, local in process: {seconds:.1f} s")


def test_rerun_of_a_complete_sweep_runs_nothing(digits_sweep, tmp_path, capsys):
    path, out, code, _ = digits_sweep
    assert code == 0
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    stamps = {n: os.stat(copy / n / "results.json").st_mtime_ns for n in NAMES}
    assert main(["sweep", str(path), "--out", str(copy), "--no-report"]) == 0
    assert "4 of 4 trials already complete: skipped" in capsys.readouterr().out
    assert stamps == {n: os.stat(copy / n / "results.json").st_mtime_ns for n in NAMES}


def test_partial_trial_resumes_from_its_checkpoint(digits_sweep, tmp_path, capsys):
    """A trial killed after task 1 (of 3): only it runs again, from its checkpoint, and ends equal."""
    path, out, code, _ = digits_sweep
    assert code == 0
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    victim = copy / "ewc-seed=1"
    before = load_results(victim)
    shutil.copy(victim / "checkpoints" / "task_01.pt", victim / "checkpoints" / "latest.pt")
    partial = before.model_copy(deep=True)
    partial.status, partial.R[2] = "running", [None] * 3
    save_results(victim / "results.json", partial)
    others = [n for n in NAMES if n != "ewc-seed=1"]
    stamps = {n: os.stat(copy / n / "results.json").st_mtime_ns for n in others}

    assert main(["sweep", str(path), "--out", str(copy), "--no-report"]) == 0
    log = capsys.readouterr().out
    assert "ewc-seed=1: resuming from its checkpoint" in log and "3 of 4 trials already complete" in log
    assert stamps == {n: os.stat(copy / n / "results.json").st_mtime_ns for n in others}
    assert "resumed from" in (victim / "log.txt").read_text()
    after = load_results(victim)
    assert after.status == "complete" and after.R == before.R  # resume is exact on CPU
    entry = load_manifest(copy).entry("ewc-seed=1")
    assert entry.resumed and entry.attempts == 2


@pytest.mark.slow
def test_killed_sweep_reruns_no_complete_trial(tmp_path):
    """SIGKILL `clrl sweep` once its first trial is complete; the re-run skips that trial."""
    path = write_sweep(tmp_path, SMALL)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "clrl.cli", "sweep", str(path), "--out", str(out), "--workers", "1"]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / NAMES[0] / "results.json"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if first.is_file() and json.loads(first.read_text()).get("status") == "complete":
                break
            time.sleep(0.05)
        else:
            pytest.fail("the first trial did not complete in time, or the sweep ended before the kill")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    stamp = os.stat(first).st_mtime_ns
    assert load_manifest(out).entry(NAMES[-1]).status != "complete"

    assert main(["sweep", str(path), "--out", str(out), "--workers", "1"]) == 0
    assert os.stat(first).st_mtime_ns == stamp
    log = (out / "sweep_log.txt").read_text()
    assert log.count(f"{NAMES[0]}: starting") == 1 and f"{NAMES[0]}: resuming" not in log
    assert load_manifest(out).entry(NAMES[0]).attempts == 1
    assert (out / NAMES[0] / "log.txt").read_text().count("run finetune-seed=0:") == 1
    check_complete_sweep(out)
    runs = (out / "report" / "runs.csv").read_text()
    assert all(name in runs for name in NAMES)
    assert (out / "report" / "R_heatmaps.png").is_file()


@pytest.mark.slow
def test_digits_sweep_process_pool(tmp_path, capsys):
    path = write_sweep(tmp_path, SMALL)
    out = tmp_path / "out"
    start = time.perf_counter()
    assert main(["sweep", str(path), "--out", str(out), "--workers", "2", "--no-report"]) == 0
    seconds = time.perf_counter() - start
    assert "on local (2 processes)" in capsys.readouterr().out
    check_complete_sweep(out)
    log = (out / "sweep_log.txt").read_text().splitlines()
    order = [line.split()[1].rstrip(":") for line in log if line.endswith("starting")]
    for seed in (0, 1):  # a dependent starts only after its reference completed
        done = next(i for i, line in enumerate(log) if f"finetune-seed={seed}: complete" in line)
        started = next(i for i, line in enumerate(log) if f"ewc-seed={seed}: starting" in line)
        assert done < started
    assert sorted(order) == sorted(NAMES)
    print(f"digits sweep, 4 trials, local pool of 2: {seconds:.1f} s")


@pytest.mark.slow
def test_digits_sweep_on_ray(tmp_path, capsys):
    ray = pytest.importorskip("ray")
    path = write_sweep(tmp_path, SMALL)
    out = tmp_path / "out"
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        start = time.perf_counter()
        assert main(["sweep", str(path), "--out", str(out), "--backend", "ray", "--no-report"]) == 0
        seconds = time.perf_counter() - start
        assert ray.is_initialized()  # the sweep joined this instance and left it running
    finally:
        ray.shutdown()
    assert "on ray" in capsys.readouterr().out
    check_complete_sweep(out)
    print(f"digits sweep, 4 trials, Ray local with 2 CPUs: {seconds:.1f} s (ray.init not counted)")


def test_dead_workers_and_errors_share_one_retry_budget(tmp_path, fake, monkeypatch):
    """retries: 1 means two starts in all: a worker that died and then an error inside the run
    must not get a re-run each (before, the budgets multiplied: up to (retries + 1)^2 starts)."""
    from clrl.sweep import driver
    from clrl.sweep.backends import InlineBackend, _crashed
    from clrl.sweep.trial import run_trial

    class DiesFirst(InlineBackend):  # the first trial's worker process dies before it runs
        label = "test"

        def __init__(self):
            super().__init__()
            self.died = False

        def wait(self):
            job = self._queue.pop(0)
            if not self.died:
                self.died = True
                return [(job, _crashed(job, "worker process died (simulated)"))]
            return [(job, run_trial(job))]

    monkeypatch.setattr(driver, "make_backend", lambda *a, **k: (DiesFirst(), 1))
    plan = expand(write_sweep(tmp_path, {"methods": {"a": {}}, "retries": 1}), out=tmp_path / "out")
    runner = fake(FakeRunner(crash_once={"a-seed=0"}))
    manifest = run_sweep(plan, log=quiet_log(plan.out))
    assert runner.calls == [("a-seed=0", False)]  # the restart after the death was the one re-run
    assert manifest.entry("a-seed=0").status == "failed" and "simulated crash" in manifest.entry("a-seed=0").reason

    plan = expand(write_sweep(tmp_path, {"methods": {"b": {}}, "retries": 2}), out=tmp_path / "out2")
    runner = fake(FakeRunner(crash_once={"b-seed=0"}))
    manifest = run_sweep(plan, log=quiet_log(plan.out))
    assert runner.calls == [("b-seed=0", False), ("b-seed=0", True)]
    assert manifest.entry("b-seed=0").status == "complete"
