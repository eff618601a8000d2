"""Probe sets: a fixed set of each task's inputs, kept at that task's end, and what the network
made of them then (submasks per layer, head features), so later evaluations can measure drift.

Stored in the run directory as ``probes/task_XX.npz`` (written atomically, read with
``allow_pickle=False``): ``inputs`` uint8 ``(N, *input_shape)`` (RL: frames as the env gives
them; supervised: the raw test images, normalized when used), ``mask_<l>`` the packed bits of
layer l's submask and ``shape_<l>`` its shape, ``features`` float32 ``(N, d)``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from clrl.io import atomic_write_bytes

__all__ = ["Probe", "as_uint8", "even_subsample", "probe_path", "save_probe", "load_probe"]


@dataclass
class Probe:
    """One task's probe inputs and, once the task has ended, its reference state."""

    task: int
    inputs: np.ndarray  # uint8
    masks: list[Tensor] | None = None  # bool, per analysed layer, at the task's end
    features: Tensor | None = None  # float32 (N, d), at the task's end


def as_uint8(inputs: Tensor | np.ndarray | Iterable[Tensor | np.ndarray]) -> np.ndarray:
    """Concatenate batches of inputs into one uint8 array; the values must be integers in
    [0, 255] (frames, raw image pixels), so nothing is lost."""
    if isinstance(inputs, (Tensor, np.ndarray)):
        parts = [inputs]
    else:
        parts = list(inputs)
    if not parts:
        raise ValueError("no probe inputs")
    arrays = [p.detach().cpu().numpy() if isinstance(p, Tensor) else np.asarray(p) for p in parts]
    x = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
    if x.dtype != np.uint8:
        if x.size and (not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 255 or not np.all(x == np.round(x))):
            raise ValueError("probe inputs must be integers in [0, 255] (raw frames or pixels) to be stored as uint8")
        x = x.astype(np.uint8)
    return np.ascontiguousarray(x)


def even_subsample(x: np.ndarray, n: int) -> np.ndarray:
    """``n`` rows spread evenly over ``x`` (all of it when it has fewer): consecutive states of a
    rollout are near copies, so spreading them keeps the probe set diverse."""
    if len(x) <= n:
        return x
    idx = np.linspace(0, len(x) - 1, num=n).round().astype(np.int64)
    return x[idx]


def probe_path(folder: str | os.PathLike, task: int) -> Path:
    return Path(folder) / f"task_{int(task):02d}.npz"


def save_probe(folder: str | os.PathLike, probe: Probe) -> Path:
    """Write ``probe`` (with its reference state) atomically; returns the path."""
    if probe.masks is None or probe.features is None:
        raise ValueError(f"probe of task {probe.task} has no reference state to save")
    arrays: dict[str, np.ndarray] = {"inputs": probe.inputs, "task": np.array(probe.task)}
    for i, m in enumerate(probe.masks):
        arrays[f"mask_{i}"] = np.packbits(m.cpu().numpy().astype(bool).ravel())
        arrays[f"shape_{i}"] = np.array(m.shape, dtype=np.int64)
    arrays["features"] = probe.features.cpu().numpy().astype(np.float32)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    path = probe_path(folder, probe.task)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_probe(folder: str | os.PathLike, task: int) -> Probe | None:
    """The saved probe of ``task``, or None when there is none."""
    path = probe_path(folder, task)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        masks = []
        i = 0
        while f"mask_{i}" in data:
            shape = tuple(int(s) for s in data[f"shape_{i}"])
            bits = np.unpackbits(data[f"mask_{i}"], count=int(np.prod(shape))).astype(bool)
            masks.append(torch.from_numpy(bits.reshape(shape)))
            i += 1
        return Probe(task=int(data["task"]), inputs=np.array(data["inputs"]), masks=masks,
                     features=torch.from_numpy(np.array(data["features"])))
