"""The sequential Atari runner end to end on real (tiny) ALE runs: results.json, heads, the
AGS-CL prox cadence, normalized rewards, the NaN guard and the CLI's errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from clrl import cli
from clrl.allocator import malloc_mode
from clrl.config import apply_overrides, config_from_dict
from clrl.io import load_checkpoint
from clrl.results import load_results
from clrl.rl import agent as agent_mod
from clrl.rl.runner import run_experiment
from clrl.rundir import prepare_run_dir

GAMES = ["DemonAttack", "Asterix"]  # a sampling untrained net scores > 0 on both within 200 frames

TINY = {
    "name": "tiny",
    "kind": "rl",
    "seed": 0,
    "device": "cpu",
    "tasks": {"games": GAMES, "steps_per_task": 64},
    "model": {"channels": [8, 16, 16], "hidden": 32},
    "train": {
        "n_envs": 2,
        "n_steps": 16,
        "n_minibatches": 2,
        "n_epochs": 2,
        "consolidation_samples": 64,
        "torch_threads": 1,
    },
    "eval": {"every_steps": 32, "episodes": 2, "n_envs": 2, "max_frames": 200, "deterministic": False},
    "output": {"progress": False, "tensorboard": True, "figures": False},
}


def tiny(**changes) -> dict:
    """TINY with dotted-key changes, e.g. tiny(**{"train.n_epochs": 1}), applied as ``--set`` applies
    them (JSON values are YAML)."""
    return apply_overrides(TINY, [f"{key}={json.dumps(value)}" for key, value in changes.items()])


def run(data: dict, out: Path):
    cfg = config_from_dict(data)
    rd = prepare_run_dir(cfg, out=out)
    return run_experiment(cfg, rd), rd


@pytest.fixture(scope="module")
def finetune(tmp_path_factory):
    """One tiny fine-tuning run shared by the tests that only read it."""
    before = torch.get_num_threads()
    res, rd = run(tiny(**{"eval.baseline": True}), tmp_path_factory.mktemp("rl") / "finetune")
    torch.set_num_threads(before)
    return res, rd


def test_end_to_end_results_json(finetune):
    res, rd = finetune
    disk = load_results(rd.root)
    assert disk.status == "complete" and res.status == "complete"
    assert disk.tasks == GAMES
    R = disk.R
    assert R[0][1] is None
    assert all(isinstance(v, float) for v in (R[0][0], R[1][0], R[1][1]))
    # every_steps 32, 2 updates of 32 steps per task: a mid-task point and an end-of-task point
    assert [p.step for p in disk.curves] == [32, 64, 96, 128]
    assert [p.task for p in disk.curves] == [0, 0, 1, 1]
    assert [len(p.scores) for p in disk.curves] == [1, 1, 2, 2]
    assert disk.curves[1].scores == R[0][:1] and disk.curves[3].scores == R[1]
    assert {"torch", "stable-baselines3", "ale-py"} <= set(disk.versions)
    assert disk.versions["malloc"] == malloc_mode() in ("tuned", "default")  # set by run_experiment
    assert [d["method"] for d in disk.diagnostics] == ["none", "none"]
    assert [d["game"] for d in disk.diagnostics] == GAMES
    t = disk.timings
    assert t["env_steps_per_task"] == [64, 64] and t["env_steps_per_s"] > 0
    assert len(t["seconds_per_task"]) == 2 and t["eval_seconds"] > 0
    assert t["wall_seconds"] >= sum(t["seconds_per_task"]) > t["train_seconds"] > 0
    assert disk.metrics["acc"] == pytest.approx(np.mean(R[1]))
    assert disk.config["tasks"]["games"] == GAMES
    assert len(disk.baseline) == 2 and all(isinstance(b, float) for b in disk.baseline)


def test_finished_task_heads_are_bit_identical_after_the_next_task(finetune):
    _, rd = finetune
    after0 = load_checkpoint(rd.task_checkpoint(0))
    final = load_checkpoint(rd.latest_checkpoint)
    assert after0["counters"]["task"] == 1 and final["counters"]["task"] == 2
    head_keys = [k for k in after0["net"] if k.startswith(("actor.heads.0.", "critic.heads.0."))]
    assert len(head_keys) == 4
    for k in head_keys:
        assert torch.equal(after0["net"][k], final["net"][k]), k
    trunk_keys = [k for k in after0["net"] if k.startswith("trunk.")]
    assert any(not torch.equal(after0["net"][k], final["net"][k]) for k in trunk_keys), "task 1 must train the trunk"
    assert "actor.heads.1.weight" in final["net"] and "actor.heads.1.weight" not in after0["net"]


def test_tensorboard_has_losses_evaluations_and_regularizer(finetune):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, rd = finetune
    acc = EventAccumulator(str(rd.tb))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/policy_loss", "train/value_loss", "train/entropy", "eval/DemonAttack", "eval/Asterix"} <= tags
    assert "regularizer/overall/sparsity" in tags
    assert [e.step for e in acc.Scalars("regularizer/overall/sparsity")] == [64, 128]  # the task ends
    assert [e.step for e in acc.Scalars("eval/Asterix")] == [96, 128]


def test_log_file_names_tasks_and_evaluations(finetune):
    _, rd = finetune
    text = rd.log_path.read_text()
    assert "task 1/2: DemonAttack" in text and "task 2/2: Asterix" in text
    assert "eval at step 128" in text and "run complete" in text


def test_normalized_rewards_with_a_reference_run(finetune, tmp_path):
    ref_res, ref_rd = finetune
    res, _ = run(tiny(name="ewc", reference=str(ref_rd.root), regularizer={"name": "ewc", "lamb": 10.0}), tmp_path / "ewc")
    assert res.status == "complete"
    ref_max = np.array([max(p.scores[j] for p in ref_res.curves if len(p.scores) > j) for j in range(2)])
    assert (ref_max > 0).all(), "the reference games must score above 0 for this test to mean anything"
    R = np.array([[np.nan if v is None else v for v in row] for row in res.R])
    m = res.metrics
    np.testing.assert_allclose(np.array(m["normalized_R"], dtype=float), R / ref_max, equal_nan=True)
    expected_curve = [sum(s / ref_max[k] for k, s in enumerate(p.scores)) for p in res.curves]
    np.testing.assert_allclose(m["accumulated_normalized_reward"], expected_curve)
    ref_diag = np.array([ref_res.R[i][i] for i in range(2)])
    expected_p = [R[i, i] / ref_diag[i] if ref_diag[i] > 0 else None for i in range(2)]
    for got, want in zip(m["plasticity_per_task"], expected_p, strict=True):
        assert (got is None and want is None) or got == pytest.approx(want)
    assert res.reference.run == str(ref_rd.root)
    assert [d["method"] for d in res.diagnostics] == ["ewc", "ewc"]


@pytest.mark.parametrize("prox_every", [None, 1])
def test_agscl_prox_step_cadence_inside_ppo_training(tmp_path, monkeypatch, prox_every):
    """The prox runs every ``prox_every`` optimizer steps with alpha = the learning rate of that
    moment: the linear schedule gives lr0 in update 0 and lr0 / 2 in update 1 of 2, and on the
    first task every node is in G0, so every layer's threshold is alpha * mu.

    Mutation caught: a prox that uses the initial learning rate (e.g. ``optimizer.defaults``)."""
    from clrl.regularizers import agscl as agscl_mod
    from clrl.regularizers.agscl import AGSCL

    calls: list[tuple[int, int]] = []
    thresholds: list[list[float]] = []
    real, real_group = AGSCL.prox_now, agscl_mod.prox_group

    def spy(self, optimizer=None, lr=None):
        calls.append((self.task, self.steps))
        thresholds.append([])
        return real(self, optimizer, lr)

    def spy_group(v, threshold, center=None, check=True):
        thresholds[-1].append(sorted({float(t) for t in threshold}))
        return real_group(v, threshold, center, check)

    monkeypatch.setattr(AGSCL, "prox_now", spy)
    monkeypatch.setattr(agscl_mod, "prox_group", spy_group)
    reg = {"name": "agscl"} if prox_every is None else {"name": "agscl", "prox_every": prox_every}
    # 1 game, 2 updates x 3 epochs x 2 minibatches = 12 optimizer steps
    data = tiny(regularizer=reg, **{"tasks.games": ["DemonAttack"], "train.n_epochs": 3, "eval.every_steps": 10_000})
    res, _ = run(data, tmp_path / "agscl")
    assert res.status == "complete"
    every = 2 if prox_every is None else 1  # default: once per PPO epoch = n_minibatches steps
    assert calls == [(0, s) for s in range(every, 13, every)]
    lr0, mu = res.config["train"]["learning_rate"], res.config["regularizer"]["mu"]
    assert res.config["train"]["lr_schedule"] == "linear"
    for (_, step), thr in zip(calls, thresholds, strict=True):
        alpha = lr0 * (1.0 if step <= 6 else 0.5)  # steps 1-6: update 0, steps 7-12: update 1
        assert thr == [[pytest.approx(alpha * mu, rel=1e-6)]] * 4  # 3 conv layers and the linear one
    assert res.diagnostics[0]["method"] == "agscl"


def test_nan_guard_keeps_last_good_checkpoint_and_marks_failed(tmp_path, monkeypatch):
    real = agent_mod.TaskPPO.update
    count = {"n": 0}

    def poisoned(self, progress_remaining):
        stats = real(self, progress_remaining)
        count["n"] += 1
        if count["n"] == 2:
            with torch.no_grad():
                next(self.net.trunk.parameters()).view(-1)[0] = float("nan")
        return stats

    monkeypatch.setattr(agent_mod.TaskPPO, "update", poisoned)
    data = tiny(**{
        "tasks.games": ["DemonAttack"], "tasks.steps_per_task": 96,
        "train.deterministic": True, "train.checkpoint_every_updates": 1,
    })
    res, rd = run(data, tmp_path / "nan")
    assert res.status == "failed"
    assert "non-finite parameters" in res.reason and "last good checkpoint" in res.reason
    disk = load_results(rd.root)
    assert disk.status == "failed" and disk.reason == res.reason
    kept = load_checkpoint(rd.latest_checkpoint)
    assert kept["counters"]["update"] == 1  # the state after the first (good) update
    assert all(torch.isfinite(v).all() for v in kept["net"].values() if v.is_floating_point())


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_cli_bad_config_exits_2(tmp_path, capsys):
    bad = _write(tmp_path / "bad.yaml", tiny(**{"train.n_stepz": 3}))
    assert cli.main(["run", str(bad), "--out", str(tmp_path / "r1")]) == 2
    err = capsys.readouterr().err
    assert "train.n_stepz: unknown key (did you mean 'n_steps'?)" in err
    assert len(err.strip().splitlines()) == 1


def test_cli_unknown_game_exits_2(tmp_path, capsys):
    bad = _write(tmp_path / "bad.yaml", tiny(**{"tasks.games": ["Boxing", "Pongg"]}))
    assert cli.main(["run", str(bad), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert "unknown Atari game 'Pongg'" in err and "Pong" in err


def test_cli_bad_override_and_missing_reference_exit_2(tmp_path, capsys):
    good = _write(tmp_path / "ok.yaml", tiny())
    assert cli.main(["run", str(good), "--set", "train.n_minibatches=3", "--out", str(tmp_path / "r3")]) == 2
    assert "not divisible by n_minibatches" in capsys.readouterr().err
    ref = _write(tmp_path / "ref.yaml", tiny(reference=str(tmp_path / "nowhere")))
    assert cli.main(["run", str(ref), "--out", str(tmp_path / "r4")]) == 2
    assert "no results file here" in capsys.readouterr().err


def test_an_incomparable_reference_is_refused_before_the_run_directory_exists(finetune, tmp_path, capsys):
    _, ref_rd = finetune
    cfg = _write(tmp_path / "ref.yaml", tiny(reference=str(ref_rd.root), **{"eval.episodes": 3}))
    assert cli.main(["validate", str(cfg)]) == 2
    assert "is not comparable: eval.episodes" in capsys.readouterr().err
    assert cli.main(["run", str(cfg), "--out", str(tmp_path / "r5")]) == 2
    assert "is not comparable: eval.episodes" in capsys.readouterr().err
    assert not (tmp_path / "r5").exists()  # nothing left behind that a corrected re-run must clear


def test_minibatches_of_one_sample_are_a_config_error(tmp_path, capsys):
    good = _write(tmp_path / "ok.yaml", tiny())
    n_envs = TINY["train"]["n_envs"]
    argv = ["run", str(good), "--set", "train.n_steps=1", "--set", f"train.n_minibatches={n_envs}", "--out", str(tmp_path / "r6")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "= 1 sample; PPO needs at least 2" in err and "train" in err
    assert not (tmp_path / "r6").exists()


def test_updates_round_up_to_whole_rollouts():
    from clrl.rl.runner import updates_per_task

    assert updates_per_task(config_from_dict(tiny(**{"tasks.steps_per_task": 33}))) == 2
    assert updates_per_task(config_from_dict(tiny(**{"tasks.steps_per_task": 32}))) == 1
    assert updates_per_task(config_from_dict(tiny(**{"tasks.steps_per_task": 1}))) == 1


def test_baseline_scores_every_game_without_touching_the_run_rng(tmp_path, monkeypatch):
    """The untrained-network scores come from a copy under a forked RNG: the run draws the same."""
    from clrl.rl import runner as runner_mod
    from clrl.rl.evaluation import EvalResult
    from clrl.rl.runner import SequentialRun

    seen = []

    def fake_evaluate_many(jobs, env, **kw):
        out = []
        for job in jobs:
            obs = np.zeros((kw["n_envs"], 4, 84, 84), dtype=np.uint8)
            seen.append((job.game, job.act(obs).shape))
            out.append(EvalResult(mean=float(len(seen)), scores=[float(len(seen))], episodes=1, frames=0,
                                  seconds=0.0, games=[{"score": float(len(seen)), "frames": 4, "truncated": False}]))
        return out

    monkeypatch.setattr(runner_mod, "evaluate_many", fake_evaluate_many)
    cfg = config_from_dict(tiny(**{"eval.baseline": True}))
    sr = SequentialRun(cfg, prepare_run_dir(cfg, out=tmp_path / "b"))
    sr._build()
    sr.results = sr._fresh_results()
    state = torch.get_rng_state()
    sr._baseline()
    assert torch.equal(torch.get_rng_state(), state)
    assert sr.results.baseline == [1.0, 2.0]
    assert [[g.score for g in gs] for gs in sr.results.baseline_games] == [[1.0], [2.0]]
    assert sr.results.baseline_ci == [[1.0, 1.0], [2.0, 2.0]]
    assert seen == [("DemonAttack", (2,)), ("Asterix", (2,))]
    assert sr.net.tasks == []  # the run's own network got no heads


def test_bench_ppo_table_ratios_and_compute_bound(tmp_path):
    import json

    from clrl.bench.ppo import format_markdown, run_ppo_bench

    before = torch.get_num_threads()
    res = run_ppo_bench(game="Boxing", n_envs=2, n_steps=8, n_epochs=1, n_minibatches=1, updates=1, rounds=2,
                        methods=("none", "agscl"), threads=1, consolidation_samples=8, bound_seconds=0.2,
                        log=lambda *a: None)
    assert torch.get_num_threads() == before
    rows = {r["variant"]: r for r in res["rows"]}
    tuned_name = "sb3 stock + clrl malloc/openmp"
    piped_name = "clrl none (2 groups, 1 rollout thread)"
    assert list(rows) == ["sb3 stock", tuned_name, "clrl none", piped_name, "clrl none (sb3 loop)", "clrl agscl"]
    rounds = res["per_round"]
    assert len(rounds) == 2
    assert rows["clrl none"]["ratio"] == pytest.approx(np.median([r["clrl none"] / r["sb3 stock"] for r in rounds]))
    tuned = rows[tuned_name]
    assert tuned["ratio"] == pytest.approx(np.median([r["clrl none"] / r[tuned_name] for r in rounds]))
    assert "target" not in tuned and "ratio" not in rows["sb3 stock"]
    piped = rows[piped_name]  # its speed over fine-tuning's default (1 group)
    assert piped["ratio"] == pytest.approx(np.median([r[piped_name] / r["clrl none"] for r in rounds]))
    assert "target" not in piped and res["settings"]["pipelined_groups"] == 2
    # SB3 runs in its own processes: stock keeps glibc's and libgomp's defaults, the other gets clrl's settings
    from clrl.allocator import malloc_mode
    from clrl.openmp import SPINCOUNT

    assert res["settings"]["malloc"] == {"clrl": malloc_mode(), "sb3 stock": "default", tuned_name: malloc_mode()}
    assert res["settings"]["openmp"]["sb3 stock"] == "default"
    assert res["settings"]["openmp"][tuned_name] == f"spin {SPINCOUNT}"
    assert rows["clrl agscl"]["ratio"] == pytest.approx(np.median([r["clrl none"] / r["clrl agscl"] for r in rounds]))
    assert rows["clrl none"]["meets_target"] == (rows["clrl none"]["ratio"] >= 2.0)
    loop = rows["clrl none (sb3 loop)"]
    assert loop["ratio"] == pytest.approx(np.median([r["clrl none"] / r["clrl none (sb3 loop)"] for r in rounds]))
    assert "target" not in loop
    assert rows["clrl agscl"]["meets_target"] == (rows["clrl agscl"]["ratio"] <= 1.05)
    for name, row in rows.items():
        assert row["env_steps_per_s"] == pytest.approx(np.median([r[name] for r in rounds]))
    b = res["compute_bound"]
    assert b["env_steps_per_s"] == pytest.approx(1 / (1 / b["train_samples_per_s"] + 1 / b["inference_samples_per_s"]))
    m = res["machine_bound"]  # the compute bound plus the raw env, measured in the same run
    # inference after a pause of one raw env step: reported beside the bound, not in it
    assert b["pause_s"] == pytest.approx(2 / max(m["env_rate_windows"]), rel=1e-3)
    assert b["inference_after_pause_samples_per_s"] > 0
    assert set(m) >= {"env_steps_per_s", "env_rate", "clrl_none_share"} and m["env_rate"] > 0
    from clrl.bench.ppo import BOUND_WINDOWS

    # the raw env is timed once per round and BOUND_WINDOWS times at the end; the bound takes the best
    assert len(m["env_rate_windows"]) == len(rounds) + BOUND_WINDOWS
    assert m["env_rate"] == pytest.approx(max(m["env_rate_windows"]), abs=0.05)
    assert m["env_steps_per_s"] == pytest.approx(
        1 / (1 / b["train_samples_per_s"] + 1 / b["inference_samples_per_s"] + 1 / m["env_rate"]))
    assert m["clrl_none_share"] == pytest.approx(rows["clrl none"]["env_steps_per_s"] / m["env_steps_per_s"])
    assert m["pipelined_share"] == pytest.approx(piped["env_steps_per_s"] / m["env_steps_per_s"])
    assert m["best_share"] == max(m["clrl_none_share"], m["pipelined_share"])
    assert m["meets_target"] == (m["best_share"] >= 0.9)
    md = format_markdown(res)
    assert all(f"| {name} |" in md for name in rows) and "| compute bound |" in md and "| machine bound |" in md
    for name, row in rows.items():  # clrl's variants split the rollout; the phases add up to it
        split = row.get("rollout_phases_s_per_update")
        assert (split is not None) == name.startswith("clrl ")
        if split is not None:
            assert set(split) == ({"env", "inference", "buffer", "other"} | ({"conversions"} if "loop" not in name else set()))
            assert all(v >= 0 for v in split.values()) and split["env"] > 0 and split["inference"] > 0
            for r, ph in zip(res["rollout_phases_per_round"], res["phases_per_round"], strict=True):
                assert sum(r[name].values()) == pytest.approx(ph[name]["rollout"])
    for name, row in rows.items():  # seconds per update in each phase, medians over rounds
        for phase in ("rollout", "train"):
            assert row[f"{phase}_s_per_update"] == pytest.approx(np.median([r[name][phase] for r in res["phases_per_round"]]))
    for sps, phases in zip(res["per_round"], res["phases_per_round"], strict=True):
        for name in rows:  # both phases lie inside the timed update (16 env steps)
            assert 0 < phases[name]["rollout"] and 0 < phases[name]["train"]
            assert phases[name]["rollout"] + phases[name]["train"] < 16 / sps[name]
    json.dumps(res)  # plain data


def test_paused_rate_counts_the_calls_own_time_only():
    """Each call follows a sleep; the rate is calls x batch over the calls' own time alone (a fake
    clock: 10 ms pauses, 2 ms calls, 1 ms syncs, so 8 samples per 3 ms)."""
    from clrl.bench.ppo import _paused_rate

    now = [0.0]
    log: list[str] = []

    def sleep(s: float) -> None:
        log.append(f"sleep {s}")
        now[0] += s

    def fn() -> None:
        log.append("call")
        now[0] += 0.002

    def sync() -> None:
        log.append("sync")
        now[0] += 0.001

    rate = _paused_rate(fn, per_call=8, pause_s=0.01, seconds=0.1, sync=sync, clock=lambda: now[0], sleep=sleep)
    n = log.count("call")
    assert n == 34  # 0.1 s of 3 ms calls (20 at least); counting the pauses would give 8 in all
    assert log == ["sleep 0.01", "call", "sync"] * n
    assert rate == pytest.approx(8 / 0.003)


def test_machine_bound_is_the_harmonic_sum_of_the_three_rates():
    from clrl.bench.ppo import machine_bound

    # 4 epochs at 1000 samples/s (4 ms/step) + inference 2000/s (0.5 ms) + env 1000/s (1 ms) = 5.5 ms
    m = machine_bound({"train_samples_per_s": 1000.0, "inference_samples_per_s": 2000.0}, 1000.0, n_epochs=4)
    assert m == {"env_steps_per_s": pytest.approx(1000 / 5.5), "env_rate": 1000.0}


def test_bench_ppo_small_trunk_skips_sb3_stock_and_names_the_net():
    from clrl.bench.ppo import run_ppo_bench

    logs: list[str] = []
    res = run_ppo_bench(game="Boxing", n_envs=2, n_steps=8, n_epochs=1, n_minibatches=1, rounds=1, methods=("none",),
                        threads=1, consolidation_samples=8, bound_seconds=0.2, channels=(16, 32, 32), hidden=256,
                        sb3_loop=False, pipelined_groups=1, log=logs.append)
    assert [r["variant"] for r in res["rows"]] == ["clrl none"]
    assert any("skipped" in line for line in logs)
    s = res["settings"]
    assert s["network"] == "small trunk 16-32-32/256 relu" and (s["channels"], s["hidden"]) == ([16, 32, 32], 256)
    m = res["machine_bound"]
    assert m["target_share"] == 0.85 and m["meets_target"] == (m["clrl_none_share"] >= 0.85)


def test_bench_ppo_cli_net_options(monkeypatch):
    import argparse

    import clrl.bench.ppo as bench

    seen = {}
    monkeypatch.setattr(bench, "run_ppo_bench", lambda **kw: seen.update(kw) or {})
    monkeypatch.setattr(bench, "_print_table", lambda result: None)
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    bench.main(parser.parse_args(["--net", "quick", "--no-stock", "--device", "cpu"]))
    assert (seen["channels"], seen["hidden"]) == ((16, 32, 32), 256) and seen["device"] == "cpu"
    bench.main(parser.parse_args(["--channels", "8", "16", "16", "--hidden", "64", "--no-sb3-loop"]))
    assert (seen["channels"], seen["hidden"], seen["sb3_loop"]) == ((8, 16, 16), 64, False)
    from clrl.errors import UserError

    with pytest.raises(UserError, match="--channels"):
        bench.main(parser.parse_args(["--hidden", "0"]))


def test_bench_phase_note_says_where_a_gpu_forward_pass_shows():
    from clrl.bench.ppo import _phase_note

    assert "launch" not in _phase_note({"settings": {"device": "cpu"}})
    assert "wait for it" in _phase_note({"settings": {"device": "cuda"}})


@pytest.mark.parametrize(("dies_at", "resumes_from"), [(2, 0), (3, 64)], ids=["start", "task-end"])
def test_a_resumed_run_shows_each_tensorboard_step_once(tmp_path, monkeypatch, dies_at, resumes_from):
    """A run that dies resumes from its last checkpoint: the start (step 0) when it dies before
    the first mid-task checkpoint, else task 0's end. The TensorBoard events it logged after that
    checkpoint are dropped, not shown twice; those logged at the checkpoint's step stay."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    calls = {"n": 0}
    update = agent_mod.TaskPPO.update

    def dies(self, progress_remaining):  # 2 updates per task, no mid-task checkpoint (5 min apart)
        calls["n"] += 1
        if calls["n"] == dies_at:
            raise RuntimeError("killed here")
        return update(self, progress_remaining)

    monkeypatch.setattr(agent_mod.TaskPPO, "update", dies)
    cfg = config_from_dict(tiny())
    rd = prepare_run_dir(cfg, out=tmp_path / "run")
    with pytest.raises(RuntimeError, match="killed here"):  # marked failed, the checkpoint left as it was
        run_experiment(cfg, rd)
    assert load_checkpoint(rd.latest_checkpoint)["counters"]["global_steps"] == resumes_from
    monkeypatch.setattr(agent_mod.TaskPPO, "update", update)
    assert run_experiment(cfg, rd, resume=True).status == "complete"
    acc = EventAccumulator(str(rd.tb))
    acc.Reload()
    for tag in acc.Tags()["scalars"]:
        steps = [e.step for e in acc.Scalars(tag)]
        assert steps == sorted(set(steps)), tag
    assert [e.step for e in acc.Scalars("train/loss")] == [32, 64, 96, 128]
    assert [e.step for e in acc.Scalars("eval/DemonAttack")] == [32, 64, 96, 128]
    assert [e.step for e in acc.Scalars("regularizer/overall/sparsity")] == [64, 128]
