"""One linear output head per task on top of a shared trunk (multi-head / task-aware setting)."""

from __future__ import annotations

import operator
from collections.abc import Iterator

from torch import Tensor, nn

__all__ = ["MultiHead"]


class _HeadDict(nn.ModuleDict):
    """A ModuleDict indexed by integer task ids (stored under ``str(task)``)."""

    def __getitem__(self, task: int | str) -> nn.Linear:  # type: ignore[override]
        return super().__getitem__(str(task))

    def __contains__(self, task: object) -> bool:  # type: ignore[override]
        return super().__contains__(str(task))


class MultiHead(nn.Module):
    """Per-task ``nn.Linear(in_features, n_out)`` heads, PyTorch default init.

    ``heads[task]`` is the task's Linear; task ids are any ints. A finished task's head should
    not be handed to the next task's optimizer (a past head would otherwise keep moving through
    Adam's momentum, bug (3) of the AGS-CL code, README "Departures from the authors' code"): build the optimizer from
    ``trunk.parameters()`` and ``heads.parameters_of(task)``.
    """

    def __init__(self, in_features: int) -> None:
        super().__init__()
        if int(in_features) <= 0:
            raise ValueError(f"in_features must be positive, got {in_features}")
        self.in_features = int(in_features)
        self.heads = _HeadDict()
        self._tasks: list[int] = []

    def add_head(self, task: int, n_out: int) -> nn.Linear:
        """Create the head of ``task`` with ``n_out`` outputs and return it."""
        task = _task_id(task)
        if task in self.heads:
            raise ValueError(f"task {task} already has a head")
        if int(n_out) <= 0:
            raise ValueError(f"n_out must be positive, got {n_out}")
        head = nn.Linear(self.in_features, int(n_out))
        self.heads[str(task)] = head
        self._tasks.append(task)
        return head

    def forward(self, features: Tensor, task: int) -> Tensor:
        task = _task_id(task)
        if task not in self.heads:
            raise KeyError(f"no head for task {task}; tasks with heads: {self._tasks}")
        return self.heads[task](features)

    @property
    def n_heads(self) -> int:
        return len(self._tasks)

    @property
    def tasks(self) -> list[int]:
        """Task ids with a head, in the order they were added."""
        return list(self._tasks)

    def __contains__(self, task: object) -> bool:
        return task in self.heads

    def parameters_of(self, task: int) -> Iterator[nn.Parameter]:
        """The parameters of one task's head (to build that task's optimizer)."""
        return self.heads[_task_id(task)].parameters()

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        """Create missing heads from the shapes in ``state_dict`` before loading (resume)."""
        for key, value in state_dict.items():
            parts = key.split(".")
            if len(parts) == 3 and parts[0] == "heads" and parts[2] == "weight":
                task = int(parts[1])
                if task not in self.heads:
                    self.add_head(task, value.shape[0])
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def _task_id(task: object) -> int:
    """Accept ints (and numpy ints); reject bools, floats and strings."""
    if isinstance(task, bool):
        raise TypeError(f"task id must be an int, got {task!r}")
    try:
        return operator.index(task)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"task id must be an int, got {task!r}") from None
