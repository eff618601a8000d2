"""``clrl bench learning``: does clrl's PPO learn as fast as stable-baselines3's stock Atari PPO?

For every game and seed, two runs at the same budget:

* ``clrl``: clrl's single-task PPO (:class:`~clrl.rl.agent.TaskPPO` on ale-py's C++ vector env,
  fine-tuning), driven exactly as the runner drives one task: ``J`` updates with the linear
  learning-rate schedule, from a config built like ``clrl run``'s (one game, ``--set``
  overrides apply, so ``--set model.init=default`` measures an older setting);
* ``sb3``: SB3's stock Atari PPO (``make_atari_env`` + ``VecFrameStack(4)`` +
  ``PPO("CnnPolicy")``) with the same network shape (SB3's ``NatureCNN`` for ``--net nature``; the
  same trunk as clrl's for ``--net quick``) and PPO settings, trained through ``learn`` in a
  spawned process of its own, so nothing clrl sets up process-wide (malloc tuning, threads)
  changes it.

Both are scored by :func:`clrl.rl.evaluation.evaluate` every ``--eval-every`` steps and at the
end: same protocol (full games, raw scores, no life-loss terminals), same evaluation seeds,
actions sampled from each policy with the same seeded generator. A run's score is its final
evaluation. Per game the bench prints both methods' score over seeds with a 95% interval -- the
IQM with rliable's stratified-bootstrap interval (Agarwal et al. 2021) from 3 seeds, a
Student-t interval of the mean for 2 seeds, and over the evaluation games of a single seed --
their ratio, and whether clrl's interval overlaps or lies above SB3's. It writes
``bench_learning.json`` (after every run, so an interrupted measurement keeps what it has) and
``bench_learning.png`` (evaluation score against training steps, both methods).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

__all__ = [
    "NETS", "add_arguments", "main", "run_learning_bench", "sb3_act", "sb3_learning_rate", "interval", "summarize",
    "format_markdown",
]

NETS: dict[str, tuple[tuple[int, int, int], int]] = {
    "nature": ((32, 64, 64), 512),  # the Nature CNN, SB3's NatureCNN
    "quick": ((16, 32, 32), 256),  # configs/atari_quick.yaml's trunk
}
DEFAULT_GAMES = ("RoadRunner", "KungFuMaster", "Seaquest")
# The PPO of SB3's Atari defaults (rl-zoo) and configs/atari_quick.yaml: 8 envs x 128 steps,
# 4 epochs, 4 minibatches, lr 2.5e-4 decaying linearly, clip 0.1, entropy 0.01; the rest are
# both libraries' defaults (vf_coef 0.5, gamma 0.99, GAE 0.95, max grad norm 0.5, Adam eps 1e-5).
PPO_SETTINGS: dict[str, Any] = {
    "n_envs": 8, "n_steps": 128, "n_epochs": 4, "n_minibatches": 4,
    "learning_rate": 2.5e-4, "clip_range": 0.1, "ent_coef": 0.01,
}
METHODS = ("clrl", "sb3")
Log = Callable[[str], None]


# --------------------------------------------------------------------------- evaluation


def sb3_act(policy: Any, generator: torch.Generator | None = None, deterministic: bool = False) -> Callable:
    """An ``act`` for :func:`~clrl.rl.evaluation.evaluate` from an SB3 ``ActorCriticPolicy``.

    ``evaluate`` hands uint8 ``(n, 4, 84, 84)`` stacks, the layout SB3's policy sees after its
    ``VecTransposeImage``; the policy scales them itself. Sampling draws from ``generator``
    exactly as :meth:`clrl.rl.policy.ActorCritic.actor_fn` does, so both methods' evaluations
    consume the same random stream.
    """
    from clrl.rl.policy import sample_actions

    def act(obs: np.ndarray) -> np.ndarray:
        policy.set_training_mode(False)
        with torch.no_grad():
            obs_t, _ = policy.obs_to_tensor(obs)
            logits = policy.get_distribution(obs_t).distribution.logits
            if deterministic:
                actions = logits.argmax(dim=1)
            else:
                actions = sample_actions(F.softmax(logits.float().cpu(), dim=1), generator)
        return actions.cpu().numpy()

    return act


def _eval_point(act_for: Callable[[torch.Generator], Callable], game: str, seed: int, k: int, steps: int,
                ev: dict[str, Any]) -> dict[str, Any]:
    """Evaluation ``k`` of a run: seeds depend on (seed, k) only, the same for both methods."""
    from clrl.config import EnvConfig
    from clrl.rl.evaluation import evaluate
    from clrl.seeding import derive_seed

    gen = torch.Generator().manual_seed(derive_seed(seed, "bench-learning-act", k))
    res = evaluate(act_for(gen), game, EnvConfig(), episodes=ev["episodes"], n_envs=ev["n_envs"],
                   seed=derive_seed(seed, "bench-learning-eval", k), max_frames=ev["max_frames"])
    return {"steps": int(steps), "mean": res.mean, "scores": res.scores, "truncated": res.truncated,
            "seconds": round(res.seconds, 2)}


class _Schedule:
    """Evaluate after the first update at or past each multiple of ``every``, and at the end."""

    def __init__(self, every: int, total: int) -> None:
        self.every, self.total, self.next = int(every), int(total), int(every)

    def due(self, steps: int) -> bool:
        if steps >= self.total:
            return True
        if steps >= self.next:
            while self.next <= steps:
                self.next += self.every
            return True
        return False


# --------------------------------------------------------------------------- clrl


def clrl_config(game: str, steps: int, seed: int, net: str, settings: dict[str, Any], device: str,
                overrides: list[str] | None = None):
    """The one-game config of the clrl runs: clrl's defaults + the bench's PPO settings + ``--set``."""
    from clrl.config import config_from_dict

    channels, hidden = NETS[net]
    data = {
        "name": "bench_learning", "kind": "rl", "seed": int(seed), "device": device,
        "tasks": {"games": [game], "steps_per_task": int(steps)},
        "model": {"channels": list(channels), "hidden": hidden, "activation": "relu"},
        "train": {**settings, "lr_schedule": "linear"},
    }
    return config_from_dict(data, source="clrl bench learning", overrides=overrides)


def train_clrl(cfg: Any, ev: dict[str, Any], log: Log, label: str) -> dict[str, Any]:
    """Train one game as the runner trains a task (fine-tuning); evaluate on the schedule."""
    from clrl.device import resolve_device
    from clrl.rl.agent import TaskPPO
    from clrl.rl.envs import action_count, make_vec_env
    from clrl.rl.policy import build_actor_critic
    from clrl.rl.runner import updates_per_task
    from clrl.seeding import derive_seed, seed_everything

    game, seed = cfg.tasks.games[0], cfg.seed
    device = resolve_device(cfg.device)
    seed_everything(seed)
    net = build_actor_critic(cfg.model.channels, cfg.model.hidden, cfg.model.activation,
                             in_channels=cfg.env.frame_stack, init=cfg.model.init).to(device)
    net.add_task(0, action_count(game, cfg.env))
    env_seed = derive_seed(seed, "train-env", 0, 0)
    env = make_vec_env(game, cfg.train.n_envs, cfg.env, env_seed, train=True)
    J = updates_per_task(cfg)
    batch = cfg.train.n_envs * cfg.train.n_steps
    schedule = _Schedule(ev["every"], J * batch)
    curve: list[dict[str, Any]] = []
    train_s = 0.0
    try:
        model = TaskPPO(env, net, 0, cfg.train, device=device)
        model.reset_envs(env_seed)
        for j in range(J):
            tick = time.perf_counter()
            model.update(progress_remaining=1.0 - j / J)
            train_s += time.perf_counter() - tick
            steps = (j + 1) * batch
            rate = f"{steps / max(train_s, 1e-9):.0f} steps/s"
            if schedule.due(steps):
                point = _eval_point(lambda g: net.actor_fn(0, deterministic=False, generator=g), game, seed,
                                    len(curve), steps, ev)
                curve.append(point)
                log(f"{label}: {steps:,} steps, eval {point['mean']:.1f} ({rate})")
            elif (j + 1) % max(1, J // 10) == 0:
                log(f"{label}: {steps:,}/{J * batch:,} steps ({rate})")
    finally:
        env.close()
    return {"curve": curve, "train_seconds": round(train_s, 2), "steps": J * batch}


# --------------------------------------------------------------------------- SB3 (spawned)


try:
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    class ClrlTrunkExtractor(BaseFeaturesExtractor):
        """clrl's Atari trunk as an SB3 features extractor (``--net quick``: SB3's NatureCNN has
        fixed widths). SB3 scales the frames to [0, 1] and applies its orthogonal init to it."""

        def __init__(self, observation_space: Any, channels: list[int], hidden: int) -> None:
            super().__init__(observation_space, features_dim=int(hidden))
            from clrl.nets import atari_trunk

            self.trunk = atari_trunk(channels=channels, hidden=hidden, activation="relu",
                                     in_channels=int(observation_space.shape[0]))

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            return self.trunk(obs)
except ImportError:  # pragma: no cover - SB3 is a dependency of clrl
    ClrlTrunkExtractor = None  # type: ignore[assignment,misc]


def sb3_learning_rate(lr: float, updates: int) -> Callable[[float], float]:
    """SB3's ``learning_rate`` schedule that gives update ``j`` of ``J`` clrl's ``lr * (1 - j / J)``.

    ``PPO.learn`` moves ``progress_remaining`` on after each rollout, before ``train``, so a stock
    ``lr * progress`` trains update ``j`` at ``lr * (1 - (j + 1) / J)``: its last update at 0 and
    the whole run at ``(J - 1) / (J + 1)`` of clrl's summed step size (4% less at J = 48). The
    bench compares the two PPOs at the same settings, so SB3's schedule is shifted by ``1 / J``.
    """
    return lambda progress: lr * (float(progress) + 1.0 / updates)


def train_sb3(job: dict[str, Any], log: Log) -> dict[str, Any]:
    """SB3's stock Atari PPO on one game; runs in the spawned process (see the module docstring)."""
    import ale_py
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    s, ev, game, seed = job["settings"], job["eval"], job["game"], job["seed"]
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    gym.register_envs(ale_py)
    batch = s["n_envs"] * s["n_steps"]
    J = max(1, math.ceil(job["steps"] / batch))
    channels, hidden = NETS[job["net"]]
    policy_kwargs: dict[str, Any] = {}  # nature: SB3's NatureCNN (32-64-64 / 512), stock
    if job["net"] != "nature":
        policy_kwargs = {"features_extractor_class": ClrlTrunkExtractor,
                         "features_extractor_kwargs": {"channels": list(channels), "hidden": hidden}}
    env = VecFrameStack(make_atari_env(f"{game}NoFrameskip-v4", n_envs=s["n_envs"], seed=seed), n_stack=4)
    model = PPO(
        "CnnPolicy", env, learning_rate=sb3_learning_rate(float(s["learning_rate"]), J), n_steps=s["n_steps"],
        batch_size=batch // s["n_minibatches"], n_epochs=s["n_epochs"], clip_range=s["clip_range"],
        ent_coef=s["ent_coef"], seed=seed, device=job["device"], verbose=0, policy_kwargs=policy_kwargs,
    )
    schedule = _Schedule(ev["every"], J * batch)
    curve: list[dict[str, Any]] = []
    spent = {"eval": 0.0}
    label = job["label"]

    def point(steps: int) -> None:
        tick = time.perf_counter()
        p = _eval_point(lambda g: sb3_act(model.policy, g), game, seed, len(curve), steps, ev)
        spent["eval"] += time.perf_counter() - tick
        curve.append(p)
        log(f"{label}: {steps:,} steps, eval {p['mean']:.1f}")

    class _Eval(BaseCallback):
        """Between updates (at the start of the next rollout), as clrl's runs evaluate."""

        def _on_rollout_start(self) -> None:
            steps = self.num_timesteps
            if steps <= 0 or steps >= J * batch:
                return
            if schedule.due(steps):
                point(steps)
            elif (steps // batch) % max(1, J // 10) == 0:
                log(f"{label}: {steps:,}/{J * batch:,} steps")

        def _on_step(self) -> bool:
            return True

    start = time.perf_counter()
    try:
        model.learn(total_timesteps=J * batch, callback=_Eval())
        train_s = time.perf_counter() - start - spent["eval"]
        point(int(model.num_timesteps))
    finally:
        env.close()
    return {"curve": curve, "train_seconds": round(train_s, 2), "steps": int(model.num_timesteps)}


def _serve_sb3(conn, job: dict[str, Any]) -> None:
    """The spawned child: train, sending progress lines, then the result (or the traceback)."""
    try:
        result = train_sb3(job, lambda text: conn.send(("progress", text)))
        conn.send(("done", result))
    except KeyboardInterrupt:
        pass
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def run_sb3_process(job: dict[str, Any], log: Log) -> dict[str, Any]:
    """:func:`train_sb3` in a spawned process (no forked torch or emulator threads)."""
    ctx = multiprocessing.get_context("spawn")
    conn, child = ctx.Pipe()
    proc = ctx.Process(target=_serve_sb3, args=(child, job), daemon=True)
    proc.start()
    child.close()
    try:
        while True:
            try:
                kind, value = conn.recv()
            except EOFError as exc:
                raise RuntimeError(f"{job['label']}: the SB3 process exited (code {proc.exitcode})") from exc
            if kind == "progress":
                log(value)
            elif kind == "error":
                raise RuntimeError(f"{job['label']} failed in its process:\n{value}")
            else:
                return value
    finally:
        conn.close()
        proc.join(timeout=30)
        if proc.is_alive():
            proc.terminate()
            proc.join()


# --------------------------------------------------------------------------- statistics


def interval(finals: list[float], episode_scores: list[float] | None = None, reps: int = 2000) -> dict[str, Any]:
    """Point estimate and 95% interval of one method on one game.

    3+ seeds: IQM over the seeds' final scores with rliable's stratified-bootstrap interval
    (:func:`clrl.report.stats.iqm_ci`). 2 seeds: mean with a Student-t interval over the seeds.
    1 seed: mean with a Student-t interval over that run's final evaluation games.
    """
    from scipy import stats

    from clrl.report.stats import iqm_ci

    v = np.asarray(finals, dtype=float)
    if v.size >= 3:
        point, lo, hi, how = iqm_ci(v, reps=reps)
        return {"point": point, "lo": lo, "hi": hi, "n": int(v.size), "estimator": "IQM over seeds",
                "interval": f"95% stratified bootstrap ({how})"}
    sample = v if v.size == 2 else np.asarray(episode_scores if episode_scores is not None else v, dtype=float)
    over = "seeds" if v.size == 2 else "evaluation games of one seed"
    mean = float(sample.mean()) if sample.size else float("nan")
    if sample.size >= 2:
        half = float(stats.t.ppf(0.975, sample.size - 1) * sample.std(ddof=1) / math.sqrt(sample.size))
    else:
        half = float("nan")
    return {"point": mean, "lo": mean - half, "hi": mean + half, "n": int(v.size), "estimator": f"mean over {over}",
            "interval": f"95% Student t over {over}"}


def summarize(runs: list[dict[str, Any]], games: list[str]) -> list[dict[str, Any]]:
    """Per game: both methods' :func:`interval`, the ratio clrl / sb3 and the parity verdict."""
    rows = []
    for game in games:
        row: dict[str, Any] = {"game": game}
        for method in METHODS:
            mine = [r for r in runs if r["game"] == game and r["method"] == method]
            if not mine:
                continue
            finals = [r["curve"][-1]["mean"] for r in mine]
            row[method] = interval(finals, mine[0]["curve"][-1]["scores"])
            row[method]["seeds"] = [r["seed"] for r in mine]
            row[method]["finals"] = finals
        if "clrl" in row and "sb3" in row:
            c, s = row["clrl"], row["sb3"]
            row["ratio"] = c["point"] / s["point"] if s["point"] > 0 else None
            row["parity"] = bool(c["hi"] >= s["lo"]) if math.isfinite(c["hi"]) and math.isfinite(s["lo"]) else None
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- the bench


def run_learning_bench(
    games: list[str],
    steps: int,
    seeds: list[int],
    net: str = "nature",
    *,
    settings: dict[str, Any] | None = None,
    eval_episodes: int = 16,
    eval_every: int | None = None,
    eval_max_frames: int = 27_000,
    eval_envs: int | None = None,
    device: str = "cpu",
    threads: int = 0,
    methods: tuple[str, ...] = METHODS,
    overrides: list[str] | None = None,
    out: Path | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Train and evaluate every (game, seed, method); returns (and writes) the result dict."""
    from clrl.allocator import tune_malloc
    from clrl.config import config_to_dict

    if net not in NETS:
        raise ValueError(f"unknown net {net!r}; allowed: {', '.join(NETS)}")
    s = {**PPO_SETTINGS, **(settings or {})}
    batch = s["n_envs"] * s["n_steps"]
    every = int(eval_every) if eval_every else max(batch, steps // 4)
    ev = {"episodes": int(eval_episodes), "n_envs": int(eval_envs or min(eval_episodes, 16)), "every": every,
          "max_frames": int(eval_max_frames), "deterministic": False}
    malloc = tune_malloc()  # clrl's process, as `clrl run` sets it up; SB3's child keeps glibc's default
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    cfg0 = clrl_config(games[0], steps, seeds[0], net, s, device, overrides)
    result: dict[str, Any] = {
        "games": list(games), "seeds": list(seeds), "steps": int(steps), "net": net,
        "network": f"conv {'-'.join(map(str, NETS[net][0]))} / {NETS[net][1]}, ReLU",
        "settings": {**s, "lr_schedule": "linear", "device": device, "torch_threads": torch.get_num_threads(),
                     "malloc": {"clrl": malloc, "sb3": "default (own process)"}},
        "eval": ev,
        "clrl": {"overrides": list(overrides or []),
                 "model": config_to_dict(cfg0.model), "train": config_to_dict(cfg0.train)},
        "runs": [], "summary": [],
    }
    total = len(games) * len(seeds) * len(methods)
    started = time.perf_counter()
    try:
        for game in games:
            for seed in seeds:
                for method in methods:
                    label = f"[{len(result['runs']) + 1}/{total}] {game} seed {seed} {method}"
                    log(f"{label}: training {steps:,} steps ...")
                    tick = time.perf_counter()
                    if method == "clrl":
                        cfg = clrl_config(game, steps, seed, net, s, device, overrides)
                        run = train_clrl(cfg, ev, log, label)
                    else:
                        job = {"game": game, "seed": seed, "steps": steps, "net": net, "settings": s, "eval": ev,
                               "device": device, "threads": torch.get_num_threads(), "label": label}
                        run = run_sb3_process(job, log)
                    run.update(game=game, seed=int(seed), method=method, seconds=round(time.perf_counter() - tick, 1))
                    result["runs"].append(run)
                    result["summary"] = summarize(result["runs"], games)
                    result["seconds"] = round(time.perf_counter() - started, 1)
                    if out is not None:
                        _write_json(out, result)
    finally:
        torch.set_num_threads(old_threads)
    return result


def _write_json(out: Path, result: dict[str, Any]) -> Path:
    from clrl.io import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    path = out / "bench_learning.json"
    atomic_write_text(path, json.dumps(result, indent=1) + "\n")
    return path


def learning_curves(result: dict[str, Any], out: Path) -> list[Path]:
    """Evaluation score vs training steps per game: mean over seeds, min-max band, both methods."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    from clrl.report.figures import _steps_label
    from clrl.report.style import COLUMN_WIDTH, PAGE_WIDTH, color, paper_style, save

    games = result["games"]
    with paper_style():
        width = PAGE_WIDTH if len(games) > 1 else COLUMN_WIDTH
        fig, axes = plt.subplots(1, len(games), figsize=(width, 2.3), squeeze=False)
        for ax, game in zip(axes[0], games, strict=True):
            for i, method in enumerate(METHODS):
                runs = [r for r in result["runs"] if r["game"] == game and r["method"] == method]
                if not runs:
                    continue
                n = min(len(r["curve"]) for r in runs)
                x = np.array([runs[0]["curve"][k]["steps"] for k in range(n)])
                y = np.array([[r["curve"][k]["mean"] for k in range(n)] for r in runs])
                label = f"{method} ({len(runs)} seed{'s' if len(runs) > 1 else ''})"
                ax.plot(x, y.mean(axis=0), marker="o", markersize=3, color=color(i), label=label)
                if len(runs) > 1:
                    ax.fill_between(x, y.min(axis=0), y.max(axis=0), color=color(i), alpha=0.18, linewidth=0)
            ax.set_title(game)
            ax.set_xlabel("training steps")
            ax.set_xlim(left=0)
            ax.xaxis.set_major_formatter(FuncFormatter(_steps_label))
        axes[0][0].set_ylabel("evaluation score")
        axes[0][-1].legend(loc="best")
        return save(fig, out, "bench_learning", formats=("png",))


def _fmt(est: dict[str, Any] | None) -> str:
    if not est:
        return "-"
    if not math.isfinite(est["hi"]):
        return f"{est['point']:.1f}"
    return f"{est['point']:.1f} [{est['lo']:.1f}, {est['hi']:.1f}]"


HEADER = ("game", "clrl", "sb3 stock", "clrl / sb3", "parity")


def _table_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for r in result["summary"]:
        ratio = "-" if r.get("ratio") is None else f"{r['ratio']:.2f}"
        parity = {True: "yes", False: "NO", None: "-"}[r.get("parity")]
        rows.append((r["game"], _fmt(r.get("clrl")), _fmt(r.get("sb3")), ratio, parity))
    return rows


def _caption(result: dict[str, Any]) -> str:
    s, ev = result["settings"], result["eval"]
    est = next((r[m] for r in result["summary"] for m in METHODS if m in r), None)
    how = f"{est['estimator']}, {est['interval']}" if est else ""
    sets = f"; clrl --set {' '.join(result['clrl']['overrides'])}" if result["clrl"]["overrides"] else ""
    return (f"{result['steps']:,} steps per run, seeds {result['seeds']}; {result['network']}; {s['n_envs']} envs x "
            f"{s['n_steps']} steps, {s['n_epochs']} epochs, {s['n_minibatches']} minibatches, lr {s['learning_rate']:g} "
            f"linear, clip {s['clip_range']:g}, entropy {s['ent_coef']:g}; clrl model.init {result['clrl']['model']['init']}, "
            f"value_loss {result['clrl']['train']['value_loss']}, advantage_norm "
            f"{result['clrl']['train']['advantage_norm']}{sets}. Final evaluation: {ev['episodes']} games, sampled "
            f"actions, {ev['max_frames']:,}-frame cap. {how}; parity: clrl's upper bound >= SB3's lower bound.")


def format_markdown(result: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|---|---:|---:|---:|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in _table_rows(result)]
    return "\n".join(lines) + "\n\n" + _caption(result) + "\n"


def _print_table(result: dict[str, Any]) -> None:
    from rich.table import Table

    from clrl.summary import table_console

    table = Table(title="clrl bench learning: final evaluation score", caption=_caption(result))
    for i, name in enumerate(HEADER):
        table.add_column(name, justify="left" if i in (0, len(HEADER) - 1) else "right")
    for row in _table_rows(result):
        table.add_row(*row)
    table_console().print(table)


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--games", nargs="+", default=list(DEFAULT_GAMES),
                        help=f"ALE games (default: {' '.join(DEFAULT_GAMES)})")
    parser.add_argument("--steps", type=int, default=100_000, help="training env steps per run (default 100,000)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default 0 1 2)")
    parser.add_argument("--net", choices=list(NETS), default="nature",
                        help="nature: conv 32-64-64 / 512 (default); quick: 16-32-32 / 256 (atari_quick.yaml's)")
    parser.add_argument("--out", default="runs/bench_learning", metavar="DIR",
                        help="where bench_learning.json/.md/.png go (default runs/bench_learning)")
    parser.add_argument("--eval-episodes", type=int, default=16, help="evaluation games per point (default 16)")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="training steps between evaluations (default: a quarter of --steps); always at the end")
    parser.add_argument("--eval-max-frames", type=int, default=27_000, help="frame cap per evaluation game (default 27,000)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                        help="which to train (default both)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the clrl runs' config, e.g. --set model.init=default; repeatable")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads for both (default 0: torch's)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: first game only, 2 updates of 2 envs x 16 steps, 1 evaluation game of "
                        "at most 500 frames, one seed")


def main(args: argparse.Namespace) -> int:
    from clrl.device import resolve_device
    from clrl.errors import UserError
    from clrl.io import atomic_write_text
    from clrl.rl.games import resolve_game

    games = [resolve_game(g) for g in args.games]
    for key in ("steps", "eval_episodes", "eval_max_frames"):
        if getattr(args, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be >= 1")
    if args.eval_every is not None and args.eval_every < 1:
        raise UserError("--eval-every must be >= 1")
    if len(set(args.seeds)) != len(args.seeds):
        raise UserError(f"--seeds has repeats: {args.seeds}")
    device = str(resolve_device(args.device))
    kw: dict[str, Any] = {"steps": args.steps, "seeds": list(args.seeds), "eval_episodes": args.eval_episodes,
                          "eval_every": args.eval_every, "eval_max_frames": args.eval_max_frames}
    if args.quick:
        games = games[:1]
        kw = {"steps": 64, "seeds": list(args.seeds)[:1], "eval_episodes": 1, "eval_every": None,
              "eval_max_frames": 500, "settings": {"n_envs": 2, "n_steps": 16}, "eval_envs": 1}
    out = Path(args.out)
    result = run_learning_bench(games, net=args.net, device=device, threads=args.threads,
                                methods=tuple(dict.fromkeys(args.methods)), overrides=args.overrides, out=out,
                                log=lambda text: print(text, flush=True), **kw)
    _print_table(result)
    _write_json(out, result)
    atomic_write_text(out / "bench_learning.md", format_markdown(result))
    paths = learning_curves(result, out)
    print(f"wrote {out / 'bench_learning.json'}, {out / 'bench_learning.md'} and {', '.join(map(str, paths))}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    p = argparse.ArgumentParser()
    add_arguments(p)
    raise SystemExit(main(p.parse_args()))
