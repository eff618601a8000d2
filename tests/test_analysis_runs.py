"""The representation analysis inside real runs: Split Digits (AGS-CL freezing its important
nodes vs fine-tuning) and a tiny sequential Atari run."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clrl.analysis.probes import load_probe
from clrl.config import config_from_dict
from clrl.results import load_results
from clrl.rundir import prepare_run_dir
from clrl.summary import print_summary
from clrl.supervised.trainer import run_experiment as run_supervised

DIGITS = {
    "name": "digits_analysis",
    "kind": "supervised",
    "seed": 0,
    "device": "cpu",
    "tasks": {"dataset": "split_digits", "n_tasks": 3},
    "model": {"net": "digits", "hidden": [32, 32], "activation": "relu"},
    "regularizer": {"name": "none"},
    "train": {"epochs": 4, "batch_size": 32, "learning_rate": 0.01},
    "eval": {"every_epochs": 1, "analysis_probes": 64},
    "output": {"progress": False, "tensorboard": False, "figures": False},
}

# lambda so large that every important node's incoming group snaps back onto its anchor at
# every proximal step (threshold alpha * lambda * Omega >> any drift within an epoch)
FREEZE = {"name": "agscl", "mu": 10.0, "lamb": 1e12, "rho": 0.3, "eta": 0.9}


def _digits(tmp: Path, regularizer: dict, **train) -> object:
    data = copy.deepcopy(DIGITS)
    data["regularizer"] = regularizer
    data["train"].update(train)
    cfg = config_from_dict(data)
    rd = prepare_run_dir(cfg, out=tmp / regularizer["name"])
    return run_supervised(cfg, rd)


def _drift(point, j: int, key: str = "drift") -> list[float]:
    e = next(e for e in point.analysis["tasks"] if e["task"] == j)
    return [v[key] for v in e["layers"].values() if v.get(key) is not None]


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory):
    before = torch.get_num_threads()
    tmp = tmp_path_factory.mktemp("digits")
    runs = {"agscl": _digits(tmp, FREEZE), "none": _digits(tmp, {"name": "none"})}
    torch.set_num_threads(before)
    return runs


def test_every_seen_task_has_an_analysis_block_at_every_point(digits_runs):
    for res in digits_runs.values():
        assert res.status == "complete"
        assert res.curves
        for p in res.curves:
            assert [e["task"] for e in p.analysis["tasks"]] == list(range(p.task + 1))
        assert res.timings["analysis_seconds"] > 0


def test_agscl_frozen_nodes_do_not_drift_while_finetuning_drifts(digits_runs):
    ags, ft = digits_runs["agscl"], digits_runs["none"]
    checked = 0
    for p in ags.curves:
        for e in p.analysis["tasks"]:
            if not e["reference"]:
                continue
            for layer in e["layers"].values():
                assert layer["protected_share"] > 0.3  # most nodes matter after a task: not vacuous
                assert layer["drift_protected"] == 0.0  # exactly: the same subnetwork
                checked += 1
    assert checked > 10
    # fine-tuning: task 0's submasks drift after it ends and drift further by the end
    first = next(p for p in ft.curves if p.task == 1)
    last = ft.curves[-1]
    assert np.mean(_drift(first, 0)) > 0
    assert np.mean(_drift(last, 0)) > np.mean(_drift(first, 0))
    assert all("drift_protected" not in v for v in last.analysis["tasks"][0]["layers"].values())


def test_overlap_at_task_ends(digits_runs):
    res = digits_runs["agscl"]
    ends = [p for p in res.curves if p.analysis["overlap"] is not None]
    assert len(ends) == 3  # one per task end
    last = ends[-1].analysis["overlap"]
    assert last["tasks"] == [0, 1, 2]
    m = np.array(last["all"])
    assert np.allclose(m, m.T) and np.allclose(np.diag(m), 1.0) and ((m >= 0) & (m <= 1)).all()
    assert set(last["layers"]) == {"fc1", "fc2"}


def test_summary_prints_one_analysis_line_per_task(digits_runs, capsys):
    from rich.console import Console

    print_summary(digits_runs["agscl"], Console(file=sys.stdout, width=200))
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "digits" in line and "0.000" in line]
    assert len(rows) >= 3  # one row per task; AGS-CL's protected-node drift is exactly 0


def test_analysis_off_writes_no_block(tmp_path):
    data = copy.deepcopy(DIGITS)
    data["tasks"]["n_tasks"] = 2
    data["train"]["epochs"] = 1
    data["eval"]["analysis"] = False
    cfg = config_from_dict(data)
    rd = prepare_run_dir(cfg, out=tmp_path / "off")
    res = run_supervised(cfg, rd)
    assert all(p.analysis is None for p in res.curves)
    assert not (rd.root / "probes").exists()


def test_supervised_resume_restores_probes(tmp_path, monkeypatch):
    """Stop after task 0, resume: task 0's probe comes back from disk and its drift is measured."""
    data = copy.deepcopy(DIGITS)
    data["tasks"]["n_tasks"] = 2
    data["train"]["epochs"] = 2
    cfg = config_from_dict(data)
    rd = prepare_run_dir(cfg, out=tmp_path / "resume")
    from clrl.supervised import trainer

    real = trainer._run_task

    def stop_after_first(ctx, results, rd_, t, *args):
        if t == 1:
            raise KeyboardInterrupt
        return real(ctx, results, rd_, t, *args)

    monkeypatch.setattr(trainer, "_run_task", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        trainer.run_experiment(cfg, rd)
    probe = load_probe(rd.root / "probes", 0)
    assert probe is not None and probe.inputs.dtype == np.uint8 and len(probe.inputs) == 64
    monkeypatch.setattr(trainer, "_run_task", real)
    res = trainer.run_experiment(cfg, rd, resume=True)
    assert res.status == "complete"
    after = [p for p in res.curves if p.task == 1]
    assert after and all(p.analysis["tasks"][0]["reference"] for p in after)
    assert load_results(rd.root).curves[-1].analysis["overlap"]["tasks"] == [0, 1]


# ----------------------------------------------------------------------------- Atari


def test_tiny_atari_run_writes_the_block_for_every_seen_game(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_rl_runner import run, tiny

    before = torch.get_num_threads()
    res, rd = run(tiny(**{"regularizer": {"name": "agscl", "lamb": 100.0}}), tmp_path / "rl")
    torch.set_num_threads(before)
    assert res.status == "complete"
    assert len(res.curves) == 4
    for p in res.curves:
        tasks = p.analysis["tasks"]
        assert [e["task"] for e in tasks] == list(range(p.task + 1))
        assert set(tasks[0]["layers"]) == {"conv1", "conv2", "conv3", "fc1"}
        assert tasks[0]["features"]["effective_rank"] >= 1
    ends = [p for p in res.curves if p.analysis["overlap"] is not None]
    assert [p.analysis["overlap"]["tasks"] for p in ends] == [[0], [0, 1]]
    assert all(e["layers"]["conv1"]["drift"] == 0.0 for e in ends[0].analysis["tasks"])
    for j in range(2):
        probe = load_probe(rd.root / "probes", j)
        assert probe.inputs.dtype == np.uint8 and probe.inputs.shape == (64, 4, 84, 84)
    assert res.timings["analysis_seconds"] > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(rd.tb))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"analysis/DemonAttack/conv1/drift", "analysis/Asterix/features/effective_rank",
            "analysis/DemonAttack/fc1/drift_protected", "train/policy_loss"} <= tags  # update_end still logs
    assert [e.step for e in acc.Scalars("analysis/DemonAttack/conv1/drift")] == [64, 96, 128]
