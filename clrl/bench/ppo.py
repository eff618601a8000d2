"""``clrl bench ppo``: env steps per second of clrl's PPO against SB3's stock Atari PPO.

One run, same game, same network (Nature CNN 32-64-64 / 512, ReLU), same PPO shape (8 envs x
128 steps, 4 epochs, 4 minibatches):

* ``sb3 stock``: ``make_atari_env`` (DummyVecEnv of Python wrappers) + ``VecFrameStack(4)`` +
  ``PPO("CnnPolicy")``, timed through ``learn``, in a process of its own with glibc's default
  malloc, as SB3's users run it;
* ``sb3 stock + clrl malloc/openmp``: the same with clrl's process settings (allocator,
  :mod:`clrl.allocator`, and OpenMP spin-wait, :mod:`clrl.openmp`),
  to show how much of clrl's lead those explain (no target);
* ``clrl none``: clrl's :class:`~clrl.rl.agent.TaskPPO` on ale-py's C++ vector env, fine-tuning,
  in the bench's own process with the allocator set up as ``clrl run`` sets it;
* ``clrl ewc|mas|agscl``: the same with the regularizer's hooks attached, on the second task after
  a consolidated first one (so the penalties and AGS-CL's masks, anchor and once-per-epoch
  proximal step are all live);
* ``clrl none (sb3 loop)``: fine-tuning with SB3's own ``collect_rollouts``, ``RolloutBuffer``
  and minibatch ``get`` (``TaskPPO(lean=False)``), to show what clrl's lean rollout path gains;
* the compute bound: forward+backward samples/s of the network at the minibatch size and
  inference samples/s at the rollout batch, giving the env steps/s that compute alone allows
  (``1 / (epochs / train_rate + 1 / inference_rate)``);
* the machine bound: the same plus the raw C++ vector env (ale-py's ``AtariVectorEnv`` with the
  same settings, random actions, no Python wrapper), measured in the same run:
  ``1 / (epochs / train_rate + 1 / inference_rate + 1 / env_rate)``, what a loop that does
  nothing but env steps, inference and training, one after the other, would reach.

Every variant also reports where an update's time goes: seconds in ``collect_rollouts`` (env
stepping and inference) and in ``train`` (the PPO epochs); clrl's variants split the rollout
further into env steps, inference, buffer writes, device/host conversions and the rest. Beside
the bound, the network's inference is also timed with every call after a sleep of one raw env
step, the wake-up that every rollout step pays and a back-to-back loop does not.

``--net quick`` (or ``--channels/--hidden``) times the CPU configs' small trunk (16-32-32/256)
instead of the Nature CNN; SB3's stock PPO has only the Nature CNN, so it is skipped then.

The variants are timed in interleaved rounds (every variant once per round, in rotating order)
and the ratios are taken within each round, then the median over rounds, so load from other
processes on a shared machine mostly cancels out of the ratios (absolute numbers do not).
Targets (issue 13): clrl fine-tuning >= 2.0x SB3 stock and >= 0.9 of the machine bound (Nature
CNN), >= 0.85 of it on the small trunk; every regularizer within 1.05x of fine-tuning.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from clrl.allocator import tune_malloc
from clrl.config import EnvConfig
from clrl.openmp import ENV_VAR as OPENMP_ENV
from clrl.openmp import openmp_mode

__all__ = ["add_arguments", "main", "run_ppo_bench", "format_markdown"]

METHODS = ("none", "ewc", "mas", "agscl")
SB3_STOCK = "sb3 stock"
SB3_TUNED = "sb3 stock + clrl malloc/openmp"

SB3_LOOP = "clrl none (sb3 loop)"
TARGET_SPEEDUP = 2.0
TARGET_OVERHEAD = 1.05
TARGET_MACHINE_SHARE = {"nature": 0.9, "other": 0.85}
# the bounds are the best of this many equal windows of their measuring time: a bound is what the
# machine can do, and a window slowed by another process would understate it
BOUND_WINDOWS = 3
# untimed raw-env steps before its window in a round, as a share of the bound's measuring time
# (0.5 s of the default 3 s; twice that before the final windows): right after seconds of
# full-core training the same env runs 20-30% slower for about a second
RAW_SETTLE = 1 / 6


def pipelined_name(groups: int) -> str:
    """The variant that steps the envs in ``groups`` groups, overlapping emulation and inference
    on one torch thread (training keeps the bench's threads)."""
    return f"clrl none ({groups} groups, 1 rollout thread)"


NATURE = ((32, 64, 64), 512)
NETS = {"nature": NATURE, "quick": ((16, 32, 32), 256)}  # quick: configs/atari_quick.yaml's trunk
PHASES = ("env", "inference", "buffer", "conversions", "other")  # clrl.rl.agent.ROLLOUT_PHASES


class _Variant:
    name: str
    phases: dict[str, float]  # cumulative seconds in SB3's collect_rollouts ("rollout") and train
    rollout_phases: dict[str, float] | None = None  # cumulative seconds per rollout phase (clrl)

    def warmup(self) -> None:
        self.run(1)

    def run(self, updates: int) -> int:
        """Run ``updates`` PPO updates; return the env steps they took."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def _time_phases(model: Any) -> dict[str, float]:
    """Wrap an SB3 model's ``collect_rollouts`` and ``train`` (instance attributes, which SB3's
    ``learn`` and clrl's ``update`` call) so that their wall time adds up in the returned dict."""
    spent = {"rollout": 0.0, "train": 0.0}
    for attr, key in (("collect_rollouts", "rollout"), ("train", "train")):
        _add_timer(model, attr, spent, key)
    return spent


def _add_timer(obj: Any, attr: str, spent: dict[str, float], key: str) -> None:
    """Replace ``obj.attr`` (an instance attribute) by a wrapper adding its wall time to ``spent[key]``."""
    inner = getattr(obj, attr)

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent[key] += time.perf_counter() - start

    setattr(obj, attr, timed)


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
        self.phases = _time_phases(self.model)

    def run(self, updates: int) -> int:
        self.model.learn(updates * self.batch, reset_num_timesteps=self._first)
        self._first = False
        return updates * self.batch

    def close(self) -> None:
        self.env.close()


class _SB3Process(_Variant):
    """SB3's stock PPO built and timed in its own spawned process.

    Why a process: clrl tunes glibc's malloc process-wide (:mod:`clrl.allocator`), which SB3's
    users do not have; timed in clrl's process, "stock" would not be stock. ``tuned_malloc``
    gives the same SB3 run clrl's allocator and OpenMP settings, to show how much of the gap they
    explain; the stock child gets libgomp's default spin-wait even though it imports clrl.
    The parent times each ``run`` round trip (a pipe message each way, well under a millisecond).
    """

    def __init__(self, name: str, tuned_malloc: bool, threads: int, **sb3_kwargs: Any) -> None:
        ctx = multiprocessing.get_context("spawn")  # no forked torch or env threads
        self.name = name
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve_sb3, args=(child, sb3_kwargs, tuned_malloc, threads), daemon=True)
        with _stock_openmp(not tuned_malloc):
            self._proc.start()
        child.close()
        self.phases = {"rollout": 0.0, "train": 0.0}
        self.malloc, self.openmp = self._reply()

    def _reply(self) -> Any:
        try:
            kind, value = self._conn.recv()
        except EOFError as exc:
            raise RuntimeError(f"{self.name}: the benchmark process exited (code {self._proc.exitcode})") from exc
        if kind == "error":
            raise RuntimeError(f"{self.name} failed in its benchmark process:\n{value}")
        return value

    def run(self, updates: int) -> int:
        self._conn.send(("run", updates))
        steps, self.phases = self._reply()
        return int(steps)

    def close(self) -> None:
        try:
            self._conn.send(("close", None))
        except (OSError, ValueError):
            pass
        self._proc.join(timeout=30)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join()
        self._conn.close()


@contextlib.contextmanager
def _stock_openmp(stock: bool) -> Iterator[None]:
    """While a child is spawned: for a stock child, libgomp's default spin (the child's
    ``import clrl`` sees ``CLRL_OPENMP=default`` and leaves ``GOMP_SPINCOUNT`` unset)."""
    if not stock:
        yield
        return
    saved = {k: os.environ.get(k) for k in ("GOMP_SPINCOUNT", OPENMP_ENV)}
    if (openmp_mode() or "").startswith("spin"):  # clrl's own setting, not the user's
        os.environ.pop("GOMP_SPINCOUNT", None)
    os.environ[OPENMP_ENV] = "default"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _serve_sb3(conn, sb3_kwargs: dict[str, Any], tuned_malloc: bool, threads: int) -> None:
    """The child of :class:`_SB3Process`: build, then run updates on request until "close"."""
    variant = None
    try:
        mode = tune_malloc() if tuned_malloc else "default"
        torch.set_num_threads(threads)
        variant = _SB3Stock(**sb3_kwargs)
        conn.send(("ready", (mode, openmp_mode())))
        while True:
            cmd, arg = conn.recv()
            if cmd != "run":
                break
            conn.send(("done", (variant.run(arg), dict(variant.phases))))
    except (EOFError, KeyboardInterrupt):
        pass
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", traceback.format_exc()))
    finally:
        if variant is not None:
            variant.close()
        conn.close()


def _time_sb3_rollout_phases(model: Any) -> dict[str, float]:
    """SB3's ``collect_rollouts`` split by wrapping what it calls: the env's ``step``, the policy's
    forward and value passes, the buffer's methods; the rest (conversions, bookkeeping) is
    ``other``, filled in by :func:`_fill_other`."""
    spent = dict.fromkeys(("env", "inference", "buffer", "other"), 0.0)  # conversions: inside "other"
    targets = [(model.env, "step", "env"), (model.policy, "forward", "inference"),
               (model.policy, "predict_values", "inference")]
    targets += [(model.rollout_buffer, m, "buffer") for m in ("reset", "add", "compute_returns_and_advantage")]
    for obj, attr, key in targets:
        _add_timer(obj, attr, spent, key)
    return spent


class _Clrl(_Variant):
    """clrl's PPO on the second task of a two-task sequence (same game twice)."""

    def __init__(self, method: str, game: str, n_envs: int, n_steps: int, n_epochs: int,
                 n_minibatches: int, device: str, seed: int, consolidation_samples: int,
                 net: tuple[tuple[int, ...], int] = NATURE, lean: bool = True, groups: int = 1,
                 rollout_threads: int = 0, name: str | None = None, *, emulator_nice: int) -> None:
        from clrl.config import PPOConfig
        from clrl.regularizers import build_regularizer
        from clrl.rl.agent import TaskPPO, collect_states
        from clrl.rl.envs import action_count, make_vec_env
        from clrl.rl.policy import build_actor_critic

        self.name = name or (f"clrl {method}" if lean else SB3_LOOP)
        torch.manual_seed(seed)
        env_cfg = EnvConfig(emulator_nice=emulator_nice)
        self.ppo = PPOConfig(n_envs=n_envs, n_steps=n_steps, n_epochs=n_epochs, n_minibatches=n_minibatches,
                             learning_rate=2.5e-4, clip_range=0.1, ent_coef=0.01, rollout_groups=groups,
                             rollout_threads=rollout_threads)
        n_actions = action_count(game, env_cfg)
        self.net = build_actor_critic(net[0], net[1], "relu").to(device)
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
        self.model = TaskPPO(env, self.net, 1, self.ppo, device=device, lean=lean)
        self.model.reset_envs(seed + 1)
        self.reg.begin_task(1, self.model.policy.optimizer)
        self.batch = n_envs * n_steps
        self.phases = _time_phases(self.model)
        self.rollout_phases = self.model.rollout_seconds if lean else _time_sb3_rollout_phases(self.model)
        self._lean = lean

    def run(self, updates: int) -> int:
        for _ in range(updates):
            self.model.update(1.0)
        return updates * self.batch

    def close(self) -> None:
        self.model.env.close()


def _window_rate(fn: Callable[[], None], per_call: int, seconds: float,
                 sync: Callable[[], None] = lambda: None) -> float:
    """``per_call`` x calls of ``fn`` per second over one window of about ``seconds`` (3 calls at
    least), ``sync`` waiting for queued device work before the clock stops."""
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 3:
        fn()
        n += 1
    sync()
    return n * per_call / (time.perf_counter() - start)


def compute_bound(n_envs: int, n_epochs: int, minibatch: int, device: str, seconds: float = 3.0,
                  net_shape: tuple[tuple[int, ...], int] = NATURE, pause_s: float | None = None) -> dict[str, float]:
    """Samples/s of forward+backward+Adam (minibatch) and of inference (n_envs) for the network
    (each the best of ``BOUND_WINDOWS`` windows of ``seconds / BOUND_WINDOWS``).

    With ``pause_s``, also inference when every call follows an idle pause that long (one env
    step's worth): ``inference_after_pause_samples_per_s``. A rollout's inference always follows
    the wait for the emulators, and a thread that has waited runs its next kernels slower (it
    and torch's OpenMP worker, asleep by then, have to be woken and find cold caches), which a
    back-to-back loop never pays. Not part of the bound: it says how much of the rollout's
    inference time is that wake-up.
    """
    from clrl.rl.policy import build_actor_critic

    net = build_actor_critic(net_shape[0], net_shape[1], "relu").to(device)
    net.add_task(0, 18)
    opt = torch.optim.Adam(net.task_parameters(0), lr=1e-4)
    # the env hands its frames over channels-last and the rollout keeps them so (AtariVecEnv,
    # RolloutStore), so inference and training read that layout here too: the bound does not
    # pay the transposes clrl does not pay
    x = torch.randint(0, 256, (minibatch, 4, 84, 84), dtype=torch.uint8, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    xi = x[:n_envs].clone()  # clone keeps the layout (preserve_format)

    def rate(fn, batch: int) -> float:
        fn()
        _sync(device)
        # a bound: the best window
        return max(_window_rate(fn, batch, seconds / BOUND_WINDOWS, lambda: _sync(device)) for _ in range(BOUND_WINDOWS))

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
    out = {
        "train_samples_per_s": train,
        "inference_samples_per_s": inference,
        "env_steps_per_s": 1.0 / (n_epochs / train + 1.0 / inference),
    }
    if pause_s:
        out["pause_s"] = pause_s
        out["inference_after_pause_samples_per_s"] = _paused_rate(infer, n_envs, pause_s, seconds / BOUND_WINDOWS,
                                                                  lambda: _sync(device))
    return out


def _paused_rate(fn: Callable[[], None], per_call: int, pause_s: float, seconds: float,
                 sync: Callable[[], None], clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep) -> float:
    """``per_call`` x calls of ``fn`` per second of ``fn``'s own time, each call after ``pause_s``
    of sleep (about ``seconds`` of calls, 20 at least; the pauses are not counted)."""
    spent, n = 0.0, 0
    while spent < seconds or n < 20:
        sleep(pause_s)
        start = clock()
        fn()
        sync()
        spent += clock() - start
        n += 1
    return n * per_call / spent


class RawVecEnv:
    """ale-py's raw C++ vector env with random actions: the env side of the machine bound.

    The same emulator settings as clrl's training envs (:class:`clrl.config.EnvConfig`'s
    defaults: frame skip 4 with max-pool, 84x84 gray, 4 stacked frames, no-op and FIRE resets,
    no sticky actions, minimal action set, same-step auto-reset), but one vector env of all the
    envs on one worker thread per core (clrl's envs have one each, for per-env FIRE presses) and
    no Python wrapper. :meth:`window` times one window of steps; the bench
    takes one in every round besides the final ones, each after a short untimed settle, and the
    bound is the best of them all: right after seconds of full-core training the same env can run
    20-30% slower for about a second on this machine (2,500-3,200 against 3,400-4,000 steps/s in
    repeated measurements), and a bound read only then would flatter every share. What is left
    is the host's own noise: this is a shared virtual machine.
    """

    def __init__(self, game: str, n_envs: int, seed: int = 0) -> None:
        import os

        import numpy as np
        from ale_py.vector_env import AtariVectorEnv

        from clrl.rl.envs import OBS_SIZE, action_count
        from clrl.rl.games import rom_id

        cfg = EnvConfig()
        self.n_envs = n_envs
        self._venv = AtariVectorEnv(
            rom_id(game), n_envs, num_threads=min(n_envs, os.cpu_count() or 1),
            max_num_frames_per_episode=cfg.max_frames_per_episode, repeat_action_probability=cfg.sticky_actions,
            full_action_space=cfg.full_action_space, autoreset_mode="SameStep", img_height=OBS_SIZE,
            img_width=OBS_SIZE, grayscale=True, stack_num=cfg.frame_stack, frameskip=cfg.frame_skip, maxpool=True,
            noop_max=cfg.noop_max, episodic_life=False, reward_clipping=False, use_fire_reset=cfg.fire_reset,
        )
        self._venv.reset(seed=seed)
        rng = np.random.default_rng(seed)
        self._actions = rng.integers(0, action_count(game, cfg), size=(256, n_envs), dtype=np.int64)
        self._k = 0
        for _ in range(8):  # warm-up
            self._step()
        self.windows: list[float] = []  # steps/s of every window so far

    def _step(self) -> None:
        self._venv.step(self._actions[self._k % len(self._actions)])
        self._k += 1

    def window(self, seconds: float, settle: float = 0.0) -> float:
        """Env steps/s (all envs together) over one window of about ``seconds``, after ``settle``
        seconds of untimed steps (right after training, the first second runs slow)."""
        start = time.perf_counter()
        while time.perf_counter() - start < settle:
            self._step()
        rate = _window_rate(self._step, self.n_envs, seconds)
        self.windows.append(rate)
        return rate

    def close(self) -> None:
        venv, self._venv = self._venv, None
        if venv is not None:
            venv.close()
            del venv.ale  # joins the C++ worker threads now


def machine_bound(bound: dict[str, float], env_steps_per_s: float, n_epochs: int) -> dict[str, float]:
    """``1 / (epochs / train_rate + 1 / inference_rate + 1 / env_rate)`` env steps/s."""
    return {
        "env_steps_per_s": 1.0 / (n_epochs / bound["train_samples_per_s"] + 1.0 / bound["inference_samples_per_s"]
                                  + 1.0 / env_steps_per_s),
        "env_rate": env_steps_per_s,
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
    channels: tuple[int, ...] = NATURE[0],
    hidden: int = NATURE[1],
    sb3_loop: bool = True,
    pipelined_groups: int = 2,
    emulator_nice: int | None = None,
    log=print,
) -> dict[str, Any]:
    """Time every variant for ``updates`` PPO updates per round, ``rounds`` interleaved rounds."""
    net_shape = (tuple(int(c) for c in channels), int(hidden))
    nice = EnvConfig().emulator_nice if emulator_nice is None else int(emulator_nice)
    nature = net_shape == NATURE
    if stock and not nature:
        log("SB3's stock PPO has only the Nature CNN: skipped for this network")
        stock = False
    malloc = tune_malloc()  # clrl's process, as `clrl run` sets it up
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    variants: list[_Variant] = []
    raw: RawVecEnv | None = None
    try:
        if stock:
            sb3 = {"game": game, "n_envs": n_envs, "n_steps": n_steps, "n_epochs": n_epochs,
                   "n_minibatches": n_minibatches, "device": device, "seed": seed}
            for name, tuned in ((SB3_STOCK, False), (SB3_TUNED, True)):
                log(f"building {name} (in its own process) ...")
                variants.append(_SB3Process(name, tuned, torch.get_num_threads(), **sb3))
        for m in methods:
            log(f"building clrl {m} (consolidating a first task) ...")
            variants.append(_Clrl(m, game, n_envs, n_steps, n_epochs, n_minibatches, device, seed, consolidation_samples,
                                  net_shape, emulator_nice=nice))
            if m == "none" and pipelined_groups > 1:
                name = pipelined_name(pipelined_groups)
                log(f"building {name} ...")
                variants.append(_Clrl(m, game, n_envs, n_steps, n_epochs, n_minibatches, device, seed,
                                      consolidation_samples, net_shape, groups=pipelined_groups, rollout_threads=1,
                                      name=name, emulator_nice=nice))
            if m == "none" and sb3_loop:
                log(f"building {SB3_LOOP} ...")
                variants.append(_Clrl(m, game, n_envs, n_steps, n_epochs, n_minibatches, device, seed,
                                      consolidation_samples, net_shape, lean=False, emulator_nice=nice))
        for v in variants:
            v.warmup()
        raw = RawVecEnv(game, n_envs, seed)
        per_round: list[dict[str, float]] = []
        phases_per_round: list[dict[str, dict[str, float]]] = []  # seconds per update
        rollout_phases_per_round: list[dict[str, dict[str, float]]] = []  # seconds per update (clrl)
        for r in range(rounds):
            order = variants[r % len(variants):] + variants[: r % len(variants)]
            sps: dict[str, float] = {}
            phases: dict[str, dict[str, float]] = {}
            split: dict[str, dict[str, float]] = {}
            for v in order:
                before = dict(v.phases)
                split_before = dict(v.rollout_phases) if v.rollout_phases is not None else None
                _sync(device)
                start = time.perf_counter()
                steps = v.run(updates)
                _sync(device)
                sps[v.name] = steps / (time.perf_counter() - start)
                phases[v.name] = {k: (v.phases[k] - before[k]) / updates for k in before}
                if split_before is not None:
                    split[v.name] = _fill_other(
                        {k: (v.rollout_phases[k] - split_before[k]) / updates for k in split_before},
                        phases[v.name]["rollout"])
            per_round.append(sps)
            phases_per_round.append(phases)
            rollout_phases_per_round.append(split)
            raw_rate = raw.window(bound_seconds / BOUND_WINDOWS, settle=RAW_SETTLE * bound_seconds)  # one per round
            log(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {s:.0f}" for k, s in sps.items())
                + f"; raw C++ env {raw_rate:.0f}")
        log("measuring the raw C++ vector env (random actions) ...")
        for k in range(BOUND_WINDOWS):
            raw.window(bound_seconds / BOUND_WINDOWS, settle=2 * RAW_SETTLE * bound_seconds if k == 0 else 0.0)
        log("measuring the compute bound ...")
        bound = compute_bound(n_envs, n_epochs, n_envs * n_steps // n_minibatches, device, seconds=bound_seconds,
                              net_shape=net_shape, pause_s=n_envs / max(raw.windows))  # one raw env step
        machine = machine_bound(bound, max(raw.windows), n_epochs)  # a bound: the best window
        machine["env_rate_windows"] = [round(w, 1) for w in raw.windows]
    finally:
        if raw is not None:
            raw.close()
        for v in variants:
            v.close()
        torch.set_num_threads(old_threads)

    names = [v.name for v in variants]
    rows = []
    for name in names:
        row: dict[str, Any] = {"variant": name, "env_steps_per_s": statistics.median(r[name] for r in per_round)}
        for phase in ("rollout", "train"):
            row[f"{phase}_s_per_update"] = statistics.median(r[name][phase] for r in phases_per_round)
        if name in rollout_phases_per_round[0]:
            row["rollout_phases_s_per_update"] = {
                k: statistics.median(r[name][k] for r in rollout_phases_per_round) for k in rollout_phases_per_round[0][name]}
        if name == pipelined_name(pipelined_groups) and "clrl none" in names:
            # no target: whether overlapping emulation with inference pays on this machine
            row["ratio"] = statistics.median(r[name] / r["clrl none"] for r in per_round)
            row["ratio_of"] = "clrl none's speed"
        elif name == SB3_LOOP:
            # no target: what the lean rollout path gains over SB3's loop on the same PPO
            row["ratio"] = statistics.median(r["clrl none"] / r[name] for r in per_round)
            row["ratio_of"] = "(clrl none over this)"
        elif name == "clrl none" and stock:
            row["ratio"] = statistics.median(r[name] / r[SB3_STOCK] for r in per_round)
            row["ratio_of"] = f"{SB3_STOCK}'s speed"
            row["target"] = f">= {TARGET_SPEEDUP}"
            row["meets_target"] = row["ratio"] >= TARGET_SPEEDUP
        elif name == SB3_TUNED and "clrl none" in names:
            # no target: how much of clrl's lead is left when SB3 gets the same allocator
            row["ratio"] = statistics.median(r["clrl none"] / r[name] for r in per_round)
            row["ratio_of"] = "(clrl none over this)"
        elif name.startswith("clrl ") and name != "clrl none" and "clrl none" in names:
            # slowdown: fine-tuning's speed over the regularizer's (1.00 = no cost)
            row["ratio"] = statistics.median(r["clrl none"] / r[name] for r in per_round)
            row["ratio_of"] = "slower than clrl none"
            row["target"] = f"<= {TARGET_OVERHEAD}"
            row["meets_target"] = row["ratio"] <= TARGET_OVERHEAD
        rows.append(row)
    target_share = TARGET_MACHINE_SHARE["nature" if nature else "other"]
    machine["target_share"] = target_share
    if "clrl none" in names:
        fine = next(r for r in rows if r["variant"] == "clrl none")
        bound["clrl_none_share"] = fine["env_steps_per_s"] / bound["env_steps_per_s"]
        machine["clrl_none_share"] = fine["env_steps_per_s"] / machine["env_steps_per_s"]
        # the target is met by clrl fine-tuning in its default rollout or in the pipelined one the
        # CPU configs use, whichever is faster (both shares are reported)
        machine["best_variant"], machine["best_share"] = "clrl none", machine["clrl_none_share"]
        piped = next((r for r in rows if r["variant"] == pipelined_name(pipelined_groups)), None)
        if piped is not None:
            machine["pipelined_share"] = piped["env_steps_per_s"] / machine["env_steps_per_s"]
            if machine["pipelined_share"] > machine["best_share"]:
                machine["best_variant"], machine["best_share"] = piped["variant"], machine["pipelined_share"]
        machine["meets_target"] = machine["best_share"] >= target_share
    return {
        "game": game,
        "settings": {"n_envs": n_envs, "n_steps": n_steps, "n_epochs": n_epochs, "n_minibatches": n_minibatches,
                     "updates_per_round": updates, "rounds": rounds, "device": str(device),
                     "torch_threads": int(threads) if threads else old_threads, "network": _net_name(net_shape),
                     "pipelined_groups": int(pipelined_groups),
                     "channels": list(net_shape[0]), "hidden": net_shape[1], "emulator_nice": nice,
                     "malloc": {"clrl": malloc, **{v.name: v.malloc for v in variants if isinstance(v, _SB3Process)}},
                     "openmp": {"clrl": openmp_mode() or "default",
                                **{v.name: v.openmp for v in variants if isinstance(v, _SB3Process)}}},
        "rows": rows,
        "per_round": per_round,
        "phases_per_round": phases_per_round,
        "rollout_phases_per_round": rollout_phases_per_round,
        "compute_bound": bound,
        "machine_bound": machine,
    }


def _net_name(net_shape: tuple[tuple[int, ...], int]) -> str:
    chans = "-".join(str(c) for c in net_shape[0])
    kind = "Nature CNN" if net_shape == NATURE else ("small trunk" if net_shape == NETS["quick"] else "CNN")
    return f"{kind} {chans}/{net_shape[1]} relu"


def _fill_other(split: dict[str, float], rollout: float) -> dict[str, float]:
    """Whatever of the rollout's seconds the phase timers missed goes to ``other``, so the phases
    add up to the rollout. SB3's loop (no ``conversions`` key): ``other`` is its time outside
    the wrapped calls, i.e. its conversions and bookkeeping. clrl's lean loop times its phases
    itself; it misses only the callbacks and the phase clock."""
    split["other"] = split["other"] + max(0.0, rollout - sum(split.values()))
    return split


def _ratio_text(row: dict[str, Any]) -> str:
    if "ratio" not in row:
        return "-"
    text = f"{row['ratio']:.2f}x {row['ratio_of']}"
    if "target" not in row:
        return text
    return f"{text} (target {row['target']}: {'ok' if row['meets_target'] else 'MISSED'})"


HEADER = ("variant", "env steps/s", "rollout s/update", "train s/update", "ratio")


def _table_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per variant and one for the compute bound (its phases: compute alone)."""
    rows = [
        (r["variant"], f"{r['env_steps_per_s']:.0f}", f"{r['rollout_s_per_update']:.3f}",
         f"{r['train_s_per_update']:.3f}", _ratio_text(r))
        for r in result["rows"]
    ]
    s, b = result["settings"], result["compute_bound"]
    batch = s["n_envs"] * s["n_steps"]
    share = f"; clrl none at {b['clrl_none_share']:.0%}" if "clrl_none_share" in b else ""
    rows.append((
        "compute bound", f"{b['env_steps_per_s']:.0f}", f"{batch / b['inference_samples_per_s']:.3f}",
        f"{s['n_epochs'] * batch / b['train_samples_per_s']:.3f}",
        f"fwd+bwd {b['train_samples_per_s']:.0f}/s, inference {b['inference_samples_per_s']:.0f}/s{share}",
    ))
    m = result["machine_bound"]
    mshare = ""
    if "clrl_none_share" in m:
        ok = "ok" if m["meets_target"] else "MISSED"
        piped = f", pipelined at {m['pipelined_share']:.0%}" if "pipelined_share" in m else ""
        mshare = (f"; clrl none at {m['clrl_none_share']:.0%}{piped} (target >= {m['target_share']:.0%}, the "
                  f"faster of the two: {ok})")
    rows.append((
        "machine bound", f"{m['env_steps_per_s']:.0f}",
        f"{batch / b['inference_samples_per_s'] + batch / m['env_rate']:.3f}",
        f"{s['n_epochs'] * batch / b['train_samples_per_s']:.3f}",
        f"compute + raw C++ env at {m['env_rate']:.0f} steps/s (random actions){mshare}",
    ))
    return rows


PHASE_HEADER = ("variant", *PHASES, "rollout")


def _phase_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """Seconds per update in each rollout phase; the bound's env and inference for comparison."""
    def cell(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    rows = [(r["variant"], *(cell(r["rollout_phases_s_per_update"].get(k)) for k in PHASES), cell(r["rollout_s_per_update"]))
            for r in result["rows"] if "rollout_phases_s_per_update" in r]
    s, b, m = result["settings"], result["compute_bound"], result["machine_bound"]
    batch = s["n_envs"] * s["n_steps"]
    env_s, inf_s = batch / m["env_rate"], batch / b["inference_samples_per_s"]
    rows.append(("machine bound", cell(env_s), cell(inf_s), "0", "0", "0", cell(env_s + inf_s)))
    if "inference_after_pause_samples_per_s" in b:  # older bench_ppo.json files have no such entry
        rows.append((f"its inference, each call after a {1e3 * b['pause_s']:.1f} ms pause (not in the bound)", "-",
                     cell(batch / b["inference_after_pause_samples_per_s"]), "-", "-", "-", "-"))
    return rows


def _settings_line(result: dict[str, Any]) -> str:
    s = result["settings"]
    malloc = "; ".join(f"{k}: {v}" for k, v in s["malloc"].items())
    openmp = "; ".join(f"{k}: {v}" for k, v in s["openmp"].items())
    return (f"{s['n_envs']} envs x {s['n_steps']} steps, {s['n_epochs']} epochs, {s['n_minibatches']} minibatches; "
            f"{s['rounds']} interleaved rounds of {s['updates_per_round']} updates; device {s['device']}, "
            f"{s['torch_threads']} torch threads; malloc: {malloc}; "
            f"OpenMP: {openmp}; emulator threads at nice +{s.get('emulator_nice', 0)}. "
            "Ratios are medians of within-round ratios; shares of a bound are the median speed over "
            "the rounds against the bound.")


def _phase_note(result: dict[str, Any]) -> str:
    """What the rollout phase columns hold; on a GPU the forward pass runs asynchronously, so its
    time shows where the rollout first waits for it: the actions' copy to the host."""
    note = "other: callbacks and bookkeeping; for SB3's loop also its conversions"
    if result["settings"]["device"] != "cpu":
        note += ("; on this device inference is the forward pass's launch and conversions include the "
                 "wait for it")
    return note


def format_markdown(result: dict[str, Any]) -> str:
    lines = [f"# clrl bench ppo: {result['game']}, {result['settings']['network']}", "", _settings_line(result), "",
             "| " + " | ".join(HEADER) + " |", "|---|---:|---:|---:|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in _table_rows(result)]
    lines += ["", f"Rollout phases, seconds per update ({_phase_note(result)}):", "", "| " + " | ".join(PHASE_HEADER) + " |", "|---" + "|---:" * (len(PHASE_HEADER) - 1) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in _phase_rows(result)]
    return "\n".join(lines) + "\n"


def _print_table(result: dict[str, Any]) -> None:
    from rich.table import Table

    from clrl.summary import table_console

    table = Table(title=f"clrl bench ppo: {result['game']}, {result['settings']['network']}", caption=_settings_line(result))
    for i, name in enumerate(HEADER):
        table.add_column(name, justify="right" if 0 < i < len(HEADER) - 1 else "left")
    for row in _table_rows(result):
        table.add_row(*row)
    console = table_console()
    console.print(table)
    phases = Table(title="rollout phases, s/update", caption=_phase_note(result))
    for i, name in enumerate(PHASE_HEADER):
        phases.add_column(name, justify="right" if i else "left")
    for row in _phase_rows(result):
        phases.add_row(*row)
    console.print(phases)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--game", default="Boxing", help="ALE game (default Boxing)")
    parser.add_argument("--updates", type=int, default=1, help="PPO updates per variant per round (default 1)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved rounds; more, shorter rounds resist load from other processes (default 5)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                        help="clrl regularizers to time (default: all; 'none' is fine-tuning)")
    parser.add_argument("--no-stock", action="store_true", help="skip SB3's stock PPO")
    parser.add_argument("--no-sb3-loop", action="store_true",
                        help=f"skip '{SB3_LOOP}' (fine-tuning with SB3's own rollout loop and buffer)")
    parser.add_argument("--pipelined-groups", type=int, default=2, metavar="G",
                        help="also time fine-tuning with the envs stepped in G groups, inference for one (on one torch "
                        "thread) overlapping the others' emulation (train.rollout_groups G, train.rollout_threads 1; "
                        "default 2; 1 skips it)")
    parser.add_argument("--net", choices=sorted(NETS), default="nature",
                        help="nature: 32-64-64/512 (default); quick: 16-32-32/256, the CPU configs' trunk")
    parser.add_argument("--channels", type=int, nargs=3, default=None, metavar="C",
                        help="conv channels of the trunk (overrides --net)")
    parser.add_argument("--hidden", type=int, default=None, help="hidden units of the trunk (overrides --net)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads for every variant (default: torch's)")
    parser.add_argument("--emulator-nice", type=int, default=None, metavar="N", choices=range(20),
                        help="clrl's emulator threads run N nice levels below the learner (env.emulator_nice; "
                        f"default {EnvConfig().emulator_nice}; 0 = same priority, the figures before it existed)")
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
    for key in ("updates", "rounds", "pipelined_groups"):
        if getattr(args, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be >= 1")
    channels, hidden = NETS[args.net]
    channels = tuple(args.channels) if args.channels is not None else channels
    hidden = args.hidden if args.hidden is not None else hidden
    if min(channels) < 1 or hidden < 1:
        raise UserError("--channels and --hidden must be >= 1")
    kw: dict[str, Any] = {"updates": args.updates, "rounds": args.rounds}
    if args.quick:
        kw = {"n_envs": 2, "n_steps": 32, "updates": 1, "rounds": 1, "consolidation_samples": 32, "bound_seconds": 1.0}
    result = run_ppo_bench(game=game, methods=tuple(args.methods), device=device, threads=args.threads,
                           stock=not args.no_stock, channels=channels, hidden=hidden, sb3_loop=not args.no_sb3_loop,
                           pipelined_groups=args.pipelined_groups, emulator_nice=args.emulator_nice,
                           **kw)
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
