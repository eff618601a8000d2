"""Split image benchmarks: tasks of a few classes each, one head per task (task-aware).

``build_benchmark(cfg.tasks, seed)`` gives a :class:`Benchmark`, a list of :class:`TaskData`
whose labels are remapped to ``0..k-1`` in the order of ``TaskData.classes`` (the head's output
``i`` is original class ``classes[i]``). Benchmarks (``tasks.dataset``):

* ``split_digits``: scikit-learn's bundled 8x8 digits (1,797 images, no download); a seeded
  stratified train/test split (``tasks.test_fraction``), 5 tasks of 2 classes.
* ``split_cifar100``: CIFAR-100, 10 tasks of 10 classes (AGS-CL, sec. 5.1).
* ``cifar10_100``: CIFAR-10 as task 0, then 10 CIFAR-100 tasks of 10 classes (AGS-CL, sec. 5.1).
* ``single_pass_cifar100``: CIFAR-100, 20 tasks of 5 classes (GNC paper, single-pass regime).

Tasks and seeds (``tasks.class_split``, ``tasks.shuffle_classes``): on the CIFAR benchmarks a
task is a fixed block of consecutive class ids and the seed shuffles the order of the blocks, as
the AGS-CL code does (it shuffles the task sequence with each seed, the tasks themselves stay the
same); Split Digits, which has no paper protocol, cuts a seeded permutation of its ten classes
into pairs (``class_split: random``; also available for CIFAR). Without ``shuffle_classes`` the
tasks come in class order. ``tasks.n_tasks`` keeps the first tasks.
``tasks.validation`` of each task's training set is held out, stratified by class, for the lr
schedule and best-epoch selection. Images are normalized with per-channel mean/std of the
benchmark's whole training set (for CIFAR-10/100 each source dataset with its own); CIFAR
images stay uint8 in memory and are normalized batch by batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from clrl.config import SupervisedTasks
from clrl.errors import ConfigError
from clrl.seeding import derive_seed

__all__ = [
    "BENCHMARK_TASKS",
    "Benchmark",
    "Normalizer",
    "TaskData",
    "build_benchmark",
    "split_classes",
    "stratified_holdout",
    "task_plan",
]

# dataset -> (classes per task, default and maximum number of tasks)
BENCHMARK_TASKS = {"split_digits": (2, 5), "split_cifar100": (10, 10), "cifar10_100": (10, 11), "single_pass_cifar100": (5, 20)}


@dataclass(frozen=True)
class Normalizer:
    """``(x * scale - mean[c]) / std[c]`` with channel axis 1 (a flat input is one channel)."""

    mean: np.ndarray
    std: np.ndarray
    scale: float = 1.0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32) * np.float32(self.scale)
        shape = (1, -1) + (1,) * (x.ndim - 2) if x.ndim > 2 and len(self.mean) > 1 else (1,) * max(x.ndim, 1)
        mean = self.mean.astype(np.float32).reshape(shape)
        std = self.std.astype(np.float32).reshape(shape)
        return (x - mean) / std

    @classmethod
    def fit(cls, x: np.ndarray, scale: float = 1.0, chunk: int = 4096) -> Normalizer:
        """Per-channel mean and (population) std of ``x * scale``; flat inputs give one channel.

        Accumulated in float64 over chunks, so 50,000 uint8 CIFAR images need no big copy."""
        per_channel = x.ndim == 4
        c = x.shape[1] if per_channel else 1
        total = np.zeros(c)
        total_sq = np.zeros(c)
        count = 0
        for start in range(0, len(x), chunk):
            part = x[start : start + chunk].astype(np.float64) * scale
            if per_channel:
                part = part.transpose(1, 0, 2, 3).reshape(c, -1)
            else:
                part = part.reshape(1, -1)
            total += part.sum(axis=1)
            total_sq += (part**2).sum(axis=1)
            count += part.shape[1]
        if count == 0:
            raise ValueError("cannot fit a normalizer on no data")
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
        return cls(mean=mean, std=np.where(std > 0, std, 1.0), scale=float(scale))


@dataclass
class TaskData:
    """One task: raw inputs, labels remapped to ``0..n_classes-1``, and its normalizer."""

    name: str
    classes: list[int]
    class_names: list[str]
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    norm: Normalizer

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def split(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        if which not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, got {which!r}")
        return getattr(self, f"x_{which}"), getattr(self, f"y_{which}")

    def tensors(self, which: str, index: np.ndarray | None = None, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
        """Normalized float inputs and int64 labels of a split (optionally of some rows)."""
        x, y = self.split(which)
        if index is not None:
            x, y = x[index], y[index]
        xt = torch.from_numpy(np.ascontiguousarray(self.norm(x))).to(device)
        return xt, torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)


@dataclass
class Benchmark:
    name: str
    tasks: list[TaskData]
    input_shape: tuple[int, ...]
    info: dict = field(default_factory=dict)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]


# --------------------------------------------------------------------------- splitting


def split_classes(
    n_classes: int, per_task: int, n_tasks: int, rng: np.random.Generator | None, blocks: bool = False
) -> list[list[int]]:
    """The classes of each of ``n_tasks`` tasks of ``per_task`` classes.

    ``blocks``: task contents are fixed blocks of consecutive class ids (block b = classes
    ``b * per_task .. (b + 1) * per_task - 1``) and ``rng`` shuffles the order of the blocks, as
    the AGS-CL/UCL code's Split CIFAR-100 does (``data{k}`` holds fine labels ``10(k-1)..10k-1``;
    ``shuffle(np.arange(10), random_state=seed)`` orders them; the permutation drawn here comes
    from clrl's own seeded generator, so it is not the same one for a given seed). Otherwise
    the first ``n_tasks`` chunks of a (seeded) permutation of all classes: every seed groups
    different classes together. Without ``rng`` both give the blocks in order.
    """
    if n_tasks * per_task > n_classes:
        raise ValueError(f"{n_tasks} tasks of {per_task} classes need {n_tasks * per_task} classes, have {n_classes}")
    if blocks:
        n_blocks = n_classes // per_task
        order = rng.permutation(n_blocks) if rng is not None else np.arange(n_blocks)
        return [list(range(int(b) * per_task, (int(b) + 1) * per_task)) for b in order[:n_tasks]]
    order = rng.permutation(n_classes) if rng is not None else np.arange(n_classes)
    return [sorted(int(c) for c in order[i * per_task : (i + 1) * per_task]) for i in range(n_tasks)]


def uses_class_blocks(cfg: SupervisedTasks) -> bool:
    """``tasks.class_split`` resolved: ``auto`` is blocks for the CIFAR benchmarks (the papers'
    code), a class permutation for split_digits (no paper protocol; the documented runs)."""
    if cfg.class_split == "auto":
        return cfg.dataset != "split_digits"
    return cfg.class_split == "blocks"


def stratified_holdout(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(keep, held-out) row indices: ``round(fraction * n_c)`` of each class c held out (at least
    one when ``fraction > 0`` and the class has two or more rows), but never all of a class: one
    row at least stays for training, so no class (and no task) is left with nothing to learn."""
    keep, held = [], []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        rows = rows[rng.permutation(len(rows))]
        k = int(round(fraction * len(rows)))
        if fraction > 0 and k == 0 and len(rows) > 1:
            k = 1
        k = min(k, len(rows) - 1)
        held.append(rows[:k])
        keep.append(rows[k:])
    cat = lambda parts: np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)  # noqa: E731
    return cat(keep), cat(held)


def _make_task(
    name: str,
    classes: list[int],
    names: list[str],
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    norm: Normalizer,
    validation: float,
    rng: np.random.Generator,
) -> TaskData:
    """Select the task's classes, remap labels to 0..k-1, hold out a validation share."""
    lookup = np.full(max(max(classes) + 1, int(y_train.max()) + 1, int(y_test.max()) + 1), -1, dtype=np.int64)
    lookup[classes] = np.arange(len(classes))
    tr = np.flatnonzero(np.isin(y_train, classes))
    te = np.flatnonzero(np.isin(y_test, classes))
    if len(tr) == 0 or len(te) == 0:
        raise ConfigError(f"task {name}: no training or test images for classes {classes}")
    keep, held = stratified_holdout(y_train[tr], validation, rng)
    return TaskData(
        name=name,
        classes=list(classes),
        class_names=[names[c] for c in classes],
        x_train=x_train[tr[keep]],
        y_train=lookup[y_train[tr[keep]]],
        x_val=x_train[tr[held]],
        y_val=lookup[y_train[tr[held]]],
        x_test=x_test[te],
        y_test=lookup[y_test[te]],
        norm=norm,
    )


def _n_tasks(cfg: SupervisedTasks) -> int:
    _, max_tasks = BENCHMARK_TASKS[cfg.dataset]
    n = cfg.n_tasks if cfg.n_tasks is not None else max_tasks
    if n > max_tasks:
        raise ConfigError(f"tasks.n_tasks: {cfg.dataset} has at most {max_tasks} tasks, given {n}")
    return n


def task_plan(cfg: SupervisedTasks, seed: int) -> list[tuple[str, list[int]]]:
    """(name, original class ids) of every task :func:`build_benchmark` makes, without reading
    any data: a CIFAR task's name (``c100-3``) does not say which classes it holds, so a
    reference run is checked against this before the run starts (``reference_from_run(classes=...)``).
    The CIFAR-10 task of ``cifar10_100`` holds CIFAR-10's classes 0-9, the others CIFAR-100's."""
    n_tasks = _n_tasks(cfg)
    order_rng = np.random.default_rng(derive_seed(seed, "class_order")) if cfg.shuffle_classes else None
    per_task, _ = BENCHMARK_TASKS[cfg.dataset]
    if cfg.dataset == "split_digits":
        return [(f"digits{''.join(map(str, cl))}", cl) for cl in split_classes(10, per_task, n_tasks, order_rng, uses_class_blocks(cfg))]
    plan: list[tuple[str, list[int]]] = []
    if cfg.dataset == "cifar10_100":
        plan.append(("cifar10", list(range(10))))
    prefix = "c100-" if cfg.dataset != "single_pass_cifar100" else "sp100-"
    blocks = split_classes(100, per_task, n_tasks - len(plan), order_rng, uses_class_blocks(cfg))
    return plan + [(f"{prefix}{i}", classes) for i, classes in enumerate(blocks)]


def build_benchmark(cfg: SupervisedTasks, seed: int) -> Benchmark:
    """The task sequence of ``cfg.dataset`` for ``seed`` (same seed, same tasks and splits)."""
    plan = task_plan(cfg, seed)
    split_rng = np.random.default_rng(derive_seed(seed, "validation_split"))
    if cfg.dataset == "split_digits":
        return _split_digits(cfg, seed, plan, split_rng)
    from clrl.supervised.cifar import load_cifar10, load_cifar100

    c100 = load_cifar100(cfg.root)
    norm100 = Normalizer.fit(c100.x_train, scale=1 / 255)
    tasks: list[TaskData] = []
    if cfg.dataset == "cifar10_100":
        c10 = load_cifar10(cfg.root)
        norm10 = Normalizer.fit(c10.x_train, scale=1 / 255)
        (name, classes), plan = plan[0], plan[1:]
        tasks.append(
            _make_task(name, classes, c10.class_names, c10.x_train, c10.y_train, c10.x_test, c10.y_test, norm10, cfg.validation, split_rng)
        )
    for name, classes in plan:
        tasks.append(
            _make_task(name, classes, c100.class_names, c100.x_train, c100.y_train, c100.x_test, c100.y_test, norm100, cfg.validation, split_rng)
        )
    return Benchmark(cfg.dataset, tasks, (3, 32, 32))


def _split_digits(
    cfg: SupervisedTasks, seed: int, plan: list[tuple[str, list[int]]], split_rng: np.random.Generator
) -> Benchmark:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=cfg.test_fraction, stratify=y, random_state=derive_seed(seed, "digits_test_split")
    )
    norm = Normalizer.fit(x_tr)
    names = [str(d) for d in range(10)]
    tasks = [_make_task(name, cl, names, x_tr, y_tr, x_te, y_te, norm, cfg.validation, split_rng) for name, cl in plan]
    return Benchmark("split_digits", tasks, (x.shape[1],))
