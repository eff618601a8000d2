"""The monitor's measures for all seen tasks at once: one forward over every probe set, then
per-task statistics by segment sums, so an evaluation costs a few dozen tensor operations rather
than a few dozen per task (the probe sets are small and the per-operation overhead dominates).

Each quantity equals the per-task function of :mod:`clrl.analysis.representation` /
:mod:`clrl.analysis.submasks` / :mod:`clrl.analysis.sparsity` applied to that task's rows (the
tests check this); samples of task ``t`` are the rows where ``seg == t``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .representation import unit_activity
from .submasks import submask

__all__ = ["measure_tasks"]


def _per_sample_units(x: Tensor) -> Tensor:
    """``(N, U, *spatial)`` -> ``(N, U)`` mean over positions, float64."""
    x = x.double()
    return x.flatten(2).mean(2) if x.dim() > 2 else x


def _seg_sum(values: Tensor, seg: Tensor, n_seg: int) -> Tensor:
    out = torch.zeros((n_seg, *values.shape[1:]), dtype=values.dtype)
    return out.index_add_(0, seg, values)


def _hoyer(out: Tensor, seg: Tensor, n_seg: int) -> list[float | None]:
    """Per task, the mean Hoyer sparsity of its non-zero rows (forward-forward paper, eq. 4)."""
    h = out.flatten(1).double()
    n = h.shape[1]
    l1, l2 = h.abs().sum(1), torch.linalg.vector_norm(h, dim=1)
    ok = l2 > 0
    s = (math.sqrt(n) - l1 / torch.where(ok, l2, torch.ones_like(l2))) / (math.sqrt(n) - 1)
    total = _seg_sum(torch.where(ok, s, torch.zeros_like(s)), seg, n_seg)
    count = _seg_sum(ok.double(), seg, n_seg)
    return [None if c == 0 else v for v, c in zip((total / count.clamp(min=1)).tolist(), count.tolist(), strict=True)]


def _dormant(activity_su: Tensor, counts: Tensor, seg: Tensor, tau: float) -> Tensor:
    """(T, U) bool: tau-dormant units per task (ReDo), from per-sample unit magnitudes."""
    score = _seg_sum(activity_su, seg, len(counts)) / counts[:, None]
    mean = score.mean(1, keepdim=True)
    return torch.where(mean > 0, score / torch.where(mean > 0, mean, torch.ones_like(mean)) <= tau,
                       torch.ones_like(score, dtype=torch.bool))


def _srank(feats: Tensor, counts: list[int], delta: float) -> list[int]:
    """srank per task; rows are zero-padded to one length, which leaves singular values alone."""
    n_max = max(counts)
    pad = torch.zeros(len(counts), n_max, feats.shape[1], dtype=torch.float64)
    lo = 0
    for t, c in enumerate(counts):
        pad[t, :c] = feats[lo : lo + c].double()
        lo += c
    # singular values as square roots of the Gram matrix's eigenvalues (the smaller side): about
    # 1.5x faster than svdvals here, and exact to ~1e-8 of the largest, far below what srank reads
    gram = pad @ pad.transpose(1, 2) if pad.shape[1] <= pad.shape[2] else pad.transpose(1, 2) @ pad
    s = torch.linalg.eigvalsh(gram).clamp(min=0).sqrt().flip(-1)
    cum = torch.cumsum(s, 1)
    total = cum[:, -1:]
    k = (cum < (1.0 - delta) * total).sum(1) + 1
    return [0 if tot <= 0 else int(v) for v, tot in zip(k.tolist(), total.flatten().tolist(), strict=True)]


def measure_tasks(
    layers: list[tuple[str, nn.Module]],
    pres: list[Tensor],
    outs: list[Tensor],
    feats: Tensor,
    counts: list[int],
    refs: list[Any],
    protected: list[list[Tensor] | None],
    tau: float,
    delta: float,
) -> tuple[list[dict[str, Any]], list[list[Tensor] | None]]:
    """Entries of the analysis block for the tasks whose probe rows are stacked in ``pres`` /
    ``outs`` / ``feats`` (``counts[t]`` rows each, in order). ``refs[t]`` is the task's
    :class:`~clrl.analysis.probes.Probe` with its reference state, or None; ``protected[t]`` its
    per-layer node masks or None. Also returns, per task with a reference, the bool vectors of
    its non-dormant units per layer (for the overlap)."""
    T = len(counts)
    seg = torch.repeat_interleave(torch.arange(T), torch.tensor(counts))
    cnt = torch.tensor(counts, dtype=torch.float64)
    has_ref = [r is not None for r in refs]
    ref_rows = torch.tensor(has_ref)[seg].nonzero().flatten() if any(has_ref) else None
    layer_vals: list[dict[str, list]] = []
    used_parts: list[Tensor] = []
    for i, (_, act) in enumerate(layers):
        pre, out = pres[i], outs[i]
        mask = submask(act, pre)
        activity = _per_sample_units(unit_activity(act, pre, out, mask).abs())
        dormant = _dormant(activity, cnt, seg, tau)
        used_parts.append(~dormant)
        active = _seg_sum(mask.flatten(2).any(2).double() if mask.dim() > 2 else mask.double(), seg, T)
        vals: dict[str, list] = {
            "hoyer": _hoyer(out, seg, T),
            "dead": (active == 0).double().mean(1).tolist(),
            "dormant": dormant.double().mean(1).tolist(),
            "drift": [None] * T,
            "drift_protected": [None] * T,
            "protected_share": [None] * T,
        }
        if ref_rows is not None:
            ref_mask = torch.cat([refs[t].masks[i] for t in range(T) if has_ref[t]])
            now = mask if len(ref_rows) == len(seg) else mask[ref_rows]
            flips = _per_sample_units(now != ref_mask.to(mask.device))
            per_unit = _seg_sum(flips, seg[ref_rows], T) / cnt[:, None]  # rows of tasks without ref: 0
            drift_t = per_unit.mean(1).tolist()
            U = per_unit.shape[1]
            prot = torch.zeros(T, U, dtype=torch.bool)
            has_prot = [has_ref[t] and protected[t] is not None and protected[t][i].numel() == U for t in range(T)]
            for t in range(T):
                if has_prot[t]:
                    prot[t] = protected[t][i].cpu().bool()
            n_prot = prot.sum(1)
            prot_drift = ((per_unit * prot).sum(1) / n_prot.clamp(min=1)).tolist()
            share = (n_prot.double() / U).tolist()
            for t in range(T):
                if has_ref[t]:
                    vals["drift"][t] = drift_t[t]
                if has_prot[t]:
                    vals["drift_protected"][t] = prot_drift[t] if n_prot[t] > 0 else None
                    vals["protected_share"][t] = share[t]
        layer_vals.append(vals)
    last_out = outs[-1].flatten(1)
    if last_out.shape == feats.shape and torch.equal(last_out, feats):  # the heads read the last layer
        f_hoyer = layer_vals[-1]["hoyer"]
    else:
        f_hoyer = _hoyer(feats, seg, T)
    f_dormant = _dormant(feats.double().abs(), cnt, seg, tau)
    f_active = _seg_sum((feats != 0).double(), seg, T)
    f_rank = _srank(feats, counts, delta)
    f_change: list[float | None] = [None] * T
    if ref_rows is not None:
        ref_feats = torch.cat([refs[t].features for t in range(T) if has_ref[t]]).double()
        num = _seg_sum(((feats[ref_rows].double() - ref_feats) ** 2).sum(1), seg[ref_rows], T)
        den = _seg_sum((ref_feats**2).sum(1), seg[ref_rows], T)
        for t in range(T):
            if has_ref[t] and den[t] > 0:
                f_change[t] = math.sqrt(num[t].item() / den[t].item())
    entries, used = [], []
    for t in range(T):
        layers_out = {}
        for (name, _), vals in zip(layers, layer_vals, strict=True):
            e = {k: vals[k][t] for k in ("hoyer", "dead", "dormant", "drift")}
            if vals["protected_share"][t] is not None:
                e["drift_protected"] = vals["drift_protected"][t]
                e["protected_share"] = vals["protected_share"][t]
            layers_out[name] = e
        entries.append({
            "n": counts[t],
            "reference": has_ref[t],
            "layers": layers_out,
            "features": {
                "hoyer": f_hoyer[t],
                "dead": (f_active[t] == 0).double().mean().item(),
                "dormant": f_dormant[t].double().mean().item(),
                "effective_rank": f_rank[t],
                "feature_change": f_change[t],
            },
        })
        used.append([u[t] for u in used_parts] if has_ref[t] else None)
    return entries, used
