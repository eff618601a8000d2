"""What a sequential-Atari checkpoint holds, and how it is read back.

A checkpoint is one ``torch.save`` dict written atomically by :func:`clrl.io.save_checkpoint`
and read by :func:`clrl.io.load_checkpoint` (``weights_only=True``), so it holds tensors and
plain values only: the network (trunk, every actor and critic head, VCL betas), the running
task's Adam state, the regularizer's ``state_dict``, the global RNG states, the loop counters
and the results so far (as the JSON text of ``results.json``). The environments' internal state
cannot be saved; see :mod:`clrl.rl.runner` for the deterministic mode that makes resume exact.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from clrl.errors import CheckpointError, first_line
from clrl.io import check_finite_tensors, load_checkpoint, save_checkpoint
from clrl.results import Results, dumps
from clrl.rl.policy import ActorCritic

__all__ = ["Counters", "CHECKPOINT_VERSION", "pack", "read", "restore_net"]

CHECKPOINT_VERSION = 1


@dataclass
class Counters:
    """Where the sequential loop stands. A checkpoint is taken only between PPO updates."""

    task: int = 0  # task being trained; len(games) when the run is finished
    update: int = 0  # PPO updates finished in ``task``
    begun: bool = False  # begin_task ran for ``task`` (its heads exist)
    global_steps: int = 0  # training env steps since the run began
    updates_total: int = 0  # PPO updates since the run began
    next_eval: int = 0  # global step at or after which the next periodic evaluation runs
    evals: int = 0  # evaluation rounds so far

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Counters:
        """The saved counters; a value of the wrong type (a damaged file) is a ValueError."""
        if not isinstance(data, dict):
            raise ValueError(f"counters should be a dict, got {type(data).__name__}")
        kept = {}
        for f in fields(cls):
            if f.name in data:
                value, want = data[f.name], bool if f.type in (bool, "bool") else int
                if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                    raise ValueError(f"counter {f.name!r} should be {want.__name__}, got {value!r}")
                kept[f.name] = value
        return cls(**kept)


def pack(
    *,
    net: ActorCritic,
    optimizer: torch.optim.Optimizer | None,
    regularizer_state: dict[str, Any],
    counters: Counters,
    results: Results,
    rng: dict[str, Any],
    torch_threads: int,
) -> dict[str, Any]:
    """The checkpoint dict. Network and optimizer tensors are moved to the CPU (they are copied
    into the live modules on resume); the regularizer's stay where it keeps them."""
    return {
        "format": "clrl.checkpoint",
        "kind": "rl",
        "version": CHECKPOINT_VERSION,
        "heads": {int(t): net.n_actions(t) for t in net.tasks},
        "net": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "optimizer": _to_cpu(optimizer.state_dict()) if optimizer is not None else None,
        # as the regularizer keeps it: its tensors return to the same devices on resume
        "regularizer": regularizer_state,
        "counters": asdict(counters),
        "results": dumps(results),
        "rng": rng,
        "torch_threads": int(torch_threads),
    }


def write(path: str | os.PathLike, state: dict[str, Any]) -> None:
    save_checkpoint(path, state)


def read(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Load and check a sequential-Atari checkpoint; errors name the file.

    ``map_location=None`` keeps every tensor on the device it was saved from (a CUDA run
    resumed on a CUDA machine); ``"cpu"`` moves everything to the CPU."""
    state = load_checkpoint(path, map_location=map_location)
    if state.get("kind") != "rl" or state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: not a sequential-Atari checkpoint of version {CHECKPOINT_VERSION} "
            f"(kind {state.get('kind')!r}, version {state.get('version')!r})"
        )
    missing = [k for k in ("heads", "net", "optimizer", "regularizer", "counters", "results", "rng") if k not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return state


def restore_net(net: ActorCritic, state: dict[str, Any], path: str | os.PathLike = "checkpoint") -> None:
    """Create the saved tasks' heads, then load every weight (shapes must match the config)."""
    check_finite_tensors(state["net"], path)
    for task, n_actions in sorted(state["heads"].items()):
        if int(task) not in net.actor:
            net.add_task(int(task), int(n_actions))
    try:
        net.load_state_dict(state["net"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: the network in the checkpoint does not match the config ({first_line(exc)})"
        ) from exc


def results_of(state: dict[str, Any]) -> Results:
    return Results.model_validate(json.loads(state["results"]))


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_to_cpu(v) for v in obj)
    return obj
