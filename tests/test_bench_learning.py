"""`clrl bench learning`: its statistics against hand computations, the SB3 adapter, and one
end-to-end run on a tiny budget (both methods, SB3 in its spawned process)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from clrl.bench.learning import _Schedule, interval, sb3_act, sb3_learning_rate, summarize


def test_interval_two_seeds_is_a_student_t_interval_by_hand():
    est = interval([10.0, 20.0])
    # mean 15, sample std 7.0711, t(0.975, 1) = 12.706: half width 12.706 * 7.0711 / sqrt(2) = 63.53
    assert est["point"] == 15.0
    assert est["hi"] - est["point"] == pytest.approx(12.7062 * math.sqrt(50.0) / math.sqrt(2), rel=1e-4)
    assert est["estimator"] == "mean over seeds"


def test_interval_one_seed_uses_its_evaluation_games():
    est = interval([3.0], episode_scores=[1.0, 3.0, 5.0])
    half = stats.t.ppf(0.975, 2) * 2.0 / math.sqrt(3)
    assert (est["point"], est["lo"], est["hi"]) == pytest.approx((3.0, 3.0 - half, 3.0 + half))


def test_interval_three_seeds_is_the_iqm_with_a_bootstrap_interval():
    est = interval([1.0, 2.0, 9.0, 4.0])
    # IQM of 4 values: trim one from each end -> mean(2, 4) = 3
    assert est["point"] == pytest.approx(3.0)
    assert est["lo"] <= est["point"] <= est["hi"] and est["lo"] >= 1.0 and est["hi"] <= 9.0
    assert est["estimator"] == "IQM over seeds"


def test_summary_ratio_and_parity():
    def run(method, seed, final):
        return {"game": "Pong", "method": method, "seed": seed, "curve": [{"mean": final, "scores": [final]}]}

    rows = summarize([run("clrl", 0, 10.0), run("clrl", 1, 14.0), run("sb3", 0, 20.0), run("sb3", 1, 24.0)], ["Pong"])
    (row,) = rows
    assert row["ratio"] == pytest.approx(12.0 / 22.0)
    assert row["parity"] is True  # two-seed t intervals this wide overlap
    far = summarize([run("clrl", s, 1.0 + 0.01 * s) for s in range(3)] + [run("sb3", s, 50.0 + s) for s in range(3)], ["Pong"])
    assert far[0]["parity"] is False


def test_schedule_evaluates_at_each_multiple_and_at_the_end():
    sched = _Schedule(every=100, total=320)
    due = [s for s in range(32, 321, 32) if sched.due(s)]
    assert due == [128, 224, 320]  # first update at or past 100, 200, 300 (-> 320, the end)


def test_sb3_trains_each_update_at_clrls_learning_rate():
    """SB3's learn() with the bench's schedule trains update j at lr * (1 - j / J), the rate
    clrl's runner gives update j (progress_remaining = 1 - j / J)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    from clrl.config import PPOConfig
    from clrl.rl.agent import learning_rate_schedule

    lr, J, n_steps = 1e-3, 3, 16
    model = PPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=1, seed=0), learning_rate=sb3_learning_rate(lr, J),
                n_steps=n_steps, batch_size=n_steps, n_epochs=1, seed=0, device="cpu")
    seen: list[float] = []
    train = model.train
    model.train = lambda: (train(), seen.append(model.policy.optimizer.param_groups[0]["lr"]))[0]
    model.learn(total_timesteps=J * n_steps)
    clrl_rate = learning_rate_schedule(PPOConfig(learning_rate=lr, lr_schedule="linear"))
    assert seen == pytest.approx([clrl_rate(1 - j / J) for j in range(J)])
    assert seen[-1] > 0


def test_sb3_adapter_samples_from_the_policys_distribution():
    from gymnasium import spaces
    from stable_baselines3.common.policies import ActorCriticCnnPolicy

    policy = ActorCriticCnnPolicy(spaces.Box(0, 255, (4, 84, 84), np.uint8), spaces.Discrete(3), lambda _: 1e-3)
    with torch.no_grad():
        policy.action_net.weight.zero_()
        policy.action_net.bias.copy_(torch.tensor([0.0, 0.0, 50.0]))  # action 2 almost surely
    obs = np.zeros((5, 4, 84, 84), dtype=np.uint8)
    a = sb3_act(policy, torch.Generator().manual_seed(0))(obs)
    assert a.shape == (5,) and a.dtype.kind == "i" and (a == 2).all()
    with torch.no_grad():
        policy.action_net.bias.zero_()  # uniform: the generator decides, reproducibly
    draw = [sb3_act(policy, torch.Generator().manual_seed(7))(obs) for _ in range(2)]
    assert np.array_equal(draw[0], draw[1])
    # the same random stream as clrl's own evaluation: with equal (uniform) probabilities, the
    # same draws as ActorCritic.actor_fn from an equally seeded generator
    from clrl.rl.policy import build_actor_critic

    net = build_actor_critic((4, 4, 4), 8, "relu")
    net.add_task(0, 3)
    with torch.no_grad():
        net.actor.heads[0].weight.zero_()
        net.actor.heads[0].bias.zero_()
    many = np.zeros((64, 4, 84, 84), dtype=np.uint8)
    ours = net.actor_fn(0, deterministic=False, generator=torch.Generator().manual_seed(7))(many)
    assert np.array_equal(sb3_act(policy, torch.Generator().manual_seed(7))(many), ours)
    assert len(set(ours.tolist())) == 3  # uniform draws, not one fixed action


def test_bench_learning_runs_end_to_end_on_a_tiny_budget(tmp_path, capsys):
    from clrl.cli import main

    code = main(["bench", "learning", "--quick", "--games", "Boxing", "--net", "quick", "--out", str(tmp_path),
                 "--threads", "1"])
    assert code == 0
    out = capsys.readouterr().out
    assert "clrl bench learning" in out and "seed 0 sb3" in out and "eval" in out
    res = json.loads((tmp_path / "bench_learning.json").read_text())
    assert {(r["method"], r["steps"]) for r in res["runs"]} == {("clrl", 64), ("sb3", 64)}
    for r in res["runs"]:
        assert [p["steps"] for p in r["curve"]] == [32, 64] and len(r["curve"][-1]["scores"]) == 1
    (row,) = res["summary"]
    assert row["game"] == "Boxing" and "clrl" in row and "sb3" in row
    assert res["clrl"]["model"]["init"] == "orthogonal" and res["clrl"]["train"]["value_loss"] == "sb3"
    assert (tmp_path / "bench_learning.png").stat().st_size > 0
    assert "| Boxing |" in (tmp_path / "bench_learning.md").read_text()


def test_bench_learning_bad_input_is_exit_2(tmp_path, capsys):
    from clrl.cli import main

    assert main(["bench", "learning", "--games", "Pongg", "--out", str(tmp_path)]) == 2
    assert main(["bench", "learning", "--steps", "0", "--out", str(tmp_path)]) == 2
    assert main(["bench", "learning", "--quick", "--set", "model.init=xavier", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "model.init" in err
