"""The representation analysis of a run, as a subscriber to its training events.

:class:`RepresentationMonitor` listens to ``task_end`` (keep the task's probe set and what the
network made of it) and ``evaluation`` (measure every seen task on its probe set and write the
``analysis`` block of the curve point; overlap at task ends). The RL runner and the supervised
trainer use it the same way; only three small functions differ (how a probe batch becomes an
input, how features are computed, which states stand in for the task being trained).

Per seen task j, on its probe set, for every trunk layer (the activation after each Conv/Linear;
conv units are channels, competing per position) and for the features the heads read:

* ``hoyer``: mean Hoyer sparsity of the layer's output (forward-forward sparsity paper, eq. 4);
* ``dead``: share of units never active (for LWTA/maxout: never winning);
* ``dormant``: share of tau-dormant units (ReDo), on the activity of active units;
* ``drift``: submask flip rate against the submasks at task j's end (None while j is trained);
  ``drift_protected``: the same over the nodes the regularizer protects for task j (AGS-CL:
  nodes important since task j's consolidation), when it has such nodes;
* features only: ``effective_rank`` (srank, delta 0.01) and ``feature_change``
  (``||F - F_end|| / ||F_end||``).

At each task end, ``overlap``: Jaccard of the sets of (non-dormant) units the seen tasks use.
The schema is documented in :mod:`clrl.results`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from clrl.device import torch_threads
from clrl.events import EventBus

from .batched import measure_tasks
from .probes import Probe, as_uint8, even_subsample, load_probe, save_probe
from .representation import jaccard_matrix
from .submasks import submask

__all__ = ["RepresentationMonitor", "analysed_layers", "protected_nodes", "rollout_states"]


def analysed_layers(trunk: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, activation)`` for every Conv2d/Linear of a sequential trunk that is followed by an
    activation with ``active_mask``: ``conv1, conv2, ..., fc1, ...`` in order (the node view's
    layer order, :func:`clrl.layers.nodes.node_view`)."""
    mods = list(trunk.children())
    out: list[tuple[str, nn.Module]] = []
    n_conv = n_fc = 0
    for i, m in enumerate(mods):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if isinstance(m, nn.Conv2d):
                n_conv += 1
                name = f"conv{n_conv}"
            else:
                n_fc += 1
                name = f"fc{n_fc}"
            if i + 1 < len(mods) and hasattr(mods[i + 1], "active_mask"):
                out.append((name, mods[i + 1]))
    if not out:
        raise ValueError("the trunk has no Conv/Linear layer followed by a clrl activation to analyse")
    return out


def protected_nodes(regularizer: Any, task: int, n_layers: int) -> list[Tensor] | None:
    """Per layer, the nodes the regularizer holds fixed for ``task``: AGS-CL's nodes important
    since ``task``'s consolidation (their incoming weights are pulled to the anchor and the
    weights into them from later nodes are held at 0, so with a large lambda their outputs on
    the task's inputs cannot change). None for regularizers without such nodes."""
    born, head_born = getattr(regularizer, "born", None), getattr(regularizer, "head_born", None)
    if born is None or head_born is None or task not in head_born or len(born) != n_layers:
        return None
    c = int(head_born[task])
    return [b <= c for b in born]


def rollout_states(model: Any, n: int) -> np.ndarray | None:
    """Up to ``n`` states of an SB3 model's last rollout, spread over it, as uint8: what the
    policy being trained visits, taken without stepping any environment."""
    buf = getattr(model, "rollout_buffer", None)
    obs = getattr(buf, "observations", None)
    if obs is None or not getattr(buf, "full", False):
        return None
    shape = tuple(getattr(buf, "obs_shape", np.asarray(obs).shape[2:]))
    flat = np.asarray(obs).reshape(-1, *shape)  # (steps, envs, ...) or, after training, (steps * envs, ...)
    return as_uint8(even_subsample(flat, n))



class RepresentationMonitor:
    """Probe sets and representation measures of one run (module docstring).

    ``prepare(task, uint8 array) -> input tensor`` and ``features(input) -> head features`` run
    the network (the trunk's forward hooks see every layer); ``current(task) -> uint8 array or
    None`` gives inputs of the task being trained (its probe set only exists from its end on).
    ``timings()`` returns the dict where ``analysis_seconds`` is accumulated, ``writer()`` a
    TensorBoard writer or None, ``task_names`` label the scalars. ``every`` > 1 measures only
    every k-th evaluation (and every task end): for runs whose evaluations are far cheaper than
    the analysis (Split Digits evaluates every sub-second epoch).
    """

    def __init__(
        self,
        trunk: nn.Module,
        prepare: Callable[[int, np.ndarray], Tensor],
        features: Callable[[Tensor], Tensor],
        folder: str | Path,
        *,
        tau: float = 0.025,
        delta: float = 0.01,
        probe_size: int = 256,
        batch_size: int = 256,
        regularizer: Any = None,
        current: Callable[[int], np.ndarray | None] | None = None,
        timings: Callable[[], dict[str, Any]] | None = None,
        writer: Callable[[], Any] | None = None,
        task_names: list[str] | None = None,
        tasks_done: Callable[[], int] | None = None,
        every: int = 1,
        eval_index: Callable[[], int] | None = None,
    ) -> None:
        if tau < 0:
            raise ValueError(f"analysis tau must be >= 0, got {tau}")
        if probe_size < 2:
            raise ValueError(f"a probe set needs at least 2 inputs, got {probe_size}")
        self.trunk = trunk
        self.layers = analysed_layers(trunk)
        self.prepare = prepare
        self.features_fn = features
        self.folder = Path(folder)
        self.tau, self.delta = float(tau), float(delta)
        self.probe_size, self.batch_size = int(probe_size), int(batch_size)
        self.regularizer = regularizer
        self.current = current
        self.timings = timings
        self.writer = writer
        self.task_names = task_names
        self.tasks_done = tasks_done
        self.every = int(every)
        if self.every < 1:
            raise ValueError(f"analysis every must be >= 1, got {every}")
        self._n_evals = 0  # evaluations seen by this object (the count when no eval_index is given)
        self.eval_index = eval_index
        self.max_elements = 2**25  # activation values held at once (128 MB as float32)
        self._sample_elements: int | None = None
        self.probes: dict[int, Probe] = {}
        self._restored = tasks_done is None
        self.seconds = 0.0

    # ------------------------------------------------------------------ wiring

    def attach(self, bus: EventBus) -> RepresentationMonitor:
        bus.subscribe("task_end", self.on_task_end)
        bus.subscribe("evaluation", self.on_evaluation)
        return self

    def restore(self, n_done: int) -> None:
        """Load the saved probes of the first ``n_done`` (finished) tasks."""
        self.probes = {}
        for j in range(int(n_done)):
            p = load_probe(self.folder, j)
            if p is not None:
                self.probes[j] = p
        self._restored = True

    def _ensure_restored(self) -> None:
        if not self._restored and self.tasks_done is not None:
            self.restore(self.tasks_done())

    # ------------------------------------------------------------------ forward

    @torch.no_grad()
    def forward(self, items: list[tuple[int, np.ndarray]]) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """(pre-activations, outputs) of every analysed layer and the head features, on CPU, for
        several tasks' inputs stacked in order: each is prepared for its task, then one pass of
        the network runs over all of them (in batches of ``batch_size``)."""
        pres: list[list[Tensor]] = [[] for _ in self.layers]
        outs: list[list[Tensor]] = [[] for _ in self.layers]

        def hook(i: int):
            def fn(module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
                pres[i].append(args[0].detach().float().cpu())
                outs[i].append(out.detach().float().cpu())

            return fn

        x = torch.cat([self.prepare(j, inputs) for j, inputs in items])
        handles = [act.register_forward_hook(hook(i)) for i, (_, act) in enumerate(self.layers)]
        was = self.trunk.training
        self.trunk.eval()
        feats = []
        try:
            for lo in range(0, len(x), self.batch_size):
                feats.append(self.features_fn(x[lo : lo + self.batch_size]).detach().float().cpu().flatten(1))
        finally:
            self.trunk.train(was)
            for h in handles:
                h.remove()
        return [torch.cat(p) for p in pres], [torch.cat(o) for o in outs], torch.cat(feats)

    def _masks(self, pres: list[Tensor]) -> list[Tensor]:
        return [submask(act, pre) for (_, act), pre in zip(self.layers, pres, strict=True)]

    # ------------------------------------------------------------------ events

    def on_task_end(self, task: int, inputs: Any, **_: Any) -> None:
        """Keep task ``task``'s probe set and its reference state (the network at its end)."""
        self._ensure_restored()
        tick = time.perf_counter()
        x = even_subsample(as_uint8(inputs), self.probe_size)
        with torch_threads(1):  # small ops: a second thread only waits (measured 20x slower with 2)
            pres, _, feats = self.forward([(task, x)])
        probe = Probe(task=int(task), inputs=x, masks=self._masks(pres), features=feats)
        save_probe(self.folder, probe)
        self.probes[int(task)] = probe
        self._spent(time.perf_counter() - tick)

    def on_evaluation(self, point: Any, task: int, step: int, end_of_task: bool = False, **_: Any) -> None:
        """Measure every seen task and store the block as ``point.analysis`` (at every
        ``every``-th evaluation of the run and at every task end).

        The evaluation's place in the run comes from ``eval_index`` (the runners count their curve
        points, which a resume restores), so a resumed run measures the same points as one that
        was never stopped; without it, evaluations are counted from this object's creation."""
        self._n_evals += 1
        index = self.eval_index() if self.eval_index is not None else self._n_evals - 1
        if not end_of_task and index % self.every:
            return
        self._ensure_restored()
        tick = time.perf_counter()
        with torch_threads(1):  # small ops: a second thread only waits (measured 20x slower with 2)
            block = self.measure(int(task), end_of_task)
        block["seconds"] = round(time.perf_counter() - tick, 4)
        point.analysis = block
        self._spent(time.perf_counter() - tick)
        self._log(block, step)

    def _spent(self, seconds: float) -> None:
        self.seconds += seconds
        if self.timings is not None:
            t = self.timings()
            t["analysis_seconds"] = float(t.get("analysis_seconds", 0.0)) + float(seconds)

    # ------------------------------------------------------------------ measures

    def measure(self, task: int, end_of_task: bool = False) -> dict[str, Any]:
        """The analysis block for an evaluation while training ``task`` (see clrl.results)."""
        items: list[tuple[int, np.ndarray, Probe | None]] = []
        for j in range(task + 1):
            probe = self.probes.get(j)
            if probe is not None:
                items.append((j, probe.inputs, probe))
            elif self.current is not None and j == task:
                current = self.current(j)
                if current is not None:
                    items.append((j, even_subsample(as_uint8(current), self.probe_size), None))
        block: dict[str, Any] = {"tau": self.tau, "delta": self.delta, "tasks": [], "overlap": None}
        if not items:
            return block
        entries, used = [], []
        for chunk in self._chunks(items):
            pres, outs, feats = self.forward([(j, x) for j, x, _ in chunk])
            refs = [p for _, _, p in chunk]
            protected = [protected_nodes(self.regularizer, j, len(self.layers)) if p is not None else None
                         for j, _, p in chunk]
            e, u = measure_tasks(self.layers, pres, outs, feats, [len(x) for _, x, _ in chunk], refs,
                                 protected, self.tau, self.delta)
            del pres, outs, feats
            entries += e
            used += u
        block["tasks"] = [{"task": j, **e} for (j, _, _), e in zip(items, entries, strict=True)]
        if end_of_task:
            with_ref = [(j, u) for (j, _, _), u in zip(items, used, strict=True) if u is not None]
            if with_ref:
                block["overlap"] = self._overlap(with_ref)
        return block

    def _chunks(self, items: list) -> list[list]:
        """Consecutive groups of tasks whose activations together stay under ``max_elements``
        (a task per group at the paper's Atari width, all tasks at once for small nets)."""
        if self._sample_elements is None:
            pres, outs, feats = self.forward([(items[0][0], items[0][1][:1])])
            self._sample_elements = sum(p.numel() + o.numel() for p, o in zip(pres, outs, strict=True)) + feats.numel()
        groups: list[list] = []
        size = 0
        for item in items:
            rows = len(item[1]) * self._sample_elements
            if groups and size + rows <= self.max_elements:
                groups[-1].append(item)
                size += rows
            else:
                groups.append([item])
                size = rows
        return groups

    def _overlap(self, used: list[tuple[int, list[Tensor]]]) -> dict[str, Any]:
        tasks = [j for j, _ in used]
        out: dict[str, Any] = {"tasks": tasks, "layers": {}}
        for i, (name, _) in enumerate(self.layers):
            out["layers"][name] = jaccard_matrix(torch.stack([u[i] for _, u in used]))
        out["all"] = jaccard_matrix(torch.stack([torch.cat(u) for _, u in used]))
        return out

    # ------------------------------------------------------------------ TensorBoard

    def _log(self, block: dict[str, Any], step: int) -> None:
        w = self.writer() if self.writer is not None else None
        if w is None:
            return
        for entry in block["tasks"]:
            j = entry["task"]
            name = self.task_names[j] if self.task_names and j < len(self.task_names) else str(j)
            for layer, values in [*entry["layers"].items(), ("features", entry["features"])]:
                for key, value in values.items():
                    if isinstance(value, (int, float)) and math.isfinite(value):
                        w.add_scalar(f"analysis/{name}/{layer}/{key}", value, step)
        w.add_scalar("analysis/seconds", block["seconds"], step)


ANALYSIS_COLUMNS = ("task", "drift", "protected", "feat. change", "dormant", "srank", "hoyer")


def summary_rows(results: Any) -> list[list[str]]:
    """One row per task (:data:`ANALYSIS_COLUMNS`) from the last curve point with an analysis
    block, for the ``clrl run`` summary: drift and dormant share are means over layers,
    "protected" the drift over AGS-CL's protected nodes, srank and hoyer of the head features."""
    point = next((p for p in reversed(results.curves) if getattr(p, "analysis", None)), None)
    if point is None:
        return []

    def fmt(v: Any, digits: int = 3) -> str:
        return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"

    def mean(layers: Any, key: str) -> float | None:
        vals = [x[key] for x in layers if x.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    rows = []
    for e in point.analysis["tasks"]:
        f = e["features"]
        layers = list(e["layers"].values())
        rows.append([f"{e['task']}: {results.tasks[e['task']]}", fmt(mean(layers, "drift")), fmt(mean(layers, "drift_protected")),
                     fmt(f.get("feature_change")), fmt(mean(layers, "dormant")), str(f["effective_rank"]), fmt(f.get("hoyer"))])
    return rows


def summary_lines(results: Any) -> list[str]:
    """:func:`summary_rows` as plain text lines, ``column value`` pairs."""
    return ["  ".join([r[0]] + [f"{c} {v}" for c, v in zip(ANALYSIS_COLUMNS[1:], r[1:], strict=True)])
            for r in summary_rows(results)]
