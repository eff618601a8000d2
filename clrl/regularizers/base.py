"""Contract 1 of DESIGN.md: a continual-learning regularizer is a pair of optimizer hooks.

``begin_task(t, optimizer)`` attaches ``optimizer.register_step_pre_hook`` /
``register_step_post_hook`` (only those the method needs), ``end_task(t, batches, forward)``
consolidates and detaches them. The training loop never knows which method is attached.

Shared by every method (including ``none``): node diagnostics over the trunk's node view
(:mod:`clrl.layers.nodes`), so that fine-tuning, EWC, MAS and AGS-CL report comparable numbers:

* ``sparsity``: share of nodes with zero accumulated mean |post-activation| over the
  consolidation batches of all finished tasks (for AGS-CL exactly ``|G0| / |G|``);
* ``used_capacity``: the paper's literal figure (AGS-CL sec. 5.1, "Analysis 2": the share of
  nodes ``n`` with ``||theta_n^(t) - theta_n^(t-1)|| = 0``), i.e. of nodes whose incoming group
  (weights + bias) did not move during the task. It also counts nodes that are simply zero and
  stay zero (a sparse, never-active node is "unmoved"), so it can sit beside a sparsity of 1.0;
* ``important_unmoved``: the share of nodes that were important when the task began (not counted
  in ``sparsity``; for AGS-CL Omega > 0) *and* did not move: the nodes actually frozen to protect
  past tasks (0 on the first task).

Both capacity figures are live during a task and frozen for the finished task after ``end_task``.

Consolidation runs ``forward`` in eval mode (dropout off, BatchNorm statistics frozen) under the
caller's device placement; the previous train/eval flags are restored afterwards.
"""

from __future__ import annotations

import difflib
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from clrl.errors import TrainingDiverged
from clrl.layers.nodes import NodeActivity, NodeLayer, get_incoming, node_view

__all__ = ["Regularizer", "split_batch", "check_hparams", "diagnostic_scalars"]

Forward = Callable[[Any], Tensor]


def diagnostic_scalars(diag: dict[str, Any]) -> dict[str, float]:
    """TensorBoard tags for a :meth:`Regularizer.diagnostics` dict, the same in both front ends:
    every number under ``overall``, ``memory_bytes`` and ``omega`` (``regularizer/overall/sparsity``,
    ...), ``n_prox``, and each layer's sparsity, used capacity and important-unmoved share
    (``regularizer/<layer>/...``)."""

    def numbers(prefix: str, value: Any) -> dict[str, float]:
        if isinstance(value, bool) or value is None:
            return {}
        if isinstance(value, (int, float)):
            return {prefix: float(value)}
        if isinstance(value, dict):
            out: dict[str, float] = {}
            for k, v in value.items():
                out.update(numbers(f"{prefix}/{k}", v))
            return out
        return {}  # lists (per-layer tables) are handled below

    tags: dict[str, float] = {}
    for key in ("overall", "memory_bytes", "omega", "n_prox"):
        tags.update(numbers(f"regularizer/{key}", diag.get(key)))
    for layer in diag.get("layers") or []:
        for key in ("sparsity", "used_capacity", "important_unmoved"):
            tags.update(numbers(f"regularizer/{layer.get('name')}/{key}", layer.get(key)))
    return tags


def split_batch(batch: Any) -> tuple[Any, Tensor | None]:
    """``(x, y)`` pairs (tuple/list of two) give ``(x, y)``; anything else is an input batch."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    return batch, None


def _batch_size(x: Any) -> int:
    if isinstance(x, Tensor):
        return int(x.shape[0])
    if isinstance(x, dict):
        return _batch_size(next(iter(x.values())))
    if isinstance(x, (tuple, list)):
        return _batch_size(x[0])
    raise TypeError(f"cannot tell the batch size of {type(x).__name__}")


def check_hparams(name: str, defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """Defaults overridden by ``given``; unknown names raise a ValueError listing the allowed ones."""
    unknown = [k for k in given if k not in defaults]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(defaults), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        allowed = ", ".join(defaults) or "none"
        raise ValueError(f"unknown hyperparameter '{key}' for regularizer '{name}'{hint} (allowed: {allowed})")
    return {**defaults, **given}


def _number(name: str, key: str, value: Any, low: float | None = None, high: float | None = None,
            low_open: bool = False, integer: bool = False) -> None:
    """Range/type check with a message naming the hyperparameter."""
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (not integer and not math.isfinite(value)):
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{name}: hyperparameter '{key}' must be {kind}, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name}: hyperparameter '{key}' must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name}: hyperparameter '{key}' must be <= {high}, got {value!r}")


def _choice(name: str, key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: hyperparameter '{key}' must be one of {list(choices)}, got {value!r}")


def _seed(name: str, value: Any) -> None:
    if value is not None:
        _number(name, "seed", value, low=0, integer=True)


def _opt_params(optimizer: torch.optim.Optimizer) -> dict[int, dict]:
    """id(param) -> its param group (for the learning rate and membership)."""
    return {id(p): g for g in optimizer.param_groups for p in g["params"]}


class Regularizer:
    """Base class: task bookkeeping, hook handles, node diagnostics, state I/O.

    Subclasses set ``name`` and ``HPARAMS`` and override the ``_`` hooks. ``heads`` is an
    optional :class:`~clrl.nets.MultiHead`. A generator seeded with ``seed`` is used where a
    method draws random numbers; ``seed=None`` uses torch's global RNG at draw time.
    """

    name: ClassVar[str] = "base"
    HPARAMS: ClassVar[dict[str, Any]] = {}
    uses_pre_hook: ClassVar[bool] = False
    uses_post_hook: ClassVar[bool] = False
    needs_nodes: ClassVar[bool] = False

    def __init__(self, trunk: nn.Module, heads: nn.Module | None = None, **hparams: Any) -> None:
        self.hparams = check_hparams(self.name, self.HPARAMS, hparams)
        self.validate(self.hparams)
        self.trunk = trunk
        self.heads = heads
        try:
            self.nodes: list[NodeLayer] | None = node_view(trunk)
        except ValueError:
            if self.needs_nodes:
                raise
            self.nodes = None  # EWC/MAS work on any trunk; node diagnostics are then skipped
        seed = self.hparams.get("seed")
        self.generator: torch.Generator | None = None
        if seed is not None:
            self.generator = torch.Generator().manual_seed(int(seed))
        self.task: int | None = None
        self.in_task = False
        self.steps = 0  # optimizer steps in the current task
        self.tasks_done: list[int] = []
        self._optimizer: torch.optim.Optimizer | None = None
        self._handles: list = []
        self._start: list[Tensor] | None = None  # incoming groups at begin_task (used capacity)
        self._activity: list[Tensor] | None = None  # sum over finished tasks of mean |activation|
        self._last_activity: list[Tensor] | None = None  # the last finished task's mean |activation|
        self._task_capacity: list[float] | None = None  # used capacity of the last finished task
        self._task_unmoved: list[float] | None = None  # important-and-unmoved share of that task

    # ------------------------------------------------------------------ validation

    @classmethod
    def validate(cls, hp: dict[str, Any]) -> None:
        """Raise ValueError naming a bad hyperparameter value (subclasses extend)."""

    # ------------------------------------------------------------------ task protocol

    def begin_task(self, t: int, optimizer: torch.optim.Optimizer) -> None:
        """Start task ``t`` and attach this method's hooks to ``optimizer``.

        Calling it again for the running task (after :meth:`load_state_dict`, or with a new
        optimizer) only re-attaches the hooks; counters and snapshots are kept."""
        t = int(t)
        if self.in_task:
            if t != self.task:
                raise ValueError(f"{self.name}: task {self.task} is still running; call end_task({self.task}) first")
            self.attach(optimizer)
            return
        self.task, self.in_task, self.steps = t, True, 0
        self._start = self._snapshot_groups()
        self._begin(t)
        self.attach(optimizer)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """(Re-)attach the hooks to ``optimizer``, detaching them from any previous one."""
        self.detach()
        self._optimizer = optimizer
        if self.uses_pre_hook:
            self._handles.append(optimizer.register_step_pre_hook(lambda opt, args, kwargs: self._pre_step(opt)))
        if self.uses_post_hook:
            self._handles.append(optimizer.register_step_post_hook(lambda opt, args, kwargs: self._post_step(opt)))

    def detach(self) -> None:
        """Remove the hooks (the optimizer then steps plainly)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._optimizer = None

    def end_task(self, t: int, batches: Iterable[Any], forward: Forward) -> None:
        """Consolidate task ``t`` from ``batches`` (inputs, or ``(x, y)`` pairs) and ``forward``
        (batch -> the task's output logits), then detach the hooks. ``batches`` is read once."""
        t = int(t)
        if self.in_task and t != self.task:
            raise ValueError(f"{self.name}: end_task({t}) but the running task is {self.task}")
        self._task_capacity = self._used_capacity_layers()
        self._task_unmoved = self._used_capacity_layers(important_only=True)
        self.detach()
        flags = [(m, m.training) for m in self._modules()]
        for m, _ in flags:
            m.eval()
        try:
            self._consume_all(batches, forward)
            self._consolidate(t, forward)
        finally:
            for m, was in flags:
                m.train(was)
        self.tasks_done.append(t)
        self.task, self.in_task = t, False
        self._start = None

    def _modules(self) -> list[nn.Module]:
        return [self.trunk] + ([self.heads] if self.heads is not None else [])

    def _consume_all(self, batches: Iterable[Any], forward: Forward) -> None:
        recorder = NodeActivity(self.nodes) if self.nodes is not None else None
        for batch in batches:
            x, y = split_batch(batch)
            if recorder is not None:
                with recorder, torch.no_grad():
                    out = forward(x)
            else:
                with torch.no_grad():
                    out = forward(x)
            if not bool(torch.isfinite(out).all()):
                raise TrainingDiverged(f"{self.name}: forward gave non-finite outputs while consolidating")
            self._consume(x, y, out.detach(), forward)
        if recorder is not None:
            if recorder.count == 0:
                warnings.warn(f"{self.name}: end_task got no batches; node activity is zero", stacklevel=3)
            new = recorder.mean()
            self._last_activity = new
            self._activity = new if self._activity is None else [a + n for a, n in zip(self._activity, new, strict=True)]

    # ------------------------------------------------------------------ subclass hooks

    def _begin(self, t: int) -> None:
        """Called by :meth:`begin_task` after the used-capacity snapshot."""

    def _consume(self, x: Any, y: Tensor | None, out: Tensor, forward: Forward) -> None:
        """One consolidation batch: ``out = forward(x)`` already ran (eval mode, no grad)."""

    def _consolidate(self, t: int, forward: Forward) -> None:
        """After all batches: update importance, anchors, masks."""

    def _pre_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Runs before ``optimizer.step()`` (gradients are final, clipping already done)."""

    def _post_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Runs after ``optimizer.step()``."""

    def _method_state(self) -> dict[str, Any]:
        return {}

    def _load_method_state(self, state: dict[str, Any]) -> None:
        pass

    def _memory(self) -> tuple[int, int]:
        """(importance bytes, anchor bytes)."""
        return 0, 0

    def _method_diagnostics(self) -> dict[str, Any]:
        return {}

    def _unimportant(self) -> list[Tensor] | None:
        """Per layer, bool mask of nodes counted in ``sparsity``."""
        if self.nodes is None:
            return None
        if self._activity is None:
            return [torch.ones(lay.n_nodes, dtype=torch.bool) for lay in self.nodes]
        return [a == 0 for a in self._activity]

    # ------------------------------------------------------------------ diagnostics

    def _snapshot_groups(self) -> list[Tensor] | None:
        if self.nodes is None:
            return None
        return [get_incoming(lay) for lay in self.nodes]

    def _used_capacity_layers(self, important_only: bool = False) -> list[float] | None:
        """Per layer, the share of nodes whose incoming group equals the task-start snapshot (the
        paper's used capacity); with ``important_only``, of nodes that are also important (not in
        :meth:`_unimportant`, which still reflects the state at the start of the task)."""
        if self.nodes is None or self._start is None:
            return None
        unimportant = self._unimportant() if important_only else None
        out = []
        for i, (layer, start) in enumerate(zip(self.nodes, self._start, strict=True)):
            current = get_incoming(layer)
            same = (current == start.to(current.device)).all(dim=1)
            if unimportant is not None:
                same = same & ~unimportant[i].to(same.device)
            out.append(float(same.float().mean()))
        return out

    def diagnostics(self) -> dict[str, Any]:
        """Per layer and overall: sparsity, used capacity, Omega/importance statistics.

        Plain floats, ints, strings and lists only (JSON-serializable)."""
        out: dict[str, Any] = {
            "method": self.name,
            "task": self.task,
            "in_task": self.in_task,
            "steps": self.steps if (self.uses_pre_hook or self.uses_post_hook) else None,
            "tasks_done": list(self.tasks_done),
        }
        layers: list[dict[str, Any]] = []
        if self.nodes is not None:
            capacity = self._used_capacity_layers() if self.in_task else self._task_capacity
            unmoved = self._used_capacity_layers(important_only=True) if self.in_task else self._task_unmoved
            unimportant = self._unimportant()
            for i, layer in enumerate(self.nodes):
                groups = get_incoming(layer)
                entry: dict[str, Any] = {
                    "name": layer.name,
                    "kind": layer.kind,
                    "n_nodes": layer.n_nodes,
                    "sparsity": float(unimportant[i].float().mean()) if unimportant is not None else None,
                    "used_capacity": capacity[i] if capacity is not None else None,
                    "important_unmoved": unmoved[i] if unmoved is not None else None,
                    "zero_groups": float((groups == 0).all(dim=1).float().mean()),
                }
                if self._activity is not None:
                    entry["activity_mean"] = float(self._activity[i].mean())
                layers.append(entry)
            total = sum(lay.n_nodes for lay in self.nodes)

            def weighted(key: str) -> float | None:
                if any(e[key] is None for e in layers):
                    return None
                return float(sum(e[key] * e["n_nodes"] for e in layers) / total)

            out["overall"] = {
                "n_nodes": total,
                "sparsity": weighted("sparsity"),
                "used_capacity": weighted("used_capacity"),
                "important_unmoved": weighted("important_unmoved"),
                "zero_groups": weighted("zero_groups"),
            }
        else:
            out["overall"] = {"n_nodes": None, "sparsity": None, "used_capacity": None, "important_unmoved": None,
                              "zero_groups": None}
        out["layers"] = layers
        out.update(self._method_diagnostics())
        imp, anchor = self._memory()
        out["memory_bytes"] = {"importance": int(imp), "anchor": int(anchor)}
        return out

    def memory_bytes(self) -> dict[str, int]:
        """Bytes of the state the method keeps: ``{"importance": ..., "anchor": ...}``.

        Diagnostics-only copies (the used-capacity snapshot) are not counted."""
        imp, anchor = self._memory()
        return {"importance": int(imp), "anchor": int(anchor)}

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed for an exact resume; tensors and plain Python only."""
        return {
            "name": self.name,
            "hparams": dict(self.hparams),
            "task": self.task,
            "in_task": self.in_task,
            "steps": self.steps,
            "tasks_done": list(self.tasks_done),
            "start": [s.clone() for s in self._start] if self._start is not None else None,
            "activity": [a.clone() for a in self._activity] if self._activity is not None else None,
            "last_activity": [a.clone() for a in self._last_activity] if self._last_activity is not None else None,
            "task_capacity": list(self._task_capacity) if self._task_capacity is not None else None,
            "task_unmoved": list(self._task_unmoved) if self._task_unmoved is not None else None,
            "generator": self.generator.get_state() if self.generator is not None else None,
            "method": self._method_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`. Hooks are not attached: call ``begin_task(t, optimizer)``
        for the running task (or :meth:`attach`) afterwards."""
        if state.get("name") != self.name:
            raise ValueError(f"state is for regularizer '{state.get('name')}', not '{self.name}'")
        if state["hparams"] != self.hparams:
            diff = {k: (self.hparams.get(k), v) for k, v in state["hparams"].items() if self.hparams.get(k) != v}
            raise ValueError(f"{self.name}: hyperparameters differ from the saved state (now, saved): {diff}")
        self.detach()
        self.task = state["task"]
        self.in_task = bool(state["in_task"])
        self.steps = int(state["steps"])
        self.tasks_done = [int(t) for t in state["tasks_done"]]
        self._start = [s.clone() for s in state["start"]] if state["start"] is not None else None
        self._activity = [a.clone() for a in state["activity"]] if state["activity"] is not None else None
        last = state.get("last_activity")
        self._last_activity = [a.clone() for a in last] if last is not None else None
        self._task_capacity = list(state["task_capacity"]) if state["task_capacity"] is not None else None
        unmoved = state.get("task_unmoved")  # absent in checkpoints written before issue 16
        self._task_unmoved = list(unmoved) if unmoved is not None else None
        if state["generator"] is not None:
            if self.generator is None:
                self.generator = torch.Generator()
            self.generator.set_state(state["generator"])
        self._load_method_state(state["method"])

    # ------------------------------------------------------------------ helpers

    def _named_trainables(self, include_heads: bool) -> dict[str, nn.Parameter]:
        """``trunk.<name>`` (and ``heads.<name>``) -> parameter."""
        named = {f"trunk.{n}": p for n, p in self.trunk.named_parameters()}
        if include_heads and self.heads is not None:
            named.update({f"heads.{n}": p for n, p in self.heads.named_parameters()})
        return named
