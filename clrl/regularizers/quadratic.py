"""Weight-wise quadratic penalties (EWC, MAS) and the per-sample gradients they are built from.

Penalty: ``lamb / 2 * sum_k sum_i Omega_k,i (theta_i - theta*_k,i)^2`` over stored terms ``k``
(one per task, or one running term). Its gradient ``lamb * Omega_k * (theta - theta*_k)`` is
added to ``p.grad``; ``penalty_clipped`` chooses when:

* ``penalty_clipped=True`` (the AGS-CL authors' code, which adds the penalty to the loss): from a
  post-accumulate-grad hook on each penalized parameter, i.e. as soon as ``loss.backward()`` has
  written that parameter's gradient, so the training loop's gradient clipping scales the penalty
  together with the task gradient. The gradient is exactly that of ``loss + penalty``; a loop that
  accumulates several ``backward()`` calls per step would add it once per call.
* ``penalty_clipped=False`` (default): in the optimizer's pre-step hook, i.e. after any clipping,
  so the penalty is never scaled down by the task gradient's clipping (with RL's max grad norm
  0.5 the two differ a lot, and the paper's lambdas were tuned for the authors' choice).

Without clipping both give the same step. Either way the training loop does not change: it still
only calls ``backward()``, optionally clips, and ``step()``. A parameter whose ``grad`` is None
(no gradient from the task loss this step) is left alone, so the optimizer keeps skipping it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_map

from .base import Forward, Regularizer, _batch_size, _choice, _number, _opt_params

__all__ = ["QuadraticRegularizer", "per_sample_grad_sum"]

LossFn = Callable[[Tensor, Tensor | None], Tensor]


class _Container(nn.Module):
    """Trunk and heads under one root so ``functional_call`` can swap their parameters while the
    user's ``forward`` (which closes over the same module objects) runs."""

    def __init__(self, trunk: nn.Module, heads: nn.Module | None, forward: Forward) -> None:
        super().__init__()
        self.trunk = trunk
        if heads is not None:
            self.heads = heads
        object.__setattr__(self, "_fwd", forward)  # not registered as a submodule

    def forward(self, x: Any) -> Tensor:
        return self._fwd(x)


def _slice(x: Any, lo: int, hi: int) -> Any:
    return tree_map(lambda a: a[lo:hi] if isinstance(a, Tensor) else a, x)


def per_sample_grad_sum(
    container: nn.Module,
    params: dict[str, nn.Parameter],
    loss_fn: LossFn,
    x: Any,
    y: Tensor | None,
    reduce: str,
    chunk_size: int = 16,
    method: str = "vmap",
) -> dict[str, Tensor]:
    """Sum over the samples of ``x`` of ``g^2`` (``reduce="square"``) or ``|g|`` (``"abs"``),
    where ``g`` is the gradient of ``loss_fn(output_of_that_sample, y_of_that_sample)`` with
    respect to each parameter in ``params`` (keys: names in ``container``).

    ``method="vmap"`` uses ``torch.func`` (vmap of grad over chunks of ``chunk_size`` samples, so
    at most ``chunk_size`` gradient copies are alive); ``"loop"`` runs one backward per sample.
    Never the square of a minibatch-mean gradient."""
    op = torch.square if reduce == "square" else torch.abs
    n = _batch_size(x)
    sums = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in params.items()}
    if method == "vmap":
        detached = {k: p.detach() for k, p in params.items()}

        def single(pd: dict[str, Tensor], xi: Any, yi: Tensor | None) -> Tensor:
            out = functional_call(container, pd, (tree_map(lambda a: a.unsqueeze(0), xi),))
            return loss_fn(out[0], yi)

        per_sample = vmap(grad(single), in_dims=(None, 0, 0 if y is not None else None))
        for lo in range(0, n, chunk_size):
            hi = min(n, lo + chunk_size)
            with torch.no_grad():  # torch.func.grad still differentiates; the outer graph is not kept
                g = per_sample(detached, _slice(x, lo, hi), y[lo:hi] if y is not None else None)
            for k in sums:
                sums[k] += op(g[k]).sum(dim=0).to(torch.float32)
    else:
        names = list(params)
        plist = [params[k] for k in names]
        for i in range(n):
            out = container(_slice(x, i, i + 1))
            loss = loss_fn(out[0], y[i] if y is not None else None)
            grads = torch.autograd.grad(loss, plist, allow_unused=True)
            for k, g in zip(names, grads, strict=True):
                if g is not None:
                    sums[k] += op(g.detach()).to(torch.float32)
    return sums


class QuadraticRegularizer(Regularizer):
    """Shared machinery of EWC and MAS: per-sample importance during ``end_task``, anchors, and
    the penalty gradient in the pre-step hook. Subclasses define ``_loss_fn`` / ``_reduce`` and
    how a new task's importance is merged (``_merge``)."""

    uses_pre_hook: ClassVar[bool] = True
    _reduce: ClassVar[str] = "square"

    def __init__(self, trunk: nn.Module, heads: nn.Module | None = None, **hparams: Any) -> None:
        super().__init__(trunk, heads, **hparams)
        # each term: {"importance": {name: tensor}, "anchor": {name: tensor}}
        self.terms: list[dict[str, dict[str, Tensor]]] = []
        self.n_consolidated = 0
        self._sums: dict[str, Tensor] | None = None
        self._seen = 0
        self._method = "vmap" if self.hparams["per_sample"] in ("auto", "vmap") else "loop"
        self._live: dict[str, nn.Parameter] = {}

    @classmethod
    def validate(cls, hp: dict[str, Any]) -> None:
        _number(cls.name, "lamb", hp["lamb"], low=0)
        _choice(cls.name, "include_heads", hp["include_heads"], (True, False))
        if hp["max_samples"] is not None:
            _number(cls.name, "max_samples", hp["max_samples"], low=1, integer=True)
        _number(cls.name, "chunk_size", hp["chunk_size"], low=1, integer=True)
        _choice(cls.name, "per_sample", hp["per_sample"], ("auto", "vmap", "loop"))
        if not isinstance(hp["penalty_clipped"], bool):
            raise ValueError(f"{cls.name}: hyperparameter 'penalty_clipped' must be true or false, got {hp['penalty_clipped']!r}")

    # ------------------------------------------------------------------ subclass API

    def _loss_fn(self) -> LossFn:
        raise NotImplementedError

    def _labels(self, x: Any, y: Tensor | None, out: Tensor) -> Tensor | None:
        return None

    def _merge(self, new: dict[str, Tensor], anchor: dict[str, Tensor]) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ hooks

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        super().attach(optimizer)
        self._live = self._named_trainables(self.hparams["include_heads"])
        if self.hparams["penalty_clipped"] and self.terms:
            in_opt = _opt_params(optimizer)
            for name, p in self._live.items():
                if id(p) in in_opt and any(name in term["importance"] for term in self.terms):
                    self._handles.append(p.register_post_accumulate_grad_hook(self._grad_hook(name)))

    def _grad_hook(self, name: str) -> Callable[[Tensor], None]:
        def hook(p: Tensor) -> None:
            self._add_penalty_grad(name, p)

        return hook

    def _add_penalty_grad(self, name: str, p: Tensor) -> None:
        """``p.grad += lamb * sum_k Omega_k (p - anchor_k)``: the penalty's gradient."""
        lamb = float(self.hparams["lamb"])
        with torch.no_grad():
            for term in self.terms:
                imp = term["importance"].get(name)
                if imp is not None:
                    p.grad.addcmul_(imp, p - term["anchor"][name], value=lamb)

    def _pre_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.steps += 1
        if not self.terms or self.hparams["penalty_clipped"]:
            return  # penalty_clipped: the gradient hooks added it before clipping
        in_opt = _opt_params(optimizer)
        for name, p in self._live.items():
            if p.grad is not None and id(p) in in_opt:
                self._add_penalty_grad(name, p)

    def penalty(self) -> float:
        """Current value of ``lamb / 2 * sum Omega (theta - theta*)^2`` (for logging/tests)."""
        live = self._named_trainables(self.hparams["include_heads"])
        total = 0.0
        with torch.no_grad():
            for term in self.terms:
                for name, imp in term["importance"].items():
                    if name in live:
                        total += float((imp * (live[name] - term["anchor"][name]) ** 2).sum())
        return 0.5 * float(self.hparams["lamb"]) * total

    # ------------------------------------------------------------------ consolidation

    def _consume(self, x: Any, y: Tensor | None, out: Tensor, forward: Forward) -> None:
        limit = self.hparams["max_samples"]
        n = _batch_size(x)
        if limit is not None:
            n = min(n, limit - self._seen)
            if n <= 0:
                return
            x, out = _slice(x, 0, n), out[:n]
            y = y[:n] if y is not None else None
        labels = self._labels(x, y, out)
        params = self._named_trainables(self.hparams["include_heads"])
        container = _Container(self.trunk, self.heads, forward)
        kwargs = dict(reduce=self._reduce, chunk_size=int(self.hparams["chunk_size"]))
        with torch.enable_grad():
            if self._method == "vmap":
                try:
                    sums = per_sample_grad_sum(container, params, self._loss_fn(), x, labels, method="vmap", **kwargs)
                except Exception as err:  # an activation or forward that torch.func cannot trace
                    if self.hparams["per_sample"] == "vmap":
                        raise
                    warnings.warn(f"{self.name}: torch.func per-sample gradients failed ({err!r}); using a loop", stacklevel=2)
                    self._method = "loop"
            if self._method == "loop":
                sums = per_sample_grad_sum(container, params, self._loss_fn(), x, labels, method="loop", **kwargs)
        if self._sums is None:
            self._sums = sums
        else:
            for k, v in sums.items():
                if k in self._sums:
                    self._sums[k] += v
                else:
                    self._sums[k] = v
        self._seen += n

    def _consolidate(self, t: int, forward: Forward) -> None:
        if self._sums is None or self._seen == 0:
            raise ValueError(f"{self.name}: end_task({t}) needs at least one batch to estimate importance")
        params = self._named_trainables(self.hparams["include_heads"])
        new = {k: (v / self._seen).to(params[k].dtype) for k, v in self._sums.items()}
        anchor = {k: params[k].detach().clone() for k in new}
        self._merge(new, anchor)
        self.n_consolidated += 1
        self._sums, self._seen = None, 0

    # ------------------------------------------------------------------ state, memory, diagnostics

    def _method_state(self) -> dict[str, Any]:
        return {
            "terms": [{k: {n: v.clone() for n, v in d.items()} for k, d in term.items()} for term in self.terms],
            "n_consolidated": self.n_consolidated,
            "per_sample_method": self._method,
        }

    def _load_method_state(self, state: dict[str, Any]) -> None:
        # on the device of the parameter each tensor belongs to, so a CPU checkpoint resumes on CUDA
        params = self._named_trainables(self.hparams["include_heads"])

        def place(name: str, value: torch.Tensor) -> torch.Tensor:
            return value.clone().to(params[name].device) if name in params else value.clone()

        self.terms = [{k: {n: place(n, v) for n, v in d.items()} for k, d in term.items()} for term in state["terms"]]
        self.n_consolidated = int(state["n_consolidated"])
        self._method = str(state["per_sample_method"])

    def _memory(self) -> tuple[int, int]:
        imp = sum(v.numel() * v.element_size() for term in self.terms for v in term["importance"].values())
        anchor = sum(v.numel() * v.element_size() for term in self.terms for v in term["anchor"].values())
        return imp, anchor

    def _method_diagnostics(self) -> dict[str, Any]:
        values = [v.flatten().float() for term in self.terms for v in term["importance"].values()]
        if values:
            allv = torch.cat(values)
            stats = {"mean": float(allv.mean()), "max": float(allv.max()), "n_params": int(allv.numel()),
                     "n_terms": len(self.terms)}
        else:
            stats = {"mean": None, "max": None, "n_params": 0, "n_terms": 0}
        return {"importance": stats, "penalty": self.penalty()}
