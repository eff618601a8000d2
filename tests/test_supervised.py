"""Supervised suite: splits, normalization, the trainer end to end (offline and single-pass, CIFAR
layouts and digits), resume equality, the NaN guard, past heads, the CLI, and the configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _cifar_fixture import write_cifar10, write_cifar100

from clrl.config import config_from_dict, load_config
from clrl.errors import ConfigError
from clrl.io import load_checkpoint
from clrl.results import load_results, save_results
from clrl.rundir import prepare_run_dir
from clrl.supervised.data import Normalizer, build_benchmark, split_classes, stratified_holdout
from clrl.supervised.trainer import run_experiment

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
GNC = ["relu", "relu", "relu", "relu", "st_hard:groups=32>gnc:groups=32"]


def _cfg(tasks: dict, train: dict | None = None, reg: dict | None = None, model: dict | None = None, **top):
    data = {
        "name": "t",
        "kind": "supervised",
        "seed": top.pop("seed", 0),
        "device": "cpu",
        "tasks": tasks,
        "model": model or {},
        "regularizer": reg or {"name": "none"},
        "train": {"epochs": 1, "batch_size": 16, **(train or {})},
        "eval": top.pop("eval", {}),
        "output": {"progress": False, "tensorboard": False, "figures": False, **top.pop("output", {})},
        **top,
    }
    return config_from_dict(data)


def _run(cfg, out: Path, resume: bool = False):
    rd = prepare_run_dir(cfg, out=out, overwrite=True) if not resume else None
    if resume:
        from clrl.rundir import open_run_dir

        rd, cfg = open_run_dir(out)
    return run_experiment(cfg, rd, resume=resume), rd


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root, train_per_class=6, test_per_class=2, style="py2")
    write_cifar100(root, train_per_class=6, test_per_class=2)
    return root


DIGITS = {"dataset": "split_digits"}
SMALL_MLP = {"hidden": [16, 16]}

# ----------------------------------------------------------------------------- data


def test_split_classes_partitions_and_depends_on_the_seed():
    a = split_classes(10, 2, 5, np.random.default_rng(0))
    assert sorted(c for task in a for c in task) == list(range(10))
    assert all(len(t) == 2 for t in a)
    assert split_classes(10, 2, 5, np.random.default_rng(0)) == a
    assert split_classes(10, 2, 5, np.random.default_rng(1)) != a
    assert split_classes(10, 2, 3, None) == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(ValueError, match="need 12 classes"):
        split_classes(10, 4, 3, None)


def test_class_blocks_keep_the_tasks_and_shuffle_their_order():
    # the AGS-CL code's Split CIFAR-100: task k holds fine labels 10k..10k+9, the seed orders them
    tasks = split_classes(100, 10, 10, np.random.default_rng(0), blocks=True)
    assert sorted(tasks) == [list(range(10 * b, 10 * b + 10)) for b in range(10)]
    assert tasks != sorted(tasks)  # this seed's order is not the identity
    assert split_classes(100, 10, 10, np.random.default_rng(1), blocks=True) != tasks
    first3 = split_classes(100, 10, 3, np.random.default_rng(0), blocks=True)
    assert first3 == tasks[:3]
    assert split_classes(100, 5, 20, None, blocks=True)[19] == [95, 96, 97, 98, 99]
    # a class permutation, instead, puts classes of different blocks together
    mixed = split_classes(100, 10, 10, np.random.default_rng(0))
    assert any(len({c // 10 for c in t}) > 1 for t in mixed)


def test_class_split_auto_is_blocks_on_cifar_and_a_permutation_on_digits():
    from clrl.config import SupervisedTasks
    from clrl.supervised.data import uses_class_blocks

    assert uses_class_blocks(SupervisedTasks(dataset="split_cifar100", root="x"))
    assert uses_class_blocks(SupervisedTasks(dataset="single_pass_cifar100", root="x"))
    assert not uses_class_blocks(SupervisedTasks(dataset="split_digits"))
    assert not uses_class_blocks(SupervisedTasks(dataset="split_cifar100", root="x", class_split="random"))
    assert uses_class_blocks(SupervisedTasks(dataset="split_digits", class_split="blocks"))


@pytest.mark.parametrize("reset", [True, False])
def test_an_lr_drop_with_reset_steps_like_a_new_adam(reset):
    from clrl.supervised.loops import drop_lr

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5))
    opt = torch.optim.Adam([w], lr=1e-2)
    for _ in range(4):  # moments built up under the old lr
        w.grad = torch.randn(5)
        opt.step()
    grad = torch.randn(5)
    fresh_w = torch.nn.Parameter(w.detach().clone())
    fresh = torch.optim.Adam([fresh_w], lr=1e-2 / 3)  # what the AGS-CL code builds at the drop
    drop_lr(opt, 1e-2 / 3, reset=reset)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 / 3)
    w.grad, fresh_w.grad = grad.clone(), grad.clone()
    opt.step()
    fresh.step()
    assert torch.equal(w, fresh_w) == reset


def test_stratified_holdout_takes_the_share_of_every_class():
    y = np.repeat([0, 1, 2], [10, 20, 3])
    keep, held = stratified_holdout(y, 0.1, np.random.default_rng(0))
    assert np.bincount(y[held]).tolist() == [1, 2, 1]  # round(.1*3) = 0 -> at least one
    assert sorted(np.concatenate([keep, held]).tolist()) == list(range(len(y)))
    keep, held = stratified_holdout(y, 0.0, np.random.default_rng(0))
    assert len(held) == 0 and len(keep) == len(y)


def test_holdout_never_takes_a_whole_class():
    """round(0.9 * 2) = 2 would hold out both rows of a class: one stays for training."""
    y = np.repeat([0, 1, 2], [2, 1, 10])
    keep, held = stratified_holdout(y, 0.9, np.random.default_rng(0))
    assert np.bincount(y[keep], minlength=3).tolist() == [1, 1, 1]
    assert np.bincount(y[held], minlength=3).tolist() == [1, 0, 9]
    # end to end: a tiny digits training split (test_fraction 0.99, 1-2 images per class) with
    # validation 0.9 still trains every class of every task (it used to stop as "diverged")
    cfg = _cfg({**DIGITS, "test_fraction": 0.99, "validation": 0.9})
    for task in build_benchmark(cfg.tasks, seed=0).tasks:
        assert set(task.y_train.tolist()) == {0, 1}, task.name


def test_normalizer_matches_numpy_per_channel():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(50, 3, 4, 4)).astype(np.uint8)
    norm = Normalizer.fit(x, scale=1 / 255, chunk=7)
    ref = x.astype(np.float64) / 255
    assert np.allclose(norm.mean, ref.mean(axis=(0, 2, 3)))
    assert np.allclose(norm.std, ref.std(axis=(0, 2, 3)))
    z = norm(x)
    assert z.dtype == np.float32
    assert np.allclose(z.mean(axis=(0, 2, 3)), 0, atol=1e-5) and np.allclose(z.std(axis=(0, 2, 3)), 1, atol=1e-4)
    flat = rng.normal(3, 2, size=(40, 64))
    nf = Normalizer.fit(flat)
    assert np.allclose(nf.mean, [flat.mean()]) and np.allclose(nf.std, [flat.std()])


def test_split_digits_tasks_are_disjoint_remapped_and_seeded():
    cfg = _cfg(DIGITS)
    bench = build_benchmark(cfg.tasks, seed=0)
    from sklearn.datasets import load_digits

    x_all, y_all = load_digits(return_X_y=True)
    assert len(bench.tasks) == 5 and bench.input_shape == (64,)
    assert sorted(c for t in bench.tasks for c in t.classes) == list(range(10))
    total = 0
    for task in bench.tasks:
        assert task.n_classes == 2 and task.name == f"digits{task.classes[0]}{task.classes[1]}"
        for split in ("train", "val", "test"):
            x, y = task.split(split)
            assert set(np.unique(y)) == {0, 1}
            total += len(y)
            # labels map back to the original digits through task.classes
            for row, label in zip(x[:5], y[:5], strict=True):
                matches = np.flatnonzero((x_all == row).all(axis=1))
                assert task.classes[label] in y_all[matches]
        n_test, n_all = len(task.y_test), int(np.isin(y_all, task.classes).sum())
        assert abs(n_test - 0.3 * n_all) <= 2  # stratified test split
        assert abs(len(task.y_val) - 0.1 * (n_all - n_test)) <= 2
    assert total == len(y_all)
    again = build_benchmark(cfg.tasks, seed=0)
    assert [t.classes for t in again.tasks] == [t.classes for t in bench.tasks]
    assert np.array_equal(again.tasks[0].x_val, bench.tasks[0].x_val)
    other = build_benchmark(cfg.tasks, seed=1)
    assert [t.classes for t in other.tasks] != [t.classes for t in bench.tasks]
    xt, yt = bench.tasks[0].tensors("train")
    assert xt.dtype == torch.float32 and yt.dtype == torch.int64 and xt.shape[1] == 64


def test_cifar_benchmarks_have_the_papers_shapes(cifar_root):
    b = build_benchmark(_cfg({"dataset": "split_cifar100", "root": str(cifar_root)}).tasks, seed=0)
    assert len(b.tasks) == 10 and all(t.n_classes == 10 for t in b.tasks)
    assert sorted(c for t in b.tasks for c in t.classes) == list(range(100))
    assert all(t.classes == list(range(t.classes[0], t.classes[0] + 10)) for t in b.tasks)  # blocks
    assert b.tasks[0].x_train.dtype == np.uint8 and b.input_shape == (3, 32, 32)
    # 6 train images per class, 10% validation -> 1 per class held out
    assert len(b.tasks[0].y_val) == 10 and len(b.tasks[0].y_train) == 50 and len(b.tasks[0].y_test) == 20
    b2 = build_benchmark(_cfg({"dataset": "cifar10_100", "root": str(cifar_root)}).tasks, seed=0)
    assert b2.task_names[0] == "cifar10" and len(b2.tasks) == 11
    assert b2.tasks[0].classes == list(range(10)) and b2.tasks[0].class_names[0] == "airplane"
    assert b2.tasks[0].norm is not b2.tasks[1].norm  # each source dataset its own statistics
    sp = build_benchmark(_cfg({"dataset": "single_pass_cifar100", "root": str(cifar_root), "validation": 0}).tasks, seed=0)
    assert len(sp.tasks) == 20 and all(t.n_classes == 5 for t in sp.tasks) and len(sp.tasks[0].y_val) == 0
    x, _ = sp.tasks[3].tensors("test")
    assert x.shape[1:] == (3, 32, 32)
    with pytest.raises(ConfigError, match="at most 10 tasks"):
        build_benchmark(_cfg({"dataset": "split_cifar100", "root": str(cifar_root), "n_tasks": 12}).tasks, 0)


# ----------------------------------------------------------------------------- trainer on CIFAR layouts


def _check_run(res, rd, T: int):
    assert res.status == "complete", res.reason
    R = np.array(res.R, dtype=float)
    assert R.shape == (T, T) and np.isfinite(R).all() and ((R >= 0) & (R <= 1)).all()
    assert len(res.baseline) == T and len(res.diagnostics) == T
    assert [p.task for p in res.curves if p.task == T - 1]
    disk = load_results(rd.root)
    assert disk.R == res.R and disk.status == "complete"
    assert disk.versions["malloc"] in ("tuned", "default")  # run_experiment set up the allocator
    assert rd.task_checkpoint(T - 1).is_file() and rd.latest_checkpoint.is_file()
    ck = load_checkpoint(rd.latest_checkpoint)
    assert ck["task"] == T - 1 and ck["format"] == "clrl.checkpoint"
    for key in ("acc", "bwt", "bti", "forgetting", "stability"):
        assert key in res.metrics


def test_offline_split_cifar100_two_tasks_with_agscl(cifar_root, tmp_path):
    cfg = _cfg({"dataset": "split_cifar100", "root": str(cifar_root), "n_tasks": 2, "validation": 0.2},
               train={"epochs": 2}, reg={"name": "agscl", "mu": 1.0, "lamb": 10.0, "rho": 0.5},
               output={"tensorboard": True})
    res, rd = _run(cfg, tmp_path / "run")
    _check_run(res, rd, 2)
    assert res.tasks == ["c100-0", "c100-1"]
    # the proximal step ran once per epoch: 2 epochs x 2 tasks, prox_every = batches per epoch
    diag = res.diagnostics[-1]
    assert diag["n_prox"] == 4 and diag["train"]["epochs"] == 2
    assert diag["train"]["batches_per_epoch"] == 4  # 50 training images (6 per class, 1 held out) / 16
    assert sorted(diag["classes"]) == diag["classes"] and len(diag["classes"]) == 10
    # per-epoch curve points, then the task-end point: steps are epochs so far
    # every epoch a point, the last epoch's being the end-of-task one (one point per step)
    assert [(p.step, p.task) for p in res.curves] == [(1, 0), (2, 0), (3, 1), (4, 1)]
    assert any(p.name.startswith("events.out.tfevents") for p in rd.tb.iterdir())


def test_offline_cifar10_100_with_ewc_gives_cifar10_first(cifar_root, tmp_path):
    cfg = _cfg({"dataset": "cifar10_100", "root": str(cifar_root), "n_tasks": 2},
               reg={"name": "ewc", "lamb": 100.0, "fisher": "empirical", "max_samples": 20},
               model={"dropout": False}, eval={"every_epochs": 0, "fwt_baseline": True})
    res, rd = _run(cfg, tmp_path / "run")
    _check_run(res, rd, 2)
    assert res.tasks == ["cifar10", "c100-0"] and len(res.curves) == 2


@pytest.mark.parametrize("activation", [GNC, "relu"], ids=["gnc", "relu"])
def test_single_pass_two_tasks_with_replay(cifar_root, tmp_path, activation):
    cfg = _cfg({"dataset": "single_pass_cifar100", "root": str(cifar_root), "n_tasks": 2, "validation": 0},
               train={"regime": "single_pass", "batch_size": 10, "buffer_size": 12, "replay_batch": 5,
                      "optimizer": "sgd", "learning_rate": 0.03},
               model={"activation": activation})
    res, rd = _run(cfg, tmp_path / "run")
    _check_run(res, rd, 2)
    ck = load_checkpoint(rd.latest_checkpoint)
    buf = ck["reservoir"]
    assert buf["seen"] == 60 and buf["size"] == 12  # 2 tasks x 5 classes x 6 images streamed past
    assert set(buf["task"].tolist()) <= {0, 1}
    assert [p.step for p in res.curves] == [30, 60]  # examples so far
    assert res.diagnostics[1]["train"]["batches"] == 3


def test_single_pass_replay_goes_through_each_tasks_own_head(cifar_root, tmp_path, monkeypatch):
    """Replayed examples of task 0 are scored by head 0 while task 1 trains, and head 0 is not updated."""
    from clrl.nets import MultiHead

    calls: list[tuple[int, int]] = []
    original = MultiHead.forward

    def spy(self, features, task):
        if self.training:
            calls.append((int(task), int(features.shape[0])))
        return original(self, features, task)

    monkeypatch.setattr(MultiHead, "forward", spy)
    cfg = _cfg({"dataset": "single_pass_cifar100", "root": str(cifar_root), "n_tasks": 2, "validation": 0},
               train={"regime": "single_pass", "batch_size": 10, "buffer_size": 100, "replay_batch": 20},
               eval={"fwt_baseline": False})
    _, rd = _run(cfg, tmp_path / "run")
    assert (0, 20) in calls  # replay batch of task 0 alone while task 0 trains
    assert any(t == 0 for t, _ in calls[calls.index((1, 10)):])  # task 0 replayed during task 1
    h0 = load_checkpoint(rd.task_checkpoint(0))["heads"]
    h1 = load_checkpoint(rd.task_checkpoint(1))["heads"]
    assert torch.equal(h0["heads.0.weight"], h1["heads.0.weight"])


# ----------------------------------------------------------------------------- trainer on digits


def test_past_heads_are_never_updated_and_future_heads_stay_fresh(tmp_path):
    cfg = _cfg({**DIGITS, "n_tasks": 3}, train={"epochs": 2}, model=SMALL_MLP)
    res, rd = _run(cfg, tmp_path / "run")
    c0, c1, c2 = (load_checkpoint(rd.task_checkpoint(t))["heads"] for t in range(3))
    for key in ("heads.0.weight", "heads.0.bias"):
        assert torch.equal(c0[key], c1[key]) and torch.equal(c0[key], c2[key])
    assert torch.equal(c0["heads.2.weight"], c1["heads.2.weight"])  # not trained before task 2
    assert not torch.equal(c1["heads.2.weight"], c2["heads.2.weight"])
    # R above the diagonal: untrained tasks, fresh heads, near chance on 2 classes
    assert res.R[0][2] is not None


def test_results_fill_R_row_by_row_and_baseline_is_the_untrained_model(tmp_path):
    cfg = _cfg({**DIGITS, "n_tasks": 3}, train={"epochs": 2}, model=SMALL_MLP)
    res, rd = _run(cfg, tmp_path / "run")
    from clrl.supervised.evaluation import evaluate_tasks
    from clrl.supervised.model import build_model

    torch.manual_seed(0)
    bench = build_benchmark(cfg.tasks, cfg.seed)
    fresh = build_model(cfg, bench)
    assert res.baseline == pytest.approx(evaluate_tasks(fresh, bench.tasks, range(3), 1000, "cpu"))
    ck = load_checkpoint(rd.task_checkpoint(0))
    trained = build_model(cfg, bench)
    trained.trunk.load_state_dict(ck["trunk"])
    trained.heads.load_state_dict(ck["heads"])
    assert res.R[0] == pytest.approx(evaluate_tasks(trained, bench.tasks, range(3), 1000, "cpu"))
    assert res.R[0][0] > 0.9  # two digits are easy
    assert res.metrics["acc"] == pytest.approx(float(np.mean(res.R[2])))


RESUME_CASES = {
    # AGS-CL: Omega, anchors, births and masks in the regularizer state
    "offline-agscl": ({"epochs": 2}, {"name": "agscl", "mu": 1.0, "lamb": 10.0, "rho": 0.5}),
    # EWC's true Fisher samples labels from torch's global RNG: needs the restored RNG state
    "offline-ewc": ({"epochs": 2}, {"name": "ewc", "lamb": 100.0, "fisher": "true"}),
    # the reservoir's storage and generator
    "single_pass-mas": ({"regime": "single_pass", "batch_size": 10, "buffer_size": 30}, {"name": "mas", "lamb": 1.0}),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_gives_the_same_R_as_an_uninterrupted_run(tmp_path, monkeypatch, case):
    import clrl.supervised.trainer as trainer

    train, reg = RESUME_CASES[case]
    cfg = _cfg({**DIGITS, "n_tasks": 3}, train=train, reg=reg, model={"hidden": [16, 16], "activation": "relu"})
    full, _ = _run(cfg, tmp_path / "full")

    real = trainer._run_task
    calls = {"n": 0}

    def interrupt_second(ctx, results, rd, t, train_task, run_start):
        calls["n"] += 1
        if calls["n"] == 2:  # after task 0: two tasks (one consolidation that feeds the next) run resumed
            raise KeyboardInterrupt
        return real(ctx, results, rd, t, train_task, run_start)

    monkeypatch.setattr(trainer, "_run_task", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        _run(cfg, tmp_path / "cut")
    cut = load_results(tmp_path / "cut")
    assert cut.status == "failed" and "interrupted" in cut.reason and cut.tasks_done() == 1
    monkeypatch.setattr(trainer, "_run_task", real)
    resumed, _ = _run(None, tmp_path / "cut", resume=True)
    assert resumed.status == "complete"
    assert resumed.R == full.R
    assert [(p.step, p.task, p.scores) for p in resumed.curves] == [(p.step, p.task, p.scores) for p in full.curves]
    assert resumed.baseline == full.baseline
    # resuming a complete run changes nothing
    again, _ = _run(None, tmp_path / "cut", resume=True)
    assert again.R == full.R and again.status == "complete"


def test_a_resumed_run_shows_each_tensorboard_step_once(tmp_path, monkeypatch):
    """What a stopped session logged after its last checkpoint (task 1's epochs) is dropped at
    the resume, which logs it again; every scalar is on the one step axis the purge uses."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import clrl.supervised.trainer as trainer

    cfg = _cfg({**DIGITS, "n_tasks": 2}, train={"epochs": 2}, model={"hidden": [16, 16], "activation": "relu"},
               output={"tensorboard": True})
    real = trainer.train_offline_task
    calls = {"n": 0}

    def stopped_after_training_task_1(ctx, t):
        out = real(ctx, t)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(trainer, "train_offline_task", stopped_after_training_task_1)
    with pytest.raises(KeyboardInterrupt):
        _run(cfg, tmp_path / "run")
    monkeypatch.setattr(trainer, "train_offline_task", real)
    _, rd = _run(None, tmp_path / "run", resume=True)
    _, full = _run(cfg, tmp_path / "full")

    def steps(run_dir) -> dict[str, list[int]]:
        acc = EventAccumulator(str(run_dir.tb))
        acc.Reload()
        return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}

    resumed = steps(rd)
    assert resumed == steps(full)  # the same events at the same steps as a run never stopped
    assert all(v == sorted(set(v)) for v in resumed.values())  # and each step once
    assert resumed["train/train_loss"] == [1, 2, 3, 4]  # epochs
    assert resumed["eval/avg_acc_seen"] == [2, 4]  # the task ends


def test_a_damaged_checkpoint_is_a_clear_error_and_loses_nothing(tmp_path):
    from clrl.errors import CheckpointError
    from clrl.io import load_checkpoint, save_checkpoint

    cfg = _cfg({**DIGITS, "n_tasks": 2}, train={"epochs": 1}, model={"hidden": [8], "activation": "relu"})
    _run(cfg, tmp_path / "run")
    results = tmp_path / "run" / "results.json"
    save_results(results, load_results(results).model_copy(update={"status": "running"}))
    kept = results.read_bytes()
    latest = tmp_path / "run" / "checkpoints" / "latest.pt"
    state = load_checkpoint(latest)
    for damage in ({"results": "{not json"}, {"counters": ["x"]}, {"rng": {}}):
        save_checkpoint(latest, {**state, **damage})
        with pytest.raises(CheckpointError, match=r"latest\.pt: the checkpoint's state cannot be restored"):
            _run(None, tmp_path / "run", resume=True)
        assert results.read_bytes() == kept


def test_non_finite_loss_fails_the_run_with_the_reason(tmp_path, monkeypatch):
    import clrl.supervised.loops as loops

    real = loops._task_loss
    calls = {"n": 0}

    def nan_later(ctx, x, y, t):
        calls["n"] += 1
        loss = real(ctx, x, y, t)
        return loss * float("nan") if t == 1 else loss

    monkeypatch.setattr(loops, "_task_loss", nan_later)
    cfg = _cfg({**DIGITS, "n_tasks": 2}, model=SMALL_MLP)
    res, rd = _run(cfg, tmp_path / "run")
    assert res.status == "failed"
    assert "training diverged" in res.reason and "non-finite loss" in res.reason and "task 1" in res.reason
    disk = load_results(rd.root)
    assert disk.status == "failed" and disk.R[0][0] is not None and disk.R[1][1] is None
    assert load_checkpoint(rd.latest_checkpoint)["task"] == 0  # the last good checkpoint stays


def test_vcl_betas_are_trained(tmp_path):
    cfg = _cfg({**DIGITS, "n_tasks": 1}, train={"epochs": 1, "vcl": {"gamma": 0.1, "n": 4}}, model=SMALL_MLP)
    res, rd = _run(cfg, tmp_path / "run")
    assert res.status == "complete"
    betas = load_checkpoint(rd.latest_checkpoint)["vcl"]
    assert betas and all(not torch.allclose(v, torch.ones_like(v)) for v in betas.values())


def test_lr_schedule_drops_and_stops(tmp_path):
    """With patience 1 and a tiny min_lr margin the task stops after the first drop below min_lr."""
    cfg = _cfg({**DIGITS, "n_tasks": 1}, train={"epochs": 30, "lr_patience": 1, "learning_rate": 0.05,
                                                  "min_lr": 0.05 / 3 / 3 * 1.01}, model=SMALL_MLP)
    res, _ = _run(cfg, tmp_path / "run")
    info = res.diagnostics[0]["train"]
    assert info["lr_drops"] == 2 and info["final_lr"] == pytest.approx(0.05 / 9)
    assert info["epochs"] < 30 and 0 <= info["best_epoch"] < info["epochs"]


def test_bad_model_choice_is_a_config_error(tmp_path, cifar_root):
    cfg = _cfg({"dataset": "split_cifar100", "root": str(cifar_root), "n_tasks": 1}, model={"net": "digits"})
    with pytest.raises(ConfigError, match="model.net"):
        _run(cfg, tmp_path / "run")
    with pytest.raises(ConfigError, match="2n = 10"):
        _cfg(DIGITS, train={"batch_size": 8, "vcl": {"gamma": 1.0, "n": 5}})


def test_a_replay_buffer_outside_the_single_pass_regime_is_a_config_error():
    """The offline loop never replays: a buffer there would be silently ignored."""
    with pytest.raises(ConfigError, match=r"train: buffer_size = 10: the reservoir replays only in the single-pass regime"):
        _cfg(DIGITS, train={"buffer_size": 10})
    assert _cfg(DIGITS, train={"regime": "single_pass", "buffer_size": 10}).train.buffer_size == 10
    assert _cfg(DIGITS, train={"buffer_size": 0}).train.regime == "offline"


def test_agscl_on_a_trunk_with_batchnorm_is_a_one_line_cli_error(tmp_path, capsys):
    """AGS-CL refuses normalization layers (issue 16, departure 2): exit 2 naming the module."""
    from clrl.cli import main

    code = main(["run", str(CONFIGS / "split_digits.yaml"), "--set", "model.activation=bn>relu",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "BatchNorm" in err
    assert err.startswith(f"clrl: error: {CONFIGS / 'split_digits.yaml'} with --set model.activation=bn>relu: "
                          "model.activation: given 'bn>relu', which regularizer.name agscl cannot work with: trunk module")


def test_missing_cifar_folder_is_a_one_line_cli_error(tmp_path, capsys):
    from clrl.cli import main

    code = main(["run", str(CONFIGS / "split_cifar100_agscl.yaml"), "--set", f"tasks.root={tmp_path / 'none'}",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"clrl: error: {CONFIGS / 'split_cifar100_agscl.yaml'} with --set tasks.root={tmp_path / 'none'}: "
                          "tasks.root: CIFAR data not found")


def test_cli_runs_split_digits_and_prints_R_and_metrics(tmp_path, capsys):
    from clrl.cli import main

    code = main(["run", str(CONFIGS / "split_digits.yaml"), "--set", "train.epochs=1", "--set", "model.hidden=[16]",
                 "--set", "output.progress=false", "--set", "output.figures=false", "--set", "output.tensorboard=false",
                 "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 0
    for word in ("accuracy on task j after training task i", "ACC", "BWT", "BTI", "Forgetting", "S"):
        assert word in out
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["status"] == "complete" and len(saved["R"]) == 5


SUPERVISED_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if "kind: supervised" in p.read_text())


def test_every_supervised_config_is_listed():
    names = {p.name for p in SUPERVISED_CONFIGS}
    assert {"split_digits.yaml", "split_digits_ewc.yaml", "cifar10_100_agscl.yaml", "single_pass_cifar100_gnc.yaml"} <= names


@pytest.mark.parametrize("path", SUPERVISED_CONFIGS, ids=lambda p: p.name)
def test_shipped_supervised_configs_validate(path):
    cfg = load_config(path)
    if cfg.tasks.dataset != "split_digits":
        assert cfg.tasks.root == "data"


# ----------------------------------------------------------------------------- the real check


@pytest.mark.slow
def test_agscl_beats_finetuning_on_split_digits(tmp_path):
    accs = {}
    for name in ("split_digits", "split_digits_finetune"):
        cfg = load_config(CONFIGS / f"{name}.yaml", ["output.progress=false", "output.tensorboard=false"])
        res, _ = _run(cfg, tmp_path / name)
        accs[name] = res.metrics["acc"]
    assert accs["split_digits"] > accs["split_digits_finetune"] + 0.05, accs


# ----------------------------------------------------------------------------- the digits table


def test_digits_table_rows_against_hand_computed_scores():
    from clrl.results import Reference, new_results
    from clrl.supervised.table import markdown_table, table_rows

    def res(R, ref_diag=None):
        r = new_results("supervised", "x", 0, {}, ["a", "b"])
        r.R = R
        if ref_diag is not None:
            r.reference = Reference(run="ft", max_scores=ref_diag, diag=ref_diag)
        return r

    ft = [res([[0.9, 0.5], [0.6, 0.8]]), res([[1.0, 0.5], [0.8, 1.0]])]
    reg = [res([[0.9, 0.5], [0.9, 0.4]], [0.9, 0.8]), res([[0.8, 0.5], [0.8, 0.5]], [1.0, 1.0])]
    rows = table_rows({"Fine-tuning": ft, "AGS-CL": reg})
    # fine-tuning: ACC (0.7, 0.9), BWT (-0.3, -0.2), forgetting (0.3, 0.2), P 1, S ((0.6/0.9+1)/2, (0.8+1)/2)
    assert rows["Fine-tuning"]["acc"] == pytest.approx((0.8, np.std([0.7, 0.9], ddof=1)))
    assert rows["Fine-tuning"]["bwt"][0] == pytest.approx(-0.25)
    assert rows["Fine-tuning"]["forgetting"][0] == pytest.approx(0.25)
    assert rows["Fine-tuning"]["plasticity"] == pytest.approx((1.0, 0.0))
    assert rows["Fine-tuning"]["stability"][0] == pytest.approx(((0.6 / 0.9 + 1) / 2 + 0.9) / 2)
    # AGS-CL: P = mean(R[i][i] / ft[i][i]) = ((0.9/0.9 + 0.4/0.8)/2, (0.8/1 + 0.5/1)/2) = (0.75, 0.65)
    assert rows["AGS-CL"]["plasticity"] == pytest.approx((0.7, np.std([0.75, 0.65], ddof=1)))
    assert rows["AGS-CL"]["forgetting"] == pytest.approx((0.0, 0.0))
    md = markdown_table(rows).splitlines()
    assert md[0] == "| Method | ACC | BWT | Forgetting | P | S |"
    assert md[2].startswith("| Fine-tuning | 0.800 ± 0.141 | -0.250 ± 0.071 |")


def test_digits_table_reruns_a_run_whose_config_or_reference_changed(tmp_path, monkeypatch):
    """Saved results are reused only while they are the same run: an edited config file, or a
    redone fine-tuning reference, makes them stale (the table would otherwise print old numbers
    under the new configs)."""
    import clrl.supervised.trainer as trainer
    from clrl.supervised.table import run_method

    runs: list[str] = []
    real = trainer.run_experiment

    def counted(cfg, rd, resume=False):
        runs.append(rd.root.name)
        return real(cfg, rd, resume)

    monkeypatch.setattr(trainer, "run_experiment", counted)

    def write(path: Path, lr: float) -> Path:
        path.write_text(f"name: tiny\nkind: supervised\ndevice: cpu\ntasks: {{dataset: split_digits, n_tasks: 2}}\n"
                        f"model: {{hidden: [8]}}\ntrain: {{epochs: 1, learning_rate: {lr}}}\n"
                        "eval: {analysis: false}\noutput: {tensorboard: false}\n")
        return path

    ft_cfg, reg_cfg = write(tmp_path / "ft.yaml", 0.01), write(tmp_path / "reg.yaml", 0.01)
    ft = run_method(ft_cfg, tmp_path / "ft", 0, None)
    reg = run_method(reg_cfg, tmp_path / "reg", 0, tmp_path / "ft")
    assert run_method(reg_cfg, tmp_path / "reg", 0, tmp_path / "ft").R == reg.R and runs == ["ft", "reg"]  # reused
    write(reg_cfg, 0.002)  # the config was edited: run again with the new value
    reg2 = run_method(reg_cfg, tmp_path / "reg", 0, tmp_path / "ft")
    assert reg2.config["train"]["learning_rate"] == 0.002 and runs == ["ft", "reg", "reg"]
    write(ft_cfg, 0.05)  # the reference was redone: the dependant is stale too
    ft2 = run_method(ft_cfg, tmp_path / "ft", 0, None)
    assert ft2.R != ft.R and runs[-1] == "ft"
    reg3 = run_method(reg_cfg, tmp_path / "reg", 0, tmp_path / "ft")
    assert reg3.reference.diag == [ft2.R[0][0], ft2.R[1][1]] and runs == ["ft", "reg", "reg", "ft", "reg"]


@pytest.mark.parametrize("dataset", ["split_digits", "split_cifar100", "cifar10_100", "single_pass_cifar100"])
def test_task_plan_is_what_the_benchmark_builds(cifar_root, dataset):
    from clrl.supervised.data import task_plan

    for seed in (0, 5):
        cfg = _cfg({"dataset": dataset, "root": str(cifar_root)}, seed=seed)
        bench = build_benchmark(cfg.tasks, seed)
        assert task_plan(cfg.tasks, seed) == [(t.name, t.classes) for t in bench.tasks]


def test_a_reference_of_other_classes_or_unfinished_is_refused_before_the_run_folder(cifar_root, tmp_path, capsys):
    """CIFAR task names (c100-0, ...) do not say which class block a task holds: a fine-tuning run
    of another seed has the same names but other tasks, so its R[i][i] is no reference for P."""
    from clrl.cli import main

    small = {"dataset": "split_cifar100", "root": str(cifar_root), "n_tasks": 2}
    ft = _cfg(small, seed=1, model={"dropout": False}, eval={"analysis": False, "fwt_baseline": False})
    _run(ft, tmp_path / "ft_seed1")
    argv = ["run", str(CONFIGS / "split_cifar100_finetune.yaml"), "--set", f"tasks.root={cifar_root}", "--set", "tasks.n_tasks=2",
            "--set", "train.epochs=1", "--set", "device=cpu", "--set", "output.progress=false",
            "--set", f"reference={tmp_path / 'ft_seed1'}", "--out", str(tmp_path / "run")]
    assert main([*argv, "--set", "seed=0"]) == 2
    err = capsys.readouterr().err
    assert "reference: " in err and "task 0 (c100-0) holds classes" in err and not (tmp_path / "run").exists()
    # the trainer checks it too (scripts call run_experiment without the CLI's preflight)
    reg = _cfg(small, seed=0, reference=str(tmp_path / "ft_seed1"))
    with pytest.raises(ConfigError, match=r"task 0 \(c100-0\) holds classes"):
        _run(reg, tmp_path / "direct")
    # the same seed is the same tasks: accepted (validate builds what the run builds)
    assert main(["validate", *argv[1:-2], "--set", "seed=1"]) == 0
    # and an unfinished reference is refused, as for Atari runs
    res = load_results(tmp_path / "ft_seed1")
    save_results(tmp_path / "ft_seed1" / "results.json", res.model_copy(update={"status": "failed", "reason": "x"}))
    assert main([*argv, "--set", "seed=1"]) == 2
    assert "is not a finished run (status failed" in capsys.readouterr().err and not (tmp_path / "run").exists()
