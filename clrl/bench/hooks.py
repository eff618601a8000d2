"""``clrl bench hooks``: what a regularizer's optimizer hooks cost per training step.

One run times forward + backward + ``optimizer.step()`` of a PPO-sized minibatch on
:func:`~clrl.nets.atari_trunk` with an actor head and a value head, for plain Adam (no hooks)
and for each regularizer attached to its own copy of the same model, after a consolidated
first task (so EWC/MAS have a penalty and AGS-CL has Omega, masks and an anchor). Methods are
interleaved step by step in rotating order over several rounds of ``steps`` steps each; the
ratio of mean step times to plain Adam is taken within each round and the median over rounds
is reported, so load from other processes mostly cancels. AGS-CL's proximal step runs every ``prox_every`` steps, so with
``steps == prox_every`` every timed block contains exactly one prox step: its cost is averaged
over a PPO epoch as in the RL runner. Also reports each method's ``memory_bytes()``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clrl.allocator import tune_malloc
from clrl.nets import MultiHead, atari_trunk
from clrl.regularizers import build_regularizer

__all__ = ["add_arguments", "main", "run_hooks_bench", "format_table"]

METHODS = ("none", "ewc", "mas", "agscl")


class _Setup:
    """One model copy with its optimizer and (optionally) a regularizer attached."""

    def __init__(self, trunk: nn.Module, heads: MultiHead, value: nn.Linear, method: str | None,
                 prox_every: int, x_cons: torch.Tensor) -> None:
        self.trunk, self.heads, self.value = trunk, heads, value
        self.method = method
        self.reg = None
        if method is not None:
            hp: dict[str, Any] = {"prox_every": prox_every, "seed": 0} if method == "agscl" else {}
            if method == "ewc":
                hp = {"seed": 0}
            self.reg = build_regularizer(method, trunk, heads, **hp)
            self.reg.end_task(0, [x_cons], lambda b: heads(trunk(b), 0))
        params = list(trunk.parameters()) + list(heads.parameters_of(1)) + list(value.parameters())
        self.opt = torch.optim.Adam(params, lr=2.5e-4, eps=1e-5)
        if self.reg is not None:
            self.reg.begin_task(1, self.opt)

    def step(self, x: torch.Tensor, actions: torch.Tensor, returns: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        f = self.trunk(x)
        loss = F.cross_entropy(self.heads(f, 1), actions) + 0.5 * F.mse_loss(self.value(f).squeeze(1), returns)
        loss.backward()
        self.opt.step()


def run_hooks_bench(
    batch: int = 128,
    steps: int = 64,
    rounds: int = 2,
    prox_every: int = 64,
    channels: Sequence[int] = (32, 64, 64),
    hidden: int = 512,
    n_actions: int = 18,
    methods: Sequence[str] = METHODS,
    consolidation_samples: int = 32,
    warmup: int = 2,
    threads: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Time one optimizer step per method against plain Adam; returns plain data (see module
    docstring). ``threads`` sets ``torch.set_num_threads`` for the run (restored afterwards)."""
    malloc = tune_malloc()  # as `clrl run` sets up its process
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        torch.manual_seed(seed)
        trunk = atari_trunk(channels=tuple(channels), hidden=hidden)
        heads = MultiHead(trunk.out_features)
        heads.add_head(0, n_actions)
        heads.add_head(1, n_actions)
        value = nn.Linear(trunk.out_features, 1)
        gen = torch.Generator().manual_seed(seed + 1)
        x = torch.rand(batch, 4, 84, 84, generator=gen)
        actions = torch.randint(0, n_actions, (batch,), generator=gen)
        returns = torch.randn(batch, generator=gen)
        x_cons = torch.rand(consolidation_samples, 4, 84, 84, generator=gen)

        names = ["adam"] + list(methods)
        setups = {}
        for name in names:
            t, h, v = copy.deepcopy((trunk, heads, value))
            setups[name] = _Setup(t, h, v, None if name == "adam" else name, prox_every, x_cons)
        for s in setups.values():  # warm up allocator and kernels
            for _ in range(warmup):
                s.step(x, actions, returns)

        # step-level interleaving: every tick runs one step of each method (rotating order),
        # so load from other processes hits all methods alike; a round is `steps` ticks
        times: dict[str, list[float]] = {n: [] for n in names}
        for r in range(rounds):
            acc = dict.fromkeys(names, 0.0)
            for k in range(steps):
                shift = (r * steps + k) % len(names)
                for name in names[shift:] + names[:shift]:
                    t0 = time.perf_counter()
                    setups[name].step(x, actions, returns)
                    acc[name] += time.perf_counter() - t0
            for name in names:
                times[name].append(acc[name] / steps)

        n_params = sum(p.numel() for p in trunk.parameters())
        results: dict[str, Any] = {}
        for name in names:
            ratios = [t / p for t, p in zip(times[name], times["adam"], strict=True)]
            reg = setups[name].reg
            results[name] = {
                "step_ms": 1000 * statistics.median(times[name]),
                "ratio": statistics.median(ratios),
                "ratios": ratios,
                "memory_bytes": reg.memory_bytes() if reg is not None else {"importance": 0, "anchor": 0},
                "n_prox": getattr(reg, "n_prox", None),
            }
        return {
            "config": {
                "batch": batch, "steps": steps, "rounds": rounds, "prox_every": prox_every,
                "channels": list(channels), "hidden": hidden, "n_actions": n_actions,
                "threads": torch.get_num_threads(), "trunk_params": n_params, "torch": torch.__version__,
                "malloc": malloc,
            },
            "results": results,
        }
    finally:
        torch.set_num_threads(old_threads)


def format_table(report: dict[str, Any]) -> str:
    cfg = report["config"]
    param_mb = cfg["trunk_params"] * 4 / 2**20
    lines = [
        f"optimizer step, batch {cfg['batch']}x4x84x84, atari_trunk{tuple(cfg['channels'])}+{cfg['hidden']} "
        f"({cfg['trunk_params']:,} params, {param_mb:.2f} MiB), {cfg['rounds']} rounds x {cfg['steps']} steps, "
        f"AGS-CL prox every {cfg['prox_every']} steps, {cfg['threads']} threads, malloc {cfg['malloc']}",
        f"{'method':<8} {'step ms':>9} {'x Adam':>7} {'min..max':>13} {'importance':>12} {'anchor':>10}",
    ]
    for name, r in report["results"].items():
        mem = r["memory_bytes"]
        spread = f"{min(r['ratios']):.3f}..{max(r['ratios']):.3f}"
        lines.append(
            f"{name:<8} {r['step_ms']:9.1f} {r['ratio']:7.3f} {spread:>13} "
            f"{_human(mem['importance']):>12} {_human(mem['anchor']):>10}"
        )
    lines.append("target: <= 1.05 x plain Adam")
    res = report["results"]
    if "agscl" in res and "ewc" in res and res["agscl"]["memory_bytes"]["importance"]:
        ratio = res["ewc"]["memory_bytes"]["importance"] / res["agscl"]["memory_bytes"]["importance"]
        lines.append(f"importance state: EWC's is {ratio:,.0f}x AGS-CL's (one Fisher value per parameter vs "
                     "Omega float32 + birth uint8 per node)")
    return "\n".join(lines)


def _human(n: int) -> str:
    if n == 0:
        return "0"
    if n < 2**20:
        return f"{n / 2**10:.1f} KiB"
    return f"{n / 2**20:.2f} MiB"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batch", type=int, default=128,
        help="minibatch size (default 128: the AGS-CL code's PPO minibatch, 128 envs x 64 steps / 64)",
    )
    parser.add_argument("--steps", type=int, default=64, help="optimizer steps per timed block (default 64)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--prox-every", type=int, default=None, help="AGS-CL prox cadence (default: --steps)")
    parser.add_argument("--channels", type=int, nargs=3, default=(32, 64, 64), metavar="C", help="conv widths")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads (default 1: ratios are steadier on a shared machine; 0 = torch's default)",
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--quick", action="store_true", help="batch 32, 16 steps, 2 rounds: a smoke run in seconds")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the numbers as JSON")


def main(args: argparse.Namespace) -> int:
    batch, steps, rounds = args.batch, args.steps, args.rounds
    if args.quick:
        batch, steps, rounds = 32, 16, 2
    prox_every = args.prox_every if args.prox_every is not None else steps
    report = run_hooks_bench(batch=batch, steps=steps, rounds=rounds, prox_every=prox_every,
                             channels=tuple(args.channels), methods=args.methods,
                             threads=args.threads or None)
    print(format_table(report))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0
