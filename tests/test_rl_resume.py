"""Kill a real `clrl run` (SIGKILL or SIGINT) and resume it: exact results in the deterministic mode."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from clrl.errors import CheckpointError
from clrl.io import load_checkpoint
from clrl.results import load_results, save_results

CONFIG = {
    "name": "resume",
    "kind": "rl",
    "seed": 3,
    "device": "cpu",
    "tasks": {"games": ["DemonAttack", "Asterix"], "steps_per_task": 192},
    "model": {"channels": [8, 16, 16], "hidden": 32},
    "regularizer": {"name": "agscl"},
    "train": {
        "n_envs": 2,
        "n_steps": 16,
        "n_minibatches": 2,
        "n_epochs": 2,
        "consolidation_samples": 64,
        "torch_threads": 1,
        "rollout_groups": 2,  # the pipelined rollout (the CPU configs') resumes bit-exactly too
        "deterministic": True,
        "checkpoint_every_updates": 2,  # 6 updates per task: checkpoints after updates 2 and 4
    },
    # analysis at every 2nd evaluation: a resumed run must pick the same points (counted over the run)
    "eval": {"every_steps": 64, "episodes": 2, "n_envs": 2, "max_frames": 200, "deterministic": False,
             "analysis_every": 2},
    "output": {"progress": False, "tensorboard": False, "figures": False},
}


def clrl(*args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "CLRL_MALLOC"}  # clrl's default allocator setup
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.Popen(
        [sys.executable, "-m", "clrl.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def wait_for_periodic_checkpoint(proc: subprocess.Popen, run_dir: Path, timeout: float = 240) -> dict:
    """Poll the run's latest checkpoint until one taken mid-task (update > 0) appears."""
    path = run_dir / "checkpoints" / "latest.pt"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (rc {proc.returncode}) before a periodic checkpoint:\n{out}\n{err}")
        if path.is_file():
            try:
                counters = load_checkpoint(path)["counters"]
            except CheckpointError:  # cannot happen with atomic writes; reported below if it does
                raise
            if counters["update"] > 0:
                return counters
        time.sleep(0.02)
    proc.kill()
    pytest.fail("no periodic checkpoint within the timeout")


def curve_view(res) -> list[tuple]:
    return [(p.step, p.task, p.scores) for p in res.curves]


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("resume") / "resume.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_results(config_file, tmp_path):
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    full = clrl("run", str(config_file), "--out", str(full_dir))  # runs alongside the killed one
    cut = clrl("run", str(config_file), "--out", str(cut_dir))
    counters = wait_for_periodic_checkpoint(cut, cut_dir)
    cut.send_signal(signal.SIGKILL)
    cut.wait(timeout=30)
    assert cut.returncode == -signal.SIGKILL
    # nothing torn: both files load, and the run is not finished
    killed = load_results(cut_dir)
    assert killed.status == "running"
    state = load_checkpoint(cut_dir / "checkpoints" / "latest.pt")
    assert state["counters"]["global_steps"] >= counters["global_steps"]

    resumed = clrl("run", "--resume", str(cut_dir))
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "run directory:" in out
    out_full, err_full = full.communicate(timeout=300)
    assert full.returncode == 0, err_full

    a, b = load_results(full_dir), load_results(cut_dir)
    assert a.status == b.status == "complete"
    assert b.timings["resumes"] == 1 and a.timings["resumes"] == 0
    assert a.R == b.R
    # a fresh `clrl run` process sets up glibc's malloc (clrl.allocator) and records it
    assert a.versions["malloc"] == b.versions["malloc"] == ("tuned" if platform.libc_ver()[0] == "glibc" else "default")
    assert curve_view(a) == curve_view(b)
    # the representation analysis too: probe sets restored from probes/, the same numbers
    strip = lambda res: [p.analysis and {k: v for k, v in p.analysis.items() if k != "seconds"} for p in res.curves]  # noqa: E731
    assert strip(a) == strip(b)
    measured = [p.analysis is not None for p in b.curves]
    assert any(measured) and not all(measured) and all(p.analysis["tasks"] for p in b.curves if p.analysis)
    assert [d["overall"] for d in a.diagnostics] == [d["overall"] for d in b.diagnostics]
    wa = load_checkpoint(full_dir / "checkpoints" / "latest.pt")["net"]
    wb = load_checkpoint(cut_dir / "checkpoints" / "latest.pt")["net"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_marks_the_run_and_resumes(config_file, tmp_path):
    run_dir = tmp_path / "int"
    proc = clrl("run", str(config_file), "--out", str(run_dir))
    wait_for_periodic_checkpoint(proc, run_dir)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    # CONFIG is deterministic: no checkpoint between the fixed points, and the message says so
    assert "stopping after the current update; the last fixed-point checkpoint is kept" in err
    res = load_results(run_dir)
    assert res.status == "failed" and res.reason.startswith("interrupted (SIGINT)")
    assert f"clrl run --resume {run_dir}" in res.reason
    state = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    assert state["counters"]["task"] < 2
    resumed = clrl("run", "--resume", str(run_dir))
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    done = load_results(run_dir)
    assert done.status == "complete" and done.reason is None
    assert all(v is not None for i, row in enumerate(done.R) for v in row[: i + 1])


def test_resume_of_a_finished_run_changes_nothing(config_file, tmp_path):
    """A complete run resumed returns its results without training again (in-process, fast)."""
    from clrl import cli

    data = yaml.safe_load(config_file.read_text())
    data["tasks"] = {"games": ["DemonAttack"], "steps_per_task": 32}
    data["train"]["deterministic"] = False
    data.setdefault("output", {})["figures"] = True
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump(data))
    done = tmp_path / "done"

    def files() -> dict[str, tuple[int, bytes]]:
        return {str(p.relative_to(done)): (p.stat().st_mtime_ns, p.read_bytes()) for p in done.rglob("*") if p.is_file()}

    before = torch.get_num_threads()
    try:
        assert cli.main(["run", str(small), "--out", str(done)]) == 0
        first = load_results(done)
        written = files()
        assert any(name.startswith("figures/") for name in written)
        assert cli.main(["run", "--resume", str(done)]) == 0
    finally:
        torch.set_num_threads(before)
    again = load_results(done)
    assert again.R == first.R and curve_view(again) == curve_view(first)
    # not even rewritten: no resume counted, no log line, no figure redrawn, no lock taken
    assert files() == written
    assert again.timings["resumes"] == 0


def test_resume_rejects_a_corrupt_checkpoint(config_file, tmp_path, capsys):
    from clrl import cli

    run_dir = tmp_path / "corrupt"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(config_file.read_text())
    (run_dir / "checkpoints" / "latest.pt").write_bytes(b"not a checkpoint")
    before = torch.get_num_threads()
    try:
        assert cli.main(["run", "--resume", str(run_dir)]) == 2
    finally:
        torch.set_num_threads(before)
    assert "corrupt, truncated or not a clrl checkpoint" in capsys.readouterr().err


def _two_short_tasks(config_file: Path, tmp_path: Path) -> Path:
    data = yaml.safe_load(config_file.read_text())
    data["tasks"] = {"games": ["DemonAttack", "Asterix"], "steps_per_task": 32}
    data["train"].update(deterministic=False)
    data["eval"].update(every_steps=10_000)
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_damaged_latest_checkpoint_says_how_to_go_on_from_a_task_checkpoint(config_file, tmp_path, capsys):
    """The advice in the errors works: copying the task checkpoint over latest.pt resumes."""
    from clrl import cli
    from clrl.io import save_checkpoint

    run_dir = tmp_path / "run"
    before = torch.get_num_threads()
    try:
        assert cli.main(["run", str(_two_short_tasks(config_file, tmp_path)), "--out", str(run_dir)]) == 0
        done = load_results(run_dir)
        ckdir = run_dir / "checkpoints"
        assert (ckdir / "task_00.pt").is_file()
        # pretend the run was cut in task 2 and its latest checkpoint then damaged, in several ways
        (ckdir / "task_01.pt").unlink()
        state = load_checkpoint(ckdir / "task_00.pt")
        save_results(run_dir / "results.json", load_results(run_dir).model_copy(update={"status": "running"}))
        for damage in ({"results": "{not json"}, {"counters": {"task": "one"}}, {"rng": {}}, {"heads": {0: "x"}}):
            save_checkpoint(ckdir / "latest.pt", {**state, **damage})
            assert cli.main(["run", "--resume", str(run_dir)]) == 2
            err = capsys.readouterr().err
            assert "latest.pt: the checkpoint's" in err and "cannot be restored" in err, err
            assert "copy the newest checkpoints/task_XX.pt over checkpoints/latest.pt" in err
        (ckdir / "latest.pt").unlink()
        assert cli.main(["run", "--resume", str(run_dir)]) == 2
        err = capsys.readouterr().err
        assert f"to resume from the end of its task 1, copy {ckdir / 'task_00.pt'} to {ckdir / 'latest.pt'}" in err
        (ckdir / "latest.pt").write_bytes((ckdir / "task_00.pt").read_bytes())
        assert cli.main(["run", "--resume", str(run_dir)]) == 0
    finally:
        torch.set_num_threads(before)
    again = load_results(run_dir)
    assert again.status == "complete" and again.timings["resumes"] == 1
    assert again.R[0][0] == done.R[0][0]  # task 1's scores came from the task checkpoint
    assert all(v is not None for i, row in enumerate(again.R) for v in row[: i + 1])
    # a damaged results.json beside a good checkpoint: the error says how to go on, and that works
    results = run_dir / "results.json"
    results.write_bytes(results.read_bytes()[:100])
    try:
        assert cli.main(["run", "--resume", str(run_dir)]) == 2
        err = capsys.readouterr().err
        assert "results.json aside" in err and "latest.pt holds the results" in err, err
        results.rename(run_dir / "results.json.damaged")
        assert cli.main(["run", "--resume", str(run_dir)]) == 0
    finally:
        torch.set_num_threads(before)
    rebuilt = load_results(run_dir)
    assert rebuilt.status == "complete" and rebuilt.R == again.R


def test_deterministic_interrupt_keeps_the_fixed_point_checkpoint(config_file, tmp_path, monkeypatch):
    """In the deterministic mode a signal must not checkpoint mid-way between the fixed update
    counts: the resumed run re-seeds its envs at the checkpoint's update, which only matches an
    uninterrupted run at those counts (checkpoint_every_updates = 2 here). In-process: the
    signal is simulated by setting the interrupt flag after update 3."""
    from clrl import config as config_mod
    from clrl.rl import agent, runner
    from clrl.rundir import RunDir

    cfg = config_mod.load_config(config_file)
    real_update = agent.TaskPPO.update
    calls = {"n": 0}
    run_holder: dict = {}

    def update(self, progress_remaining):
        stats = real_update(self, progress_remaining)
        calls["n"] += 1
        if calls["n"] == 3:
            run_holder["run"].interrupt.requested = "SIGINT"
        return stats

    monkeypatch.setattr(agent.TaskPPO, "update", update)
    real_init = runner.SequentialRun.__init__

    def init(self, *a, **kw):
        real_init(self, *a, **kw)
        run_holder["run"] = self

    monkeypatch.setattr(runner.SequentialRun, "__init__", init)
    rd = RunDir(tmp_path / "det")
    with pytest.raises(KeyboardInterrupt):
        runner.run_experiment(cfg, rd)
    state = load_checkpoint(rd.latest_checkpoint)
    assert state["counters"]["update"] == 2  # the fixed point before the signal, not update 3
    assert "last fixed-point checkpoint is kept" in run_holder["run"].interrupt.what_happens
    assert load_results(rd.root).reason.startswith("interrupted (SIGINT)")
