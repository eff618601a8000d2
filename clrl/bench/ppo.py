"""``clrl bench ppo``: env steps per second of clrl's PPO against SB3's stock Atari PPO.

One run, same game, same network (Nature CNN 32-64-64 / 512, ReLU), same PPO shape (8 envs x
128 steps, 4 epochs, 4 minibatches):

* ``sb3 stock``: ``make_atari_env`` (DummyVecEnv of Python wrappers) + ``VecFrameStack(4)`` +
  ``PPO("CnnPolicy")``, timed through ``learn``;
* ``clrl none``: clrl's :class:`~clrl.rl.agent.TaskPPO` on ale-py's C++ vector env, fine-tuning;
* ``clrl ewc|mas|agscl``: the same with the regularizer's hooks attached, on the second task after
  a consolidated first one (so the penalties and AGS-CL's masks, anchor and once-per-epoch
  proximal step are all live);
* the compute bound: forward+backward samples/s of the network at the minibatch size and
  inference samples/s at the rollout batch, giving the env steps/s that compute alone allows
  (``1 / (epochs / train_rate + 1 / inference_rate)``).

The variants are timed in interleaved rounds (every variant once per round, in rotating order)
and the ratios are taken within each round, then the median over rounds, so load from other
processes on a shared machine mostly cancels out of the ratios (absolute numbers do not).
Targets: clrl fine-tuning >= 1.5x SB3 stock; every regularizer within 1.05x of fine-tuning.

Threads matter on a small machine: with torch's default (one thread per core) SB3's
Python-side env stepping competes with torch's threads and clrl's C++ vector env does not,
which is most of the gap; with ``--threads 1`` both become compute-bound and the gap shrinks
to what the env costs SB3 on top of the compute bound.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["add_arguments", "main", "run_ppo_bench", "format_markdown"]

METHODS = ("none", "ewc", "mas", "agscl")
TARGET_SPEEDUP = 1.5
TARGET_OVERHEAD = 1.05


class _Variant:
    name: str

    def warmup(self) -> None:
        self.run(1)

    def run(self, updates: int) -> int:
        """Run ``updates`` PPO updates; return the env steps they took."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class _SB3Stock(_Variant):
    def __init__(self, game: str, n_envs: int, n_steps: int, n_epochs: int, n_minibatches: int,
                 device: str, seed: int) -> None:
        import ale_py
        import gymnasium as gym
        from stable_baselines3 import PPO
        from stable_baselines3.common.env_util import make_atari_env
        from stable_baselines3.common.vec_env import VecFrameStack

        gym.register_envs(ale_py)
        self.name = "sb3 stock"
        env = make_atari_env(f"{game}NoFrameskip-v4", n_envs=n_envs, seed=seed)
        self.env = VecFrameStack(env, n_stack=4)
        self.model = PPO(
            "CnnPolicy", self.env, n_steps=n_steps, n_epochs=n_epochs,
            batch_size=n_envs * n_steps // n_minibatches, learning_rate=2.5e-4, clip_range=0.1,
            ent_coef=0.01, vf_coef=0.5, device=device, seed=seed, verbose=0,
        )
        self.batch = n_envs * n_steps
        self._first = True

    def run(self, updates: int) -> int:
        self.model.learn(updates * self.batch, reset_num_timesteps=self._first)
        self._first = False
        return updates * self.batch

    def close(self) -> None:
        self.env.close()


class _Clrl(_Variant):
    """clrl's PPO on the second task of a two-task sequence (same game twice)."""

    def __init__(self, method: str, game: str, n_envs: int, n_steps: int, n_epochs: int,
                 n_minibatches: int, device: str, seed: int, consolidation_samples: int) -> None:
        from clrl.config import EnvConfig, PPOConfig
        from clrl.regularizers import build_regularizer
        from clrl.rl.agent import TaskPPO, collect_states
        from clrl.rl.envs import action_count, make_vec_env
        from clrl.rl.policy import build_actor_critic

        self.name = f"clrl {method}"
        torch.manual_seed(seed)
        env_cfg = EnvConfig()
        self.ppo = PPOConfig(n_envs=n_envs, n_steps=n_steps, n_epochs=n_epochs, n_minibatches=n_minibatches,
                             learning_rate=2.5e-4, clip_range=0.1, ent_coef=0.01)
        n_actions = action_count(game, env_cfg)
        self.net = build_actor_critic((32, 64, 64), 512, "relu").to(device)
        hp: dict[str, Any] = {"prox_every": n_minibatches} if method == "agscl" else {}
        self.reg = build_regularizer(method, self.net.trunk, heads=self.net.actor, **hp)
        env = make_vec_env(game, n_envs, env_cfg, seed, train=True)
        self.net.add_task(0, n_actions)
        first = TaskPPO(env, self.net, 0, self.ppo, device=device)
        first.reset_envs(seed)
        self.reg.begin_task(0, first.policy.optimizer)
        states = collect_states(first, consolidation_samples)
        self.reg.end_task(0, states, lambda x: self.net.logits(x, 0))
        self.net.add_task(1, n_actions)
        self.model = TaskPPO(env, self.net, 1, self.ppo, device=device)
        self.model.reset_envs(seed + 1)
        self.reg.begin_task(1, self.model.policy.optimizer)
        self.batch = n_envs * n_steps

    def run(self, updates: int) -> int:
        for _ in range(updates):
            self.model.update(1.0)
        return updates * self.batch

    def close(self) -> None:
        self.model.env.close()


def compute_bound(n_envs: int, n_epochs: int, minibatch: int, device: str, seconds: float = 3.0) -> dict[str, float]:
    """Samples/s of forward+backward+Adam (minibatch) and of inference (n_envs) for the network."""
    from clrl.rl.policy import build_actor_critic

    net = build_actor_critic((32, 64, 64), 512, "relu").to(device)
    net.add_task(0, 18)
    opt = torch.optim.Adam(net.task_parameters(0), lr=1e-4)
    x = torch.randint(0, 256, (minibatch, 4, 84, 84), dtype=torch.uint8, device=device)
    xi = x[:n_envs].clone()

    def rate(fn, batch: int) -> float:
        fn()
        _sync(device)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or n < 3:
            fn()
            n += 1
        _sync(device)
        return n * batch / (time.perf_counter() - start)

    def train_step() -> None:
        logits, value = net(x, 0)
        loss = logits.logsumexp(1).mean() + value.square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer() -> None:
        with torch.no_grad():
            net(xi, 0)

    train = rate(train_step, minibatch)
    inference = rate(infer, n_envs)
    return {
        "train_samples_per_s": train,
        "inference_samples_per_s": inference,
        "env_steps_per_s": 1.0 / (n_epochs / train + 1.0 / inference),
    }


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def run_ppo_bench(
    game: str = "Boxing",
    n_envs: int = 8,
    n_steps: int = 128,
    n_epochs: int = 4,
    n_minibatches: int = 4,
    updates: int = 1,
    rounds: int = 5,
    methods: tuple[str, ...] = METHODS,
    device: str = "cpu",
    threads: int | None = None,
    seed: int = 0,
    consolidation_samples: int = 256,
    stock: bool = True,
    bound_seconds: float = 3.0,
    log=print,
) -> dict[str, Any]:
    """Time every variant for ``updates`` PPO updates per round, ``rounds`` interleaved rounds."""
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    variants: list[_Variant] = []
    try:
        if stock:
            log("building sb3 stock ...")
            variants.append(_SB3Stock(game, n_envs, n_steps, n_epochs, n_minibatches, device, seed))
        for m in methods:
            log(f"building clrl {m} (consolidating a first task) ...")
            variants.append(_Clrl(m, game, n_envs, n_steps, n_epochs, n_minibatches, device, seed, consolidation_samples))
        for v in variants:
            v.warmup()
        per_round: list[dict[str, float]] = []
        for r in range(rounds):
            order = variants[r % len(variants):] + variants[: r % len(variants)]
            sps: dict[str, float] = {}
            for v in order:
                _sync(device)
                start = time.perf_counter()
                steps = v.run(updates)
                _sync(device)
                sps[v.name] = steps / (time.perf_counter() - start)
            per_round.append(sps)
            log(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {s:.0f}" for k, s in sps.items()))
        log("measuring the compute bound ...")
        bound = compute_bound(n_envs, n_epochs, n_envs * n_steps // n_minibatches, device, seconds=bound_seconds)
    finally:
        for v in variants:
            v.close()
        torch.set_num_threads(old_threads)

    names = [v.name for v in variants]
    rows = []
    for name in names:
        row: dict[str, Any] = {"variant": name, "env_steps_per_s": statistics.median(r[name] for r in per_round)}
        if name == "clrl none" and stock:
            row["ratio"] = statistics.median(r[name] / r["sb3 stock"] for r in per_round)
            row["ratio_of"] = "sb3 stock"
            row["target"] = f">= {TARGET_SPEEDUP}"
            row["meets_target"] = row["ratio"] >= TARGET_SPEEDUP
        elif name.startswith("clrl ") and name != "clrl none" and "clrl none" in names:
            # slowdown: fine-tuning's speed over the regularizer's (1.00 = no cost)
            row["ratio"] = statistics.median(r["clrl none"] / r[name] for r in per_round)
            row["ratio_of"] = "clrl none (slowdown)"
            row["target"] = f"<= {TARGET_OVERHEAD}"
            row["meets_target"] = row["ratio"] <= TARGET_OVERHEAD
        rows.append(row)
    if "clrl none" in names:
        fine = next(r for r in rows if r["variant"] == "clrl none")
        bound["clrl_none_share"] = fine["env_steps_per_s"] / bound["env_steps_per_s"]
    return {
        "game": game,
        "settings": {"n_envs": n_envs, "n_steps": n_steps, "n_epochs": n_epochs, "n_minibatches": n_minibatches,
                     "updates_per_round": updates, "rounds": rounds, "device": str(device),
                     "torch_threads": int(threads) if threads else old_threads, "network": "Nature CNN 32-64-64/512 relu"},
        "rows": rows,
        "per_round": per_round,
        "compute_bound": bound,
    }


def _ratio_text(row: dict[str, Any]) -> str:
    if "ratio" not in row:
        return "-"
    mark = "ok" if row["meets_target"] else "MISSED"
    return f"{row['ratio']:.2f}x vs {row['ratio_of']} (target {row['target']}: {mark})"


def format_markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"# clrl bench ppo: {result['game']}, {s['network']}",
        "",
        f"{s['n_envs']} envs x {s['n_steps']} steps, {s['n_epochs']} epochs, {s['n_minibatches']} minibatches; "
        f"{s['rounds']} interleaved rounds of {s['updates_per_round']} updates; device {s['device']}, "
        f"{s['torch_threads']} torch threads. Ratios are medians of within-round ratios.",
        "",
        "| variant | env steps/s | ratio |",
        "|---|---:|---|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['variant']} | {row['env_steps_per_s']:.0f} | {_ratio_text(row)} |")
    b = result["compute_bound"]
    share = f"; clrl none reaches {b['clrl_none_share']:.0%} of it" if "clrl_none_share" in b else ""
    lines.append(
        f"| compute bound | {b['env_steps_per_s']:.0f} | fwd+bwd {b['train_samples_per_s']:.0f} samples/s, "
        f"inference {b['inference_samples_per_s']:.0f} samples/s{share} |"
    )
    return "\n".join(lines) + "\n"


def _print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    s = result["settings"]
    table = Table(title=f"clrl bench ppo: {result['game']} ({s['n_envs']}x{s['n_steps']}, {s['n_epochs']} epochs, "
                        f"{s['n_minibatches']} minibatches, {s['device']}, {s['torch_threads']} threads)")
    table.add_column("variant")
    table.add_column("env steps/s", justify="right")
    table.add_column("ratio")
    for row in result["rows"]:
        table.add_row(row["variant"], f"{row['env_steps_per_s']:.0f}", _ratio_text(row))
    b = result["compute_bound"]
    share = f"; clrl none at {b['clrl_none_share']:.0%}" if "clrl_none_share" in b else ""
    table.add_row("compute bound", f"{b['env_steps_per_s']:.0f}",
                  f"fwd+bwd {b['train_samples_per_s']:.0f}/s, inference {b['inference_samples_per_s']:.0f}/s{share}")
    Console().print(table)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--game", default="Boxing", help="ALE game (default Boxing)")
    parser.add_argument("--updates", type=int, default=1, help="PPO updates per variant per round (default 1)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved rounds; more, shorter rounds resist load from other processes (default 5)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                        help="clrl regularizers to time (default: all; 'none' is fine-tuning)")
    parser.add_argument("--no-stock", action="store_true", help="skip SB3's stock PPO")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads for every variant (default: torch's)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 2 envs x 32 steps, 1 update per round, 1 round")
    parser.add_argument("--out", default=None, metavar="DIR", help="also write bench_ppo.json and bench_ppo.md here")


def main(args: argparse.Namespace) -> int:
    from clrl.device import resolve_device
    from clrl.errors import UserError
    from clrl.io import atomic_write_text
    from clrl.rl.games import resolve_game

    game = resolve_game(args.game)
    device = str(resolve_device(args.device))
    for key in ("updates", "rounds"):
        if getattr(args, key) < 1:
            raise UserError(f"--{key} must be >= 1")
    kw: dict[str, Any] = {"updates": args.updates, "rounds": args.rounds}
    if args.quick:
        kw = {"n_envs": 2, "n_steps": 32, "updates": 1, "rounds": 1, "consolidation_samples": 32, "bound_seconds": 1.0}
    result = run_ppo_bench(game=game, methods=tuple(args.methods), device=device, threads=args.threads,
                           stock=not args.no_stock, **kw)
    _print_table(result)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "bench_ppo.json", json.dumps(result, indent=1) + "\n")
        atomic_write_text(out / "bench_ppo.md", format_markdown(result))
        print(f"wrote {out / 'bench_ppo.json'} and {out / 'bench_ppo.md'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    p = argparse.ArgumentParser()
    add_arguments(p)
    raise SystemExit(main(p.parse_args()))
