"""Milliseconds per gradient clip: torch's ``clip_grad_norm_`` vs clrl's ``clip_grad_norm``.

    nice -n 10 python scripts/bench_clip.py [--repeats 5] [--calls 300]

The PPO update clips the gradient once per minibatch (16 times per update in the Atari
configs). Times both on the gradients of one real backward pass through the Nature CNN and the
CPU configs' small trunk, with bounds that clip at every call (from half the gradient's norm
down) and one that does not (1e9); the two alternate, so load changes hit both. Prints each median and checks the
two give the same norm and gradients, bit for bit. A whole update is too noisy on a shared
machine to show differences of this size (``clrl bench ppo`` moves by 2-4 points between runs).
"""

from __future__ import annotations

import argparse
import statistics
import time


def _restore(params: list, grads: list) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad.copy_(g)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args(argv)

    import torch

    import clrl.allocator
    from clrl.rl.agent import clip_grad_norm
    from clrl.rl.policy import build_actor_critic

    clrl.allocator.tune_malloc()
    torch.manual_seed(0)
    ok = True
    for name, (channels, hidden) in {"nature": ((32, 64, 64), 512), "quick": ((16, 32, 32), 256)}.items():
        net = build_actor_critic(channels, hidden, "relu")
        net.add_task(0, 18)
        params = list(net.task_parameters(0))
        logits, value = net(torch.randint(0, 256, (256, 4, 84, 84), dtype=torch.uint8), 0)
        (logits.logsumexp(1).mean() + value.square().mean()).backward()
        grads = [p.grad.clone() for p in params]
        norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
        for clips in (True, False):
            # each call of a timed block clips when the bounds shrink from call to call (a clipped
            # gradient's norm is the bound it was clipped to)
            bounds = [0.5 * norm * 0.999**k if clips else 1e9 for k in range(args.calls + 1)]
            fns = {"torch": lambda b, ps=params: torch.nn.utils.clip_grad_norm_(ps, b),
                   "clrl": lambda b, ps=params: clip_grad_norm(ps, b)}
            out = {}
            for key, fn in fns.items():
                _restore(params, grads)
                out[key] = (fn(bounds[0]), [p.grad.clone() for p in params])
            same = torch.equal(out["torch"][0], out["clrl"][0]) and all(
                torch.equal(a, b) for a, b in zip(out["torch"][1], out["clrl"][1], strict=True))
            ok &= same
            ms: dict[str, list[float]] = {key: [] for key in fns}
            for _ in range(args.repeats):
                for key, fn in fns.items():
                    _restore(params, grads)
                    fn(bounds[0])
                    start = time.perf_counter()
                    for b in bounds[1:]:
                        fn(b)
                    ms[key].append((time.perf_counter() - start) / args.calls * 1e3)
            t, c = statistics.median(ms["torch"]), statistics.median(ms["clrl"])
            clips = "clips" if clips else "does not clip"
            print(f"{name:6s} {sum(p.numel() for p in params):>9,} params, bound {clips:13s}: "
                  f"torch {t:.3f} ms, clrl {c:.3f} ms per call ({t / c:.2f}x); same bits: {same}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
