"""Task-aware evaluation: each task is scored through its own head (multi-head setting)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from clrl.supervised.data import TaskData
from clrl.supervised.model import SupervisedModel

__all__ = ["evaluate_task", "evaluate_tasks"]


@torch.no_grad()
def evaluate_task(
    model: SupervisedModel, task: TaskData, t: int, split: str = "test", batch_size: int = 1000, device: torch.device | str = "cpu"
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of head ``t`` on a split, in eval mode (dropout off).

    The caller's train/eval mode is restored. An empty split gives (nan, nan)."""
    x_all, _ = task.split(split)
    n = len(x_all)
    if n == 0:
        return float("nan"), float("nan")
    was = model.trunk.training
    model.train(False)
    correct, loss_sum = 0, 0.0
    try:
        for lo in range(0, n, batch_size):
            x, y = task.tensors(split, np.arange(lo, min(n, lo + batch_size)), device)
            logits = model(x, t)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(dim=1) == y).sum())
    finally:
        model.train(was)
        if model.vcl is not None:
            model.vcl.clear()
    return correct / n, loss_sum / n


def evaluate_tasks(
    model: SupervisedModel, tasks: list[TaskData], which: range | list[int], batch_size: int, device: torch.device | str
) -> list[float]:
    """Test accuracy of each task in ``which``, each through its own head."""
    return [evaluate_task(model, tasks[j], j, "test", batch_size, device)[0] for j in which]
