"""Check that a config can run, by building what the run builds, without training.

``clrl validate`` and ``clrl run`` (before the run directory is made) call
:func:`check_buildable`: the network with its activations (and one forward pass of a dummy
batch, where width/block mismatches show), every task's head, VCL, the regularizer with its
hyperparameters exactly as the front end passes them, the data folder and the reference run.
A config that passes fails later only for reasons no build can see (a full disk, divergence).

It also refuses a PPO rollout that cannot fit in memory: :func:`rollout_bytes` is a lower
bound (the observations alone, uint8 as SB3's rollout buffer keeps them; the buffer's other
arrays, its flattened copy and the network come on top).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from clrl.config import RLConfig, SupervisedConfig, regularizer_hparams
from clrl.errors import ConfigError, UserError, first_line

__all__ = ["available_memory", "check_buildable", "rl_regularizer_hparams", "rollout_bytes"]


def rl_regularizer_hparams(cfg: RLConfig) -> tuple[str, dict[str, Any]]:
    """(name, hyperparameters) the RL runner builds its regularizer with.

    AGS-CL's proximal step defaults to once per PPO epoch (as the AGS-CL code runs it); EWC/MAS never ask for
    more Fisher/importance samples than the consolidation hands them."""
    name, hparams = regularizer_hparams(cfg)
    if name == "agscl" and "prox_every" not in hparams:
        hparams["prox_every"] = cfg.train.n_minibatches
    if name in ("ewc", "mas") and "max_samples" in hparams:
        hparams["max_samples"] = min(int(hparams["max_samples"]), cfg.train.consolidation_samples)
    return name, hparams


def rollout_bytes(cfg: RLConfig) -> int:
    """Lower bound on the bytes of one PPO rollout: n_envs * n_steps uint8 frame stacks of 84 x 84."""
    from clrl.rl.envs import OBS_SIZE

    return cfg.train.n_envs * cfg.train.n_steps * cfg.env.frame_stack * OBS_SIZE * OBS_SIZE


def available_memory() -> int | None:
    """Bytes of memory available to a new process (MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_buildable(cfg: RLConfig | SupervisedConfig, reference: bool = True, source: str | None = None) -> None:
    """Build the run's network, heads and regularizer on the CPU; a ConfigError names what fails.

    ``reference=False`` skips reading the reference run (a resumed run keeps the reference
    scores it stored). ``source`` (the config file and its --set overrides, as
    :func:`clrl.config.config_source` writes them) starts every message, as the schema's errors
    do: ``FILE: key: problem``. Torch's global RNG is left as it was, so a run started after
    this draws the same numbers."""
    try:
        with torch.random.fork_rng(devices=[]):
            if cfg.kind == "rl":
                _check_rl(cfg)
            else:
                _check_supervised(cfg)
        if reference and cfg.reference:
            _check_reference(cfg)
    except UserError as exc:
        if source is None:
            raise
        raise type(exc)(f"{source}: {exc}") from exc


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def _check_rl(cfg: RLConfig) -> None:
    from clrl.rl.envs import action_count
    from clrl.rl.policy import build_actor_critic

    need, have = rollout_bytes(cfg), available_memory()
    if have is not None and need > have:
        raise ConfigError(
            f"train.n_envs = {cfg.train.n_envs}, train.n_steps = {cfg.train.n_steps}: one rollout needs at least "
            f"{_gib(need)} of observations, more than the {_gib(have)} of memory available; lower them"
        )
    try:
        net = build_actor_critic(cfg.model.channels, cfg.model.hidden, cfg.model.activation, in_channels=cfg.env.frame_stack)
        for t, game in enumerate(cfg.tasks.games):
            net.add_task(t, action_count(game, cfg.env))
        net.eval()
        with torch.no_grad():
            net(torch.zeros(2, *net.trunk.input_shape, dtype=torch.uint8), 0)
        if cfg.train.vcl.gamma > 0:
            net.enable_vcl(cfg.train.vcl.gamma, cfg.train.vcl.n)
    except UserError:
        raise
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ConfigError(f"model: {first_line(exc)}") from exc
    _check_regularizer(*rl_regularizer_hparams(cfg), net.trunk, net.actor, cfg.model.activation)


def _check_regularizer(name: str, hparams: dict, trunk: Any, heads: Any, activation: Any = None) -> None:
    """Build the regularizer the run will build (its hyperparameters and node view checked)."""
    from clrl.regularizers import build_from_config

    build_from_config(name, hparams, trunk, heads, activation)


def _check_supervised(cfg: SupervisedConfig) -> None:
    from clrl.supervised.data import BENCHMARK_TASKS, _n_tasks
    from clrl.supervised.model import build_model

    dataset = cfg.tasks.dataset
    n_tasks = _n_tasks(cfg.tasks)
    per_task, _ = BENCHMARK_TASKS[dataset]
    classes = [per_task] * n_tasks
    if dataset != "split_digits":
        from clrl.supervised import cifar

        try:
            cifar.find_cifar_folder(cfg.tasks.root, cifar.CIFAR100_DIR, cifar.CIFAR100_FILES)
            if dataset == "cifar10_100":
                cifar.find_cifar_folder(cfg.tasks.root, cifar.CIFAR10_DIR, cifar.CIFAR10_FILES)
        except UserError as exc:
            raise ConfigError(f"tasks.root: {_relative_note(cfg.tasks.root)}{exc}") from exc
        if dataset == "cifar10_100":
            classes[0] = 10
    shape = (64,) if dataset == "split_digits" else (3, 32, 32)  # sklearn's 8 x 8 digits, CIFAR's images
    # what build_model reads of a benchmark: the input shape and each task's class count
    bench: Any = SimpleNamespace(input_shape=shape, tasks=[SimpleNamespace(n_classes=k) for k in classes])
    try:
        model = build_model(cfg, bench)
        model.train(False)
        with torch.no_grad():
            model(torch.zeros(2, *shape), 0)
    except UserError:
        raise
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ConfigError(f"model: {first_line(exc)}") from exc
    _check_regularizer(*regularizer_hparams(cfg), model.trunk, model.heads, cfg.model.activation)


def _relative_note(root: str | None) -> str:
    """For a relative path: what it resolved to (it is relative to the current directory, not
    to the config file)."""
    if root is None or Path(root).expanduser().is_absolute():
        return ""
    return f"{root} is relative to the current directory, here {Path(root).expanduser().resolve()}; "


def _check_reference(cfg: RLConfig | SupervisedConfig) -> None:
    from clrl.config import config_to_dict
    from clrl.results import reference_from_run

    try:
        if cfg.kind == "rl":
            # the run's own check (finished, evaluated the same way), before its directory exists
            reference_from_run(cfg.reference, list(cfg.tasks.games), config=config_to_dict(cfg))
        else:
            from clrl.supervised.data import task_plan

            # the run's own check (finished, the same tasks holding the same classes), before its directory exists
            plan = task_plan(cfg.tasks, cfg.seed)
            reference_from_run(cfg.reference, [name for name, _ in plan], config=config_to_dict(cfg),
                               classes=[classes for _, classes in plan])
    except UserError as exc:
        text = str(exc).removeprefix("reference ")
        raise type(exc)(f"reference: {_relative_note(cfg.reference)}{text}") from exc
