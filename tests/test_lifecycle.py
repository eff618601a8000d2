"""Issue 15: a run never loses work or lies about its state, in both front ends.

Resume without checkpoints, SIGINT/SIGTERM (at start-up, in a task, in the last evaluation),
crashes, divergence and a full disk, each with its exit code and what results.json then says;
the run-directory lock, and resume after config.yaml was edited or a checkpoint poisoned.
Signals are real (``os.kill`` of this process); a guard handler keeps a regression from killing
the test process.
"""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml

from clrl import cli
from clrl import io as clrl_io
from clrl.config import apply_overrides
from clrl.io import load_checkpoint, save_checkpoint
from clrl.lifecycle import EXIT_DIVERGED, EXIT_INTERRUPTED
from clrl.results import load_results, save_results
from clrl.rundir import run_lock

RL = {
    "name": "life",
    "kind": "rl",
    "seed": 0,
    "device": "cpu",
    "tasks": {"games": ["DemonAttack"], "steps_per_task": 64},
    "model": {"channels": [8, 16, 16], "hidden": 32},
    "train": {"n_envs": 2, "n_steps": 16, "n_minibatches": 2, "n_epochs": 1, "consolidation_samples": 32,
              "torch_threads": 1},
    "eval": {"every_steps": 32, "episodes": 2, "n_envs": 2, "max_frames": 200, "deterministic": False},
    "output": {"progress": False, "tensorboard": False, "figures": False},
}

SUP = {
    "name": "life",
    "kind": "supervised",
    "seed": 0,
    "device": "cpu",
    "tasks": {"dataset": "split_digits", "n_tasks": 2},
    "model": {"hidden": [16, 16]},
    "train": {"epochs": 1, "batch_size": 32},
    "eval": {"every_epochs": 0},
    "output": {"progress": False, "tensorboard": False, "figures": False},
}


@pytest.fixture(autouse=True)
def _guards():
    """Keep torch's thread count, and turn a stray SIGTERM into an exception, not a killed pytest."""
    threads = torch.get_num_threads()

    def guard(signum, frame):
        raise KeyboardInterrupt("test guard: SIGTERM reached no clrl handler")

    old = signal.signal(signal.SIGTERM, guard)
    yield
    signal.signal(signal.SIGTERM, old)
    torch.set_num_threads(threads)


def _config(tmp_path: Path, data: dict, **changes) -> Path:
    """``data`` with dotted-key changes (applied as ``--set`` applies them), written as YAML."""
    data = apply_overrides(data, [f"{key}={json.dumps(value)}" for key, value in changes.items()])
    path = tmp_path / f"{data['kind']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(tmp_path: Path, data: dict, name: str = "run", **changes) -> tuple[int, Path]:
    out = tmp_path / name
    return cli.main(["run", str(_config(tmp_path, data, **changes)), "--out", str(out)]), out


def _interrupt_supervised_after_task_0(tmp_path: Path, monkeypatch) -> Path:
    """A split-digits run stopped by SIGTERM in its second task (checkpoint after task 0)."""
    import clrl.supervised.loops as loops

    real = loops._task_loss

    def term_in_task_1(ctx, x, y, t):
        if t == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(ctx, x, y, t)

    monkeypatch.setattr(loops, "_task_loss", term_in_task_1)
    rc, out = _run(tmp_path, SUP)
    monkeypatch.setattr(loops, "_task_loss", real)
    assert rc == EXIT_INTERRUPTED
    return out


# --------------------------------------------------------------------------- item 1


@pytest.mark.parametrize("data", [RL, SUP], ids=["rl", "supervised"])
def test_resume_without_checkpoints_never_trains_over_results(tmp_path, data, capsys):
    rc, out = _run(tmp_path, data)
    assert rc == 0
    for f in (out / "checkpoints").iterdir():
        f.unlink()
    before = (out / "results.json").read_bytes()
    # a complete run: resuming is a no-op, checkpoints or not
    assert cli.main(["run", "--resume", str(out)]) == 0
    assert (out / "results.json").read_bytes() == before
    assert not any((out / "checkpoints").iterdir())
    # an unfinished run with scores but no checkpoint: refused, nothing touched
    res = load_results(out)
    res.status = "failed"
    (out / "results.json").write_text(res.model_dump_json(by_alias=True))
    before = (out / "results.json").read_bytes()
    capsys.readouterr()
    assert cli.main(["run", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert "latest.pt is missing" in err and f"{len(res.tasks)} finished tasks" in err
    assert (out / "results.json").read_bytes() == before
    assert not any((out / "checkpoints").iterdir())


# --------------------------------------------------------------------------- item 2


def test_supervised_sigterm_marks_interrupted_keeps_a_checkpoint_and_resumes(tmp_path, monkeypatch, capsys):
    out = _interrupt_supervised_after_task_0(tmp_path, monkeypatch)
    res = load_results(out)
    assert res.status == "failed" and res.reason.startswith("interrupted (SIGTERM)")
    assert "clrl run --resume" in res.reason and res.tasks_done() == 1
    assert load_checkpoint(out / "checkpoints" / "latest.pt")["task"] == 0
    assert cli.main(["run", "--resume", str(out)]) == 0
    assert load_results(out).status == "complete"
    # the same R as a run never interrupted
    rc, full = _run(tmp_path, SUP, name="full")
    assert rc == 0 and load_results(full).R == load_results(out).R


def test_supervised_sigint_in_the_first_task_resumes_from_the_initial_checkpoint(tmp_path, monkeypatch):
    import clrl.supervised.loops as loops

    real = loops._task_loss
    calls = {"n": 0}

    def int_once(ctx, x, y, t):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real(ctx, x, y, t)

    monkeypatch.setattr(loops, "_task_loss", int_once)
    rc, out = _run(tmp_path, SUP)
    assert rc == EXIT_INTERRUPTED
    res = load_results(out)
    assert res.status == "failed" and res.reason.startswith("interrupted (SIGINT)") and res.baseline is not None
    assert load_checkpoint(out / "checkpoints" / "latest.pt")["task"] == -1
    monkeypatch.setattr(loops, "_task_loss", real)
    assert cli.main(["run", "--resume", str(out)]) == 0
    rc, full = _run(tmp_path, SUP, name="full")
    assert load_results(out).R == load_results(full).R


def test_supervised_crash_marks_the_run_failed_with_the_exception(tmp_path, monkeypatch, capsys):
    import clrl.supervised.loops as loops

    def boom(ctx, x, y, t):
        raise RuntimeError("boom in the loss")

    monkeypatch.setattr(loops, "_task_loss", boom)
    rc, out = _run(tmp_path, SUP)
    assert rc == 1
    res = load_results(out)
    assert res.status == "failed" and res.reason == "RuntimeError: boom in the loss"


def test_supervised_divergence_exits_3_with_its_cause_on_stderr(tmp_path, monkeypatch, capsys):
    import clrl.supervised.loops as loops

    real = loops._task_loss
    monkeypatch.setattr(loops, "_task_loss", lambda ctx, x, y, t: real(ctx, x, y, t) * float("nan"))
    rc, out = _run(tmp_path, SUP)
    assert rc == EXIT_DIVERGED == 3
    err = capsys.readouterr().err
    assert "training diverged: non-finite loss" in err
    res = load_results(out)
    assert res.status == "failed" and res.reason.startswith("training diverged: non-finite loss")


def test_rl_divergence_exits_3_with_its_cause_on_stderr(tmp_path, monkeypatch, capsys):
    from clrl.rl import agent as agent_mod

    real = agent_mod.TaskPPO.update

    def poisoned(self, progress_remaining):
        stats = real(self, progress_remaining)
        with torch.no_grad():
            next(self.net.trunk.parameters()).view(-1)[0] = float("nan")
        return stats

    monkeypatch.setattr(agent_mod.TaskPPO, "update", poisoned)
    rc, out = _run(tmp_path, RL)
    assert rc == 3
    assert "training diverged: non-finite parameters" in capsys.readouterr().err
    assert load_results(out).status == "failed"


# --------------------------------------------------------------------------- item 10: signals at the edges


def test_rl_sigterm_during_the_baseline_is_recorded_and_resumable(tmp_path, monkeypatch):
    from clrl.rl.runner import SequentialRun

    real = SequentialRun._baseline

    def term_first(self):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(self)

    monkeypatch.setattr(SequentialRun, "_baseline", term_first)
    rc, out = _run(tmp_path, RL, **{"eval.baseline": True})
    assert rc == EXIT_INTERRUPTED
    res = load_results(out)
    assert res.status == "failed" and res.reason.startswith("interrupted (SIGTERM)")
    assert res.baseline is not None and (out / "checkpoints" / "latest.pt").is_file()
    monkeypatch.setattr(SequentialRun, "_baseline", real)
    assert cli.main(["run", "--resume", str(out)]) == 0
    assert load_results(out).status == "complete"


def test_supervised_sigterm_during_the_baseline_is_recorded(tmp_path, monkeypatch):
    import clrl.supervised.trainer as trainer

    real = trainer.evaluate_tasks
    calls = {"n": 0}

    def term_first(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate_tasks", term_first)
    rc, out = _run(tmp_path, SUP)
    assert rc == EXIT_INTERRUPTED
    res = load_results(out)
    assert res.status == "failed" and res.reason.startswith("interrupted (SIGTERM)")


def test_rl_sigterm_during_the_last_evaluation_leaves_the_run_complete(tmp_path, monkeypatch):
    from clrl.rl.runner import SequentialRun

    real = SequentialRun._evaluate

    def term_at_the_end(self, t, end_of_task):
        if end_of_task and t == self.T - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, t, end_of_task)

    monkeypatch.setattr(SequentialRun, "_evaluate", term_at_the_end)
    rc, out = _run(tmp_path, RL)
    assert rc == 0
    assert load_results(out).status == "complete"


# --------------------------------------------------------------------------- item 7: a full disk


def test_a_full_disk_marks_the_run_failed_and_exits_2(tmp_path, monkeypatch, capsys):
    real = clrl_io.atomic_write_bytes

    def full_for_task_checkpoints(path, data):
        if Path(path).name == "task_00.pt":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(clrl_io, "atomic_write_bytes", full_for_task_checkpoints)
    rc, out = _run(tmp_path, SUP)
    assert rc == 2
    err = capsys.readouterr().err
    assert "disk full" in err and "task_00.pt" in err and "Traceback" not in err
    res = load_results(out)
    assert res.status == "failed" and res.reason.startswith("disk full")


# --------------------------------------------------------------------------- item 5: the lock


def test_a_run_directory_in_use_is_refused_naming_the_holder(tmp_path, capsys):
    cfg = _config(tmp_path, SUP)
    out = tmp_path / "busy"
    out.mkdir()
    (out / "config.yaml").write_text(cfg.read_text())
    with run_lock(out):
        assert cli.main(["run", "--resume", str(out)]) == 2
        assert f"pid {os.getpid()}" in capsys.readouterr().err
        assert cli.main(["run", str(cfg), "--out", str(out), "--overwrite"]) == 2
        assert f"pid {os.getpid()}" in capsys.readouterr().err
    assert not (out / "results.json").exists()
    assert cli.main(["run", "--resume", str(out)]) == 0  # free again once the holder is done


# --------------------------------------------------------------------------- item 6: edited configs


def test_resume_refuses_an_edited_run_defining_key_and_allows_output_keys(tmp_path, monkeypatch, capsys):
    out = _interrupt_supervised_after_task_0(tmp_path, monkeypatch)
    original = (out / "config.yaml").read_text()
    data = yaml.safe_load(original)
    data["train"]["learning_rate"] = 0.5
    (out / "config.yaml").write_text(yaml.safe_dump(data))
    before = (out / "results.json").read_bytes()
    capsys.readouterr()
    assert cli.main(["run", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert "train.learning_rate was 0.001, now 0.5" in err
    assert (out / "results.json").read_bytes() == before
    data = yaml.safe_load(original)
    data["output"]["checkpoint_every_minutes"] = 1.0
    data["output"]["tensorboard"] = True
    (out / "config.yaml").write_text(yaml.safe_dump(data))
    assert cli.main(["run", "--resume", str(out)]) == 0


def test_rl_resume_refuses_other_games_under_the_old_heads(tmp_path, capsys):
    rc, out = _run(tmp_path, {**RL, "tasks": {"games": ["DemonAttack", "Asterix"], "steps_per_task": 32}})
    assert rc == 0
    data = yaml.safe_load((out / "config.yaml").read_text())
    data["tasks"]["games"] = ["SpaceInvaders", "Asterix"]  # 6 actions, like DemonAttack
    (out / "config.yaml").write_text(yaml.safe_dump(data))
    capsys.readouterr()
    assert cli.main(["run", "--resume", str(out)]) == 2
    assert "tasks.games was ['DemonAttack', 'Asterix'], now ['SpaceInvaders', 'Asterix']" in capsys.readouterr().err


# --------------------------------------------------------------------------- item 7: poisoned checkpoints


def test_a_nan_weight_in_a_checkpoint_is_refused(tmp_path, monkeypatch, capsys):
    out = _interrupt_supervised_after_task_0(tmp_path, monkeypatch)
    latest = out / "checkpoints" / "latest.pt"
    state = load_checkpoint(latest)
    name = next(iter(state["trunk"]))
    state["trunk"][name].view(-1)[0] = float("nan")
    save_checkpoint(latest, state)
    capsys.readouterr()
    assert cli.main(["run", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert "NaN or inf" in err and name in err


def test_a_nan_weight_in_an_rl_checkpoint_is_refused(tmp_path, capsys):
    rc, out = _run(tmp_path, RL)
    assert rc == 0
    # as if cut before the end (a complete run's resume reads no checkpoint)
    save_results(out / "results.json", load_results(out).model_copy(update={"status": "running"}))
    latest = out / "checkpoints" / "latest.pt"
    state = load_checkpoint(latest)
    name = next(k for k, v in state["net"].items() if v.is_floating_point())
    state["net"][name].view(-1)[0] = float("inf")
    save_checkpoint(latest, state)
    capsys.readouterr()
    assert cli.main(["run", "--resume", str(out)]) == 2
    assert "NaN or inf" in capsys.readouterr().err


def test_a_truncated_checkpoint_is_one_short_line_naming_the_file(tmp_path):
    """torch's message for a torn zip runs to a paragraph of advice; clrl keeps its first sentence."""
    from clrl.errors import CheckpointError

    path = tmp_path / "latest.pt"
    save_checkpoint(path, {"format": "clrl.checkpoint", "w": torch.arange(100_000, dtype=torch.float32)})
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    text = str(err.value)
    assert str(path) in text and "truncated" in text and "task_XX.pt" in text
    assert "\n" not in text and "likelihood" not in text and len(text) < 400


def test_task_checkpoints_are_listed_by_task_index(tmp_path):
    from clrl.rundir import RunDir

    rd = RunDir(tmp_path)
    assert rd.task_checkpoints() == {}
    rd.checkpoints.mkdir()
    for name in ("task_10.pt", "task_02.pt", "task_x.pt", "latest.pt"):
        (rd.checkpoints / name).write_bytes(b"")
    assert rd.task_checkpoints() == {2: rd.task_checkpoint(2), 10: rd.task_checkpoint(10)}
    assert list(rd.task_checkpoints()) == [2, 10]
