"""A reservoir replay buffer (Vitter 1985, algorithm R) for the single-pass regime.

After ``n`` items have streamed past a buffer of capacity ``M``, every one of them is in the
buffer with probability ``min(1, M/n)``: the n-th item is stored directly while ``n <= M`` and
otherwise kept with probability ``M/n``, replacing a uniformly random slot. The keep/replace
decision for item ``n`` depends only on ``n``, so a batch's decisions are drawn at once and
applied in stream order (a later item wins a slot that two items of one batch both drew).

Randomness comes from one seeded ``numpy.random.Generator`` (also used by :meth:`sample`), and
:meth:`state_dict` captures storage, counter and generator state for an exact resume
(``torch.load(weights_only=True)``-safe: tensors and plain values).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from clrl.seeding import generator_state, set_generator_state

__all__ = ["ReservoirBuffer"]


class ReservoirBuffer:
    """Stores ``(x, y, task)`` examples; ``add`` streams a batch in, ``sample`` draws a replay batch."""

    def __init__(self, capacity: int, seed: int | np.random.Generator = 0) -> None:
        if int(capacity) < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = int(capacity)
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(int(seed))
        self.seen = 0  # items streamed past so far (n)
        self.size = 0  # slots filled
        self.x: Tensor | None = None
        self.y: Tensor | None = None
        self.task: Tensor | None = None

    def __len__(self) -> int:
        return self.size

    def _allocate(self, x: Tensor, y: Tensor) -> None:
        self.x = torch.zeros((self.capacity, *x.shape[1:]), dtype=x.dtype, device=x.device)
        self.y = torch.zeros(self.capacity, dtype=y.dtype, device=y.device)
        self.task = torch.zeros(self.capacity, dtype=torch.int64, device=y.device)

    def slots_for(self, n_new: int) -> tuple[np.ndarray, np.ndarray]:
        """Algorithm R for the next ``n_new`` items: (positions in the batch, slots), in stream order.

        Advances ``seen``. Items not listed are dropped."""
        ns = self.seen + 1 + np.arange(n_new, dtype=np.int64)  # 1-based stream index of each new item
        self.seen += n_new
        n_fill = int(np.clip(self.capacity - (ns[0] - 1), 0, n_new))  # items that go to empty slots
        pos = np.arange(n_fill, dtype=np.int64)
        slots = ns[:n_fill] - 1
        if n_fill < n_new and self.capacity > 0:
            j = self.rng.integers(0, ns[n_fill:])  # uniform in [0, n-1]: kept iff j < M, then slot j
            kept = np.flatnonzero(j < self.capacity)
            pos = np.concatenate([pos, n_fill + kept])
            slots = np.concatenate([slots, j[kept]])
        return pos, slots.astype(np.int64)

    def add(self, x: Tensor, y: Tensor, task: int | Tensor) -> None:
        """Stream a batch of examples (all of ``task``, or one task id per example) past the buffer."""
        n = int(x.shape[0])
        if int(y.shape[0]) != n:
            raise ValueError(f"x has {n} rows but y has {y.shape[0]}")
        tasks = task if isinstance(task, Tensor) else torch.full((n,), int(task), dtype=torch.int64)
        if n == 0:
            return
        if self.x is None and self.capacity > 0:
            self._allocate(x, y)
        pos, slots = self.slots_for(n)
        if len(pos) == 0:
            return
        # several items of one batch may draw the same slot: the later one (in stream order) wins
        if len(slots) > 1:
            uniq, first_in_reversed = np.unique(slots[::-1], return_index=True)
            last = len(slots) - 1 - first_in_reversed
            pos, slots = pos[last], uniq
        assert self.x is not None and self.y is not None and self.task is not None
        dev = self.x.device
        slot_idx = torch.from_numpy(slots).to(dev)
        item_idx = torch.from_numpy(pos)
        self.x[slot_idx] = x.detach()[item_idx.to(x.device)].to(dev, self.x.dtype)
        self.y[slot_idx] = y.detach()[item_idx.to(y.device)].to(dev, self.y.dtype)
        self.task[slot_idx] = tasks[item_idx.to(tasks.device)].to(dev, torch.int64)
        self.size = min(self.capacity, self.seen)

    def sample(self, k: int) -> tuple[Tensor, Tensor, Tensor]:
        """``min(k, len(self))`` distinct stored examples, uniformly at random."""
        if self.size == 0 or k <= 0:
            raise ValueError("cannot sample from an empty buffer" if self.size == 0 else f"k must be positive, got {k}")
        idx = torch.from_numpy(self.rng.choice(self.size, size=min(int(k), self.size), replace=False).astype(np.int64))
        assert self.x is not None and self.y is not None and self.task is not None
        idx = idx.to(self.x.device)
        return self.x[idx], self.y[idx], self.task[idx]

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "seen": self.seen,
            "size": self.size,
            "x": None if self.x is None else self.x[: self.size].cpu().clone(),
            "y": None if self.y is None else self.y[: self.size].cpu().clone(),
            "task": None if self.task is None else self.task[: self.size].cpu().clone(),
            "rng": generator_state(self.rng),
        }

    def load_state_dict(self, state: dict[str, Any], device: str | torch.device = "cpu") -> None:
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"buffer capacity {self.capacity} differs from the saved {state['capacity']}")
        self.seen, self.size = int(state["seen"]), int(state["size"])
        set_generator_state(self.rng, state["rng"])
        if state["x"] is None:
            self.x = self.y = self.task = None
            return
        x, y = state["x"].to(device), state["y"].to(device)
        self._allocate(x, y)
        assert self.x is not None and self.y is not None and self.task is not None
        self.x[: self.size] = x
        self.y[: self.size] = y
        self.task[: self.size] = state["task"].to(device)
