"""AGS-CL (Jung et al. 2020): node-importance based adaptive group sparse regularization.

Loss (eq. 2): ``L_TS + mu * sum_{n in G0} ||theta_n||_2 + lamb * sum_{n not in G0} Omega_n
||theta_n - theta_hat_n||_2``, with ``theta_n`` a node's incoming group (weights + bias, see
:mod:`clrl.layers.nodes`) and ``G0 = {n : Omega_n == 0}`` (eq. 1). There is no sqrt(group size)
factor in eq. 2 or the prox rule (7), and none here: mu and lambda mean what the paper's do.

As optimizer hooks (Contract 1, DESIGN.md):

* after every optimizer step (post hook), every ``prox_every``-th step of the task runs the
  proximal step (eq. 5 with rule 7, Lemma 1) with ``alpha`` = the learning rate of the layer's
  weight's param group read at that moment: threshold ``alpha * mu`` around 0 for ``G0`` nodes,
  ``alpha * lamb * Omega_n`` around the anchor for the others. The paper runs it once per epoch
  (supervised) and the code once per PPO epoch; the optimizer step plays the role of (4).
* after every step the I.1 mask is re-applied to the **live** weights (the AGS-CL RL code applied
  it to a frozen copy, so pruned connections regrew: bug (1) in the README's "Departures from the authors' code"), *before* the
  proximal step: the prox then measures a node's drift on its free entries only (the masked ones
  equal their anchor, 0), so a node whose real drift is within ``alpha * lamb * Omega`` lands
  exactly on its anchor.
* every tensor the hooks read per step (Omega, the G0 masks, the anchor, the I.1 masks and head
  column indices) lives on the parameters' device (moved once in ``attach``), so a step makes
  no host/device copies and no synchronizations.
* ``end_task``: Omega <- eta * Omega + mean |post-activation| per node over ``batches`` (eq. 8;
  conv nodes average over samples and positions), new ``G0``, then I.1, then I.2, then the anchor
  is snapshotted (after the re-initialization, Algorithm 1).

I.1 (zero-init): the outgoing weights of every ``G0`` node are set to 0, and those into nodes that
are important are *held* at 0 for all later tasks (the paper: "for all future tasks after t").
Since ``G0`` only shrinks and an important node stays important (``eta > 0``), this is the rule
"node j never reads node i if j became important at an earlier task than i", stored as one
integer per node (its *birth*, the consolidation at which Omega first became > 0; stored at the
narrowest integer dtype that holds the number of consolidations, uint8 up to 254 tasks,
so the importance state is about 5 bytes per node, Omega's 4 plus 1). The finished
task's head counts as born at that task: its columns of ``G0`` units are zeroed and held at zero
(bug (2) in the README's "Departures from the authors' code": the code left them in place while later tasks re-initialized those
nodes). Outgoing weights into still-unimportant nodes are free again (I.2 re-draws them).

I.2 (rand-init): each ``G0`` node's incoming group is re-drawn from the layer's initializer
(PyTorch default init, :func:`clrl.layers.nodes.fresh_incoming`) with probability ``rho``. Coin
flips and weights come from a ``torch.Generator`` seeded with ``seed`` (state saved in
``state_dict``); ``seed=None`` uses torch's global RNG, so ``torch.manual_seed`` makes it
reproducible.

Heads are not regularized. Past heads must not be given to the next task's optimizer (bug (3):
they would drift through Adam's momentum); the I.1 head mask is re-applied after every step
anyway, but only to the zeroed columns.

Activations (what a node's activation means, see :mod:`clrl.layers.nodes`): ReLU: the paper's.
LWTA: ``|h_i|`` when unit i wins its block, else 0. maxout: ``|block output|`` credited to the
block's winner only, so a never-winning node is unimportant; its block's outgoing column is
zeroed only when all block members are unimportant. sT: the thresholded output (suppressed units
give 0). GNC: ``|normalized output|``, rarely exactly 0, so nodes followed by GNC leave ``G0``
after their first task. Under competition (and GNC's group norm) a re-drawn (I.2) node can change
what a past task's important nodes output; I.1 cannot block that, because it acts inside a layer.

Normalization layers (``bn``, ``gn``, ``ln``, torch's norms) are refused: their affine parameters
and running statistics belong to no node's incoming group and LayerNorm/GroupNorm mix the nodes of
a layer, so freezing every important group would not keep old tasks' outputs (issue 16). EWC and
MAS accept them (they penalize every parameter).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from clrl.layers.competitive import BatchNorm, GroupNorm, LayerNorm
from clrl.layers.nodes import fresh_incoming, get_incoming, set_incoming, zero_outgoing

from .base import Forward, Regularizer, _number, _opt_params, _seed

__all__ = ["AGSCL", "UnsupportedTrunk", "check_no_norms", "prox_group"]

_BIRTH_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.int64)
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, BatchNorm, GroupNorm, LayerNorm)


def _never(dtype: torch.dtype) -> int:
    """Birth of a node that was never important: the largest value of the births' dtype."""
    return int(torch.iinfo(dtype).max)


def _birth_dtype(n_consolidations: int) -> torch.dtype:
    """The narrowest integer dtype holding births 0..n-1 plus the 'never' sentinel."""
    for dtype in _BIRTH_DTYPES:
        if n_consolidations < _never(dtype):
            return dtype
    raise ValueError(f"agscl: {n_consolidations} consolidations do not fit an int64 birth")


def _narrow_births(born: list[Tensor], n_consolidations: int) -> list[Tensor]:
    """Births re-stored at :func:`_birth_dtype` width; any value ``>= n_consolidations`` (the
    sentinel of whatever dtype they had, e.g. int64 ``2**62`` of older checkpoints) means never."""
    dtype = _birth_dtype(n_consolidations)
    out = []
    for b in born:
        never = b >= n_consolidations
        out.append(b.masked_fill(never, 0).to(dtype).masked_fill(never, _never(dtype)))
    return out


class UnsupportedTrunk(ValueError):
    """The trunk holds layers the method cannot regularize: the network's config (its
    activation) is at fault, not the method's hyperparameters."""


def check_no_norms(trunk: nn.Module) -> None:
    """Refuse normalization layers (module docstring): AGS-CL cannot protect what they hold."""
    for name, m in trunk.named_modules():
        if isinstance(m, _NORM_TYPES):
            raise UnsupportedTrunk(
                f"agscl: trunk module '{name}' ({type(m).__name__}) is a normalization layer: its affine parameters "
                "and running statistics belong to no node's incoming group (and LayerNorm/GroupNorm mix a layer's "
                "nodes), so AGS-CL cannot freeze what old tasks rely on; use an activation without bn/gn/ln "
                "(relu, lwta, maxout, st_hard, st_soft, gnc, identity) or a weight-wise method (ewc, mas)"
            )


def prox_group(v: Tensor, threshold: float | Tensor, center: Tensor | None = None, check: bool = True) -> Tensor:
    """Prox of ``threshold * ||theta - center||_2`` per row (Lemma 1, eq. 6).

    ``argmin_theta threshold * ||theta - c|| + ||theta - v||^2 / 2 = c + gamma (v - c)`` with
    ``gamma = max(0, 1 - threshold / ||v - c||)``. Rows of ``v`` (``(n, d)``, or one ``(d,)``
    group) are groups; ``threshold`` is a scalar or one value per row, ``>= 0``. A row whose
    distance to the center is ``<= threshold`` (including distance 0) lands exactly on the center.
    ``check=False`` skips the ``threshold >= 0`` check (a device synchronization) for callers whose
    thresholds are non-negative by construction."""
    if v.dim() == 1:
        return prox_group(v.unsqueeze(0), threshold, None if center is None else center.unsqueeze(0), check)[0]
    if v.dim() != 2:
        raise ValueError(f"prox_group: v must be (n, d) or (d,), got shape {tuple(v.shape)}")
    thr = torch.as_tensor(threshold, dtype=v.dtype, device=v.device)
    if thr.dim() > 1 or (thr.dim() == 1 and thr.shape[0] != v.shape[0]):
        raise ValueError(f"prox_group: threshold must be a scalar or have {v.shape[0]} entries, got {tuple(thr.shape)}")
    if check and bool((thr < 0).any()):
        raise ValueError("prox_group: threshold must be >= 0")
    diff = v if center is None else v - center
    norm = torch.linalg.vector_norm(diff, dim=1)
    # norm > thr >= 0 implies norm > 0 where the ratio is used
    gamma = torch.where(norm > thr, 1 - thr / torch.where(norm > 0, norm, torch.ones_like(norm)), torch.zeros_like(norm))
    out = diff * gamma.unsqueeze(1)
    return out if center is None else center + out


class AGSCL(Regularizer):
    """AGS-CL as optimizer hooks (module docstring). Hyperparameters: ``mu`` (group lasso on
    G0), ``lamb`` (drift penalty), ``rho`` (I.2 probability), ``eta`` (Omega decay),
    ``prox_every`` (optimizer steps between proximal steps), ``seed`` (I.2 RNG)."""

    name: ClassVar[str] = "agscl"
    HPARAMS: ClassVar[dict[str, Any]] = {
        "mu": 0.1,
        "lamb": 100.0,
        "rho": 1.0,
        "eta": 0.9,
        "prox_every": 1,
        "seed": None,
    }
    uses_post_hook: ClassVar[bool] = True
    needs_nodes: ClassVar[bool] = True

    def __init__(self, trunk: nn.Module, heads: nn.Module | None = None, **hparams: Any) -> None:
        super().__init__(trunk, heads, **hparams)
        assert self.nodes is not None
        check_no_norms(trunk)
        devices = [lay.module.weight.device for lay in self.nodes]
        self.omega: list[Tensor] = [torch.zeros(lay.n_nodes, device=d) for lay, d in zip(self.nodes, devices, strict=True)]
        dtype = _birth_dtype(1)
        self.born: list[Tensor] = [
            torch.full((lay.n_nodes,), _never(dtype), dtype=dtype, device=d) for lay, d in zip(self.nodes, devices, strict=True)
        ]
        self.head_born: dict[int, int] = {}
        self.anchor: list[Tensor] | None = None
        self.n_consolidated = 0
        self.n_prox = 0
        self._keep: list[Tensor | None] = []  # cached float masks, (rows_next, post_width, 1)
        self._head_cols: dict[int, Tensor] = {}  # cached zeroed columns per past head
        self._g0: list[Tensor] = []  # cached G0 masks (Omega == 0), on the parameters' devices
        self._rebuild_masks()

    @classmethod
    def validate(cls, hp: dict[str, Any]) -> None:
        _number(cls.name, "mu", hp["mu"], low=0)
        _number(cls.name, "lamb", hp["lamb"], low=0)
        _number(cls.name, "rho", hp["rho"], low=0, high=1)
        _number(cls.name, "eta", hp["eta"], low=0, high=1, low_open=True)
        _number(cls.name, "prox_every", hp["prox_every"], low=1, integer=True)
        _seed(cls.name, hp["seed"])

    # ------------------------------------------------------------------ G0 and masks

    def unimportant(self) -> list[Tensor]:
        """``G0`` per layer: bool masks of nodes with Omega == 0 (eq. 1)."""
        return [o == 0 for o in self.omega]

    _unimportant = unimportant

    def _unit_birth(self, i: int) -> Tensor:
        """Birth of each post unit of layer i: its earliest member (maxout blocks)."""
        layer = self.nodes[i]
        return self.born[i].view(layer.post_width, layer.block).min(dim=1).values

    def _place(self) -> None:
        """Move the per-node state to the device of each layer's weight (a no-op when it is
        there already), then rebuild the cached masks there. Called once per ``attach``."""
        def to(t: Tensor, layer: Any) -> Tensor:
            return t.to(layer.module.weight.device)

        self.omega = [to(o, lay) for o, lay in zip(self.omega, self.nodes, strict=True)]
        self.born = [to(b, lay) for b, lay in zip(self.born, self.nodes, strict=True)]
        if self.anchor is not None:
            moved = [to(a, lay) for a, lay in zip(self.anchor, self.nodes, strict=True)]
            if self._start is self.anchor:
                self._start = moved
            self.anchor = moved
        self._rebuild_masks()

    def _rebuild_masks(self) -> None:
        """Cache the I.1 masks from the births: next-layer node j keeps its weight from unit u
        unless born[j] < born[u]; head of task tau keeps column u unless head_born[tau] < born[u].
        Also caches G0. Everything is built on the parameters' devices."""
        self._keep = []
        for i, layer in enumerate(self.nodes):
            if layer.next_module is None:
                self._keep.append(None)
                continue
            w = layer.next_module.weight
            rows = self.born[i + 1].to(w.device).unsqueeze(1)
            zero = rows < self._unit_birth(i).to(w.device).unsqueeze(0)
            if not bool(zero.any()):
                self._keep.append(None)
                continue
            self._keep.append((~zero).to(dtype=w.dtype).unsqueeze(2))
        last = self._unit_birth(len(self.nodes) - 1)
        self._head_cols = {}
        for task, birth in self.head_born.items():
            cols = torch.nonzero(last > birth).flatten()
            if cols.numel():
                if self.heads is not None and task in self.heads:
                    cols = cols.to(self.heads.heads[task].weight.device)
                self._head_cols[task] = cols
        self._g0 = [o == 0 for o in self.omega]

    def apply_masks(self) -> None:
        """Re-apply I.1 to the live weights (trunk and past heads)."""
        with torch.no_grad():
            for layer, keep in zip(self.nodes, self._keep, strict=True):
                if keep is not None:
                    w = layer.next_module.weight
                    w.view(w.shape[0], layer.post_width, -1).mul_(keep)
            if self.heads is not None:
                for task, cols in self._head_cols.items():
                    if task in self.heads:
                        self.heads.heads[task].weight.index_fill_(1, cols, 0.0)

    # ------------------------------------------------------------------ proximal step

    def prox_now(self, optimizer: torch.optim.Optimizer | None = None, lr: float | None = None) -> None:
        """One proximal step (rule 7) on every trunk layer, with ``alpha = lr`` if given, else
        the current learning rate of the layer's weight in ``optimizer`` (default: the attached
        one). Layers whose weight is not in the optimizer are skipped (they are not trained)."""
        optimizer = optimizer if optimizer is not None else self._optimizer
        groups = _opt_params(optimizer) if optimizer is not None else {}
        mu, lamb = float(self.hparams["mu"]), float(self.hparams["lamb"])
        with torch.no_grad():
            for i, layer in enumerate(self.nodes):
                if lr is not None:
                    alpha = float(lr)
                elif id(layer.module.weight) in groups:
                    alpha = float(groups[id(layer.module.weight)]["lr"])
                else:
                    continue
                v = get_incoming(layer)
                omega = self.omega[i] if self.omega[i].dtype == v.dtype else self.omega[i].to(v.dtype)
                # eq. (7): alpha * mu around 0 on G0, alpha * lamb * Omega around the anchor elsewhere
                thr = torch.where(self._g0[i], alpha * mu, alpha * lamb * omega)
                center = None if self.anchor is None else self.anchor[i].masked_fill(self._g0[i].unsqueeze(1), 0.0)
                set_incoming(layer, prox_group(v, thr, center, check=False))
        self.n_prox += 1

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        self._place()
        super().attach(optimizer)

    def _post_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.steps += 1
        self.apply_masks()  # first: the prox then sees masked entries at their anchor (0)
        if self.steps % int(self.hparams["prox_every"]) == 0:
            self.prox_now(optimizer)

    # ------------------------------------------------------------------ consolidation

    def _snapshot_groups(self) -> list[Tensor] | None:
        """Share the anchor as the used-capacity snapshot when the weights still equal it."""
        current = [get_incoming(lay) for lay in self.nodes]
        if self.anchor is not None and all(torch.equal(c, a.to(c.device)) for c, a in zip(current, self.anchor, strict=True)):
            return self.anchor
        return current

    def _consolidate(self, t: int, forward: Forward) -> None:
        self._place()  # end_task may come without begin_task, after the model moved
        eta = float(self.hparams["eta"])
        c = self.n_consolidated
        # eq. (8); the activity means come from the CPU recorder, Omega lives with the weights
        self.omega = [eta * o + a.to(o.device) for o, a in zip(self.omega, self._last_activity, strict=True)]
        g0 = self.unimportant()
        self.born = _narrow_births(self.born, c + 1)  # widens only when c outgrows the dtype
        for i in range(len(self.nodes)):
            born = self.born[i]
            self.born[i] = torch.where(~g0[i] & (born == _never(born.dtype)), torch.full_like(born, c), born)
        # (I.1): zero all outgoing weights of G0 nodes once; the masks hold those into important nodes
        for i, layer in enumerate(self.nodes):
            zero_outgoing(layer, g0[i])
        if self.heads is not None and t in self.heads:
            self.head_born[t] = c
            zero_outgoing(self.nodes[-1], g0[-1], heads=self.heads, tasks=[t])
        self._rebuild_masks()
        # (I.2)
        rho = float(self.hparams["rho"])
        for i, layer in enumerate(self.nodes):
            coin = torch.rand(layer.n_nodes, generator=self.generator) < rho
            fresh = fresh_incoming(layer, self.generator)
            rows = torch.nonzero(coin & g0[i].cpu()).flatten()
            if rows.numel():
                set_incoming(layer, fresh[rows.to(fresh.device)], rows=rows.to(fresh.device))
        self.apply_masks()  # I.2 re-draws only G0 rows, which no mask touches; kept for safety
        self.anchor = [get_incoming(lay) for lay in self.nodes]
        self.n_consolidated += 1

    # ------------------------------------------------------------------ state, memory, diagnostics

    def _method_state(self) -> dict[str, Any]:
        start_is_anchor = self._start is not None and self._start is self.anchor
        return {
            "omega": [o.clone() for o in self.omega],
            "born": [b.clone() for b in self.born],
            "head_born": {int(k): int(v) for k, v in self.head_born.items()},
            "anchor": [a.clone() for a in self.anchor] if self.anchor is not None else None,
            "n_consolidated": self.n_consolidated,
            "n_prox": self.n_prox,
            "start_is_anchor": start_is_anchor,
        }

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        if sd["method"]["start_is_anchor"]:
            sd["start"] = None  # restored as an alias of the anchor
        return sd

    def _load_method_state(self, state: dict[str, Any]) -> None:
        self.omega = [o.clone() for o in state["omega"]]
        self.n_consolidated = int(state["n_consolidated"])
        self.born = _narrow_births([b.clone() for b in state["born"]], self.n_consolidated)
        self.head_born = {int(k): int(v) for k, v in state["head_born"].items()}
        self.anchor = [a.clone() for a in state["anchor"]] if state["anchor"] is not None else None
        self.n_prox = int(state["n_prox"])
        if state["start_is_anchor"]:
            self._start = self.anchor
        self._place()  # onto the parameters' devices (a CPU checkpoint resumes on CUDA)

    def _memory(self) -> tuple[int, int]:
        """Omega (one float per node) plus the births (one narrow integer per node, uint8 up to
        254 tasks) that define the I.1 masks; the anchor (one copy of the trunk's Conv/Linear
        parameters). The cached masks are derived from Omega and the births and not counted."""
        imp = sum(o.numel() * o.element_size() + b.numel() * b.element_size() for o, b in zip(self.omega, self.born, strict=True))
        anchor = sum(a.numel() * a.element_size() for a in self.anchor) if self.anchor is not None else 0
        return imp, anchor

    def _method_diagnostics(self) -> dict[str, Any]:
        layers = []
        for i, layer in enumerate(self.nodes):
            o = self.omega[i]
            nz = o[o > 0]
            keep = self._keep[i]
            layers.append({
                "name": layer.name,
                "omega_mean": float(o.mean()),
                "omega_max": float(o.max()),
                "omega_min_nonzero": float(nz.min()) if nz.numel() else None,
                "masked_outgoing": float(1 - keep.mean()) if keep is not None else 0.0,
            })
        allo = torch.cat(self.omega)
        nz = allo[allo > 0]
        return {
            "omega": {
                "mean": float(allo.mean()),
                "max": float(allo.max()),
                "median_nonzero": float(nz.median()) if nz.numel() else None,
                "n_important": int(nz.numel()),
                "layers": layers,
            },
            "n_prox": self.n_prox,
            "masked_head_columns": {str(k): int(v.numel()) for k, v in self._head_cols.items()},
        }
