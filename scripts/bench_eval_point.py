"""Seconds per evaluation point: a config's seen games one at a time vs all at once (threads).

    nice -n 10 python scripts/bench_eval_point.py [--config configs/atari_quick.yaml] [--repeats 3]

Plays one evaluation point of every game in ``tasks.games`` with the config's ``eval`` settings
and network (untrained heads, seeded), as :meth:`clrl.rl.runner.SequentialRun._evaluate` does at
the last task: ``workers=1`` is the sequential loop clrl ran before, ``workers=len(games)`` the
concurrent one. The two alternate so that load changes hit both; prints each time, the medians,
and checks that both give the same games, bit for bit.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "atari_quick.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import torch

    from clrl.config import load_config
    from clrl.rl.envs import action_count
    from clrl.rl.evaluation import EvalJob, evaluate_many
    from clrl.rl.policy import build_actor_critic
    from clrl.seeding import derive_seed

    cfg = load_config(args.config)
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    torch.manual_seed(cfg.seed)
    net = build_actor_critic(cfg.model.channels, cfg.model.hidden, cfg.model.activation,
                             in_channels=cfg.env.frame_stack)
    games = list(cfg.tasks.games)
    for j, g in enumerate(games):
        net.add_task(j, action_count(g, cfg.env))
    net.eval()
    ev = cfg.eval

    def point(workers: int):  # noqa: ANN202 - (seconds, results)
        jobs = [EvalJob(net.actor_fn(j, ev.deterministic, torch.Generator().manual_seed(derive_seed(cfg.seed, "a", j))),
                        g, derive_seed(cfg.seed, "e", j)) for j, g in enumerate(games)]
        tick = time.perf_counter()
        res = evaluate_many(jobs, cfg.env, episodes=ev.episodes, n_envs=ev.n_envs, max_frames=ev.max_frames,
                            workers=workers)
        return time.perf_counter() - tick, res

    times: dict[int, list[float]] = {1: [], len(games): []}
    ref = None
    print(f"{args.config.name}: {len(games)} games x {ev.episodes} games on {ev.n_envs} envs, cap {ev.max_frames} "
          f"frames, torch threads {torch.get_num_threads()}")
    for r in range(args.repeats):
        for workers in ((1, len(games)) if r % 2 == 0 else (len(games), 1)):
            seconds, res = point(workers)
            games_played = [x.games for x in res]
            ref = ref or games_played
            assert games_played == ref, "concurrent and sequential evaluation differ"
            times[workers].append(seconds)
            frames = sum(x.frames for x in res)
            print(f"  repeat {r}, workers {workers}: {seconds:6.2f} s ({frames / seconds:,.0f} frames/s)")
    seq, par = statistics.median(times[1]), statistics.median(times[len(games)])
    print(f"median s per point: one at a time {seq:.2f}, concurrent {par:.2f} ({seq / par:.2f}x); same games: yes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
