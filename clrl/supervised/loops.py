"""Training one task: the offline regime (epochs, validation, lr schedule) and the single-pass
regime (one pass, small batches, reservoir replay).

The loops know nothing about the regularizer beyond Contract 1 (DESIGN.md): they build a new
optimizer per task over the trunk and the current head (past heads are never updated,
bug 3 in the README's "Departures from the authors' code"), call ``reg.begin_task(t, optimizer)`` and then step the optimizer as usual;
EWC/MAS add their penalty gradient and AGS-CL its proximal step inside the optimizer's hooks.
The one thing the loop sets is AGS-CL's ``prox_every`` (when the config leaves it unset): the
number of batches in one epoch of this task, so the proximal step runs once per epoch as in the
AGS-CL paper (sec. 5, "PGD update (5) was applied once after each epoch") with ``alpha`` = the
current learning rate.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from clrl.config import SupervisedConfig
from clrl.errors import TrainingDiverged
from clrl.events import EventBus
from clrl.regularizers import Regularizer
from clrl.seeding import derive_seed
from clrl.supervised.data import Benchmark
from clrl.supervised.evaluation import evaluate_task
from clrl.supervised.model import SupervisedModel
from clrl.supervised.reservoir import ReservoirBuffer

__all__ = ["TaskContext", "consolidation_batches", "make_optimizer", "train_offline_task", "train_single_pass_task"]


@dataclass
class TaskContext:
    """What a task's training loop needs; it announces its progress on ``events`` (clrl.events)."""

    cfg: SupervisedConfig
    bench: Benchmark
    model: SupervisedModel
    reg: Regularizer
    device: torch.device
    log: logging.Logger
    buffer: ReservoirBuffer | None = None
    writer: Any = None  # a tensorboard SummaryWriter or None
    counters: dict[str, int] = field(default_factory=lambda: {"epochs": 0, "examples": 0, "batches": 0})
    prox_every_auto: bool = True
    # task_start, batch_end, update_end, evaluation, task_end, safe_point (clrl.events)
    events: EventBus = field(default_factory=EventBus)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None and value is not None and math.isfinite(value):
            self.writer.add_scalar(tag, value, step)


def make_optimizer(cfg: SupervisedConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    tr = cfg.train
    if tr.optimizer == "adam":
        return torch.optim.Adam(params, lr=tr.learning_rate)
    return torch.optim.SGD(params, lr=tr.learning_rate, momentum=tr.momentum)


def _start_task(ctx, t: int):
    """What both regimes do first: a new optimizer over the trunk and task t's head only (past
    heads never move, bug 3 in the README's "Departures from the authors' code"), AGS-CL's prox cadence = one epoch, the regularizer's
    hooks attached, and a seeded shuffling generator. Returns (task, n, batch size, batches per
    epoch, optimizer, generator)."""
    task = ctx.bench.tasks[t]
    n = len(task.y_train)
    bs = ctx.cfg.train.batch_size
    n_batches = max(1, math.ceil(n / bs))
    opt = make_optimizer(ctx.cfg, ctx.model.parameters_for(t))
    _set_prox_every(ctx, n_batches)
    ctx.reg.begin_task(t, opt)
    gen = torch.Generator().manual_seed(derive_seed(ctx.cfg.seed, "shuffle", t))
    offline = ctx.cfg.train.regime == "offline"
    epochs = ctx.cfg.train.epochs if offline else 1
    ctx.events.emit("task_start", task=t, step=ctx.counters["epochs"] if offline else ctx.counters["examples"],
                    name=task.name, total=epochs, done=0, batches=epochs * n_batches)
    return task, n, bs, n_batches, opt, gen


def _set_prox_every(ctx: TaskContext, n_batches: int) -> None:
    """One proximal step per epoch of this task (AGS-CL only; a configured value is kept)."""
    if ctx.prox_every_auto and "prox_every" in ctx.reg.hparams:
        ctx.reg.hparams["prox_every"] = max(1, int(n_batches))


def _check_finite(loss: Tensor, where: str) -> None:
    if not bool(torch.isfinite(loss.detach())):
        raise TrainingDiverged(f"non-finite loss ({float(loss.detach())}) at {where}")


def _step(ctx: TaskContext, opt: torch.optim.Optimizer, loss: Tensor, t: int, where: str) -> float:
    _check_finite(loss, where)
    opt.zero_grad(set_to_none=True)
    ctx.model.heads.zero_grad(set_to_none=True)  # replayed past heads get gradients but no updates
    loss.backward()
    opt.step()
    if ctx.model.vcl is not None:
        ctx.model.vcl.clear()
    ctx.counters["batches"] += 1
    value = float(loss.detach())
    ctx.events.emit("batch_end", task=t, step=ctx.counters["batches"], loss=value)
    return value


def _snapshot(model: SupervisedModel, t: int) -> dict[str, dict[str, Tensor]]:
    snap = {
        "trunk": {k: v.detach().clone() for k, v in model.trunk.state_dict().items()},
        "head": {k: v.detach().clone() for k, v in model.heads.heads[t].state_dict().items()},
    }
    if model.vcl is not None:
        snap["vcl"] = {k: v.detach().clone() for k, v in model.vcl.state_dict().items()}
    return snap


def _restore(model: SupervisedModel, t: int, snap: dict[str, dict[str, Tensor]]) -> None:
    model.trunk.load_state_dict(snap["trunk"])
    model.heads.heads[t].load_state_dict(snap["head"])
    if model.vcl is not None and "vcl" in snap:
        model.vcl.load_state_dict(snap["vcl"])


def _task_loss(ctx: TaskContext, x: Tensor, y: Tensor, t: int) -> Tensor:
    loss = F.cross_entropy(ctx.model(x, t), y)
    if ctx.model.vcl is not None:
        loss = loss + ctx.model.vcl.loss()
    return loss


def drop_lr(opt: torch.optim.Optimizer, lr: float, reset: bool) -> None:
    """Set ``lr`` in the optimizer's param groups (the regularizer's hooks stay attached).

    ``reset`` also forgets the optimizer's state, which makes its next step that of a new
    optimizer at ``lr`` on the same parameters: what the AGS-CL/HAT code does with
    ``self.optimizer = self._get_optimizer(lr)`` at every drop (Adam's moments and step count
    start again from zero). Without it the moments carry over the drop (``train.
    reset_optimizer_on_lr_drop``, default false; the CIFAR configs set it, as their code)."""
    for group in opt.param_groups:
        group["lr"] = lr
    if reset:
        opt.state.clear()


def train_offline_task(ctx: TaskContext, t: int) -> dict[str, Any]:
    """Train task ``t`` for up to ``train.epochs`` epochs; return what happened (for diagnostics).

    Schedule (the AGS-CL supervised code): after every epoch the validation loss
    is computed; when it has not improved for ``lr_patience`` epochs, ``lr /= lr_factor`` (set in
    the optimizer's param groups, so the regularizer's hooks stay attached and AGS-CL's prox
    reads the new ``alpha``; :func:`drop_lr`: the code also restarts Adam there, here only with
    ``train.reset_optimizer_on_lr_drop``); the task ends early when ``lr < min_lr`` or after ``early_stop``
    drops. At the end the best-validation weights (trunk, this task's head and VCL's betas) are
    restored.

    Interaction with the regularizer: the snapshot is taken at an epoch end, i.e. right after that
    epoch's proximal step and I.1 masking, so restoring it gives weights the AGS-CL hooks have
    already processed; the regularizer's own state (Omega, anchors, Fisher) only changes in
    ``end_task``, which the trainer calls *after* the restore, so consolidation sees the restored
    weights. Its step counters are not rolled back (they only feed diagnostics). Without a
    validation set (``tasks.validation: 0``) the last epoch's weights are kept and lr stays fixed.
    """
    cfg, tr = ctx.cfg, ctx.cfg.train
    task, n, bs, n_batches, opt, gen = _start_task(ctx, t)
    has_val = len(task.y_val) > 0
    lr = tr.learning_rate
    best_loss, best_epoch, snap = math.inf, -1, None
    patience, drops, epochs_run = tr.lr_patience, 0, 0
    ctx.model.train(True)
    for epoch in range(tr.epochs):
        perm = torch.randperm(n, generator=gen).numpy()
        total = 0.0
        for b in range(n_batches):
            x, y = task.tensors("train", perm[b * bs : (b + 1) * bs], ctx.device)
            loss = _task_loss(ctx, x, y, t)
            total += _step(ctx, opt, loss, t, f"task {t} epoch {epoch} batch {b}") * len(y)
            ctx.counters["examples"] += len(y)
        epochs_run += 1
        ctx.counters["epochs"] += 1
        stats = {"train_loss": total / n, "lr": lr}
        if has_val:
            val_acc, val_loss = evaluate_task(ctx.model, task, t, "val", cfg.eval.batch_size, ctx.device)
            stats.update(val_loss=val_loss, val_acc=val_acc)
            if not math.isfinite(val_loss):
                raise TrainingDiverged(f"non-finite validation loss at task {t} epoch {epoch}")
            if val_loss < best_loss:
                best_loss, best_epoch, snap = val_loss, epoch, _snapshot(ctx.model, t)
                patience = tr.lr_patience
            else:
                patience -= 1
                if patience <= 0:
                    lr /= tr.lr_factor
                    drops += 1
                    patience = tr.lr_patience
                    drop_lr(opt, lr, reset=tr.reset_optimizer_on_lr_drop)
        step = ctx.counters["epochs"]
        for key, value in stats.items():
            ctx.scalar(f"train/{key}", value, step)
        stop = lr < tr.min_lr or (tr.early_stop is not None and drops >= tr.early_stop)
        # last: the task's end-of-task evaluation follows at this step (a periodic curve point
        # here would be a second point at the same step)
        ctx.events.emit("update_end", task=t, step=step, stats=stats, epoch=epoch,
                        last=stop or epoch == tr.epochs - 1)
        if stop:
            ctx.log.info("task %d: stopping after epoch %d (lr %.3g, %d drops)", t, epoch, lr, drops)
            break
    if snap is not None:
        _restore(ctx.model, t, snap)
    return {"epochs": epochs_run, "best_epoch": best_epoch, "best_val_loss": best_loss if has_val else None,
            "lr_drops": drops, "final_lr": lr, "batches_per_epoch": n_batches}


def train_single_pass_task(ctx: TaskContext, t: int) -> dict[str, Any]:
    """One pass over task ``t`` in batches of ``train.batch_size`` with reservoir replay.

    Each incoming batch is trained together with ``replay_batch`` examples drawn uniformly from
    the reservoir (one forward of the concatenated batch; replayed examples go through their own
    task's head): loss = mean CE(incoming) + mean CE(replayed) (+ VCL). Only then is the incoming
    batch streamed into the reservoir (algorithm R), so a batch is never replayed with itself.
    Past heads get gradients from replay but are not in the optimizer (bug 3 in the README's "Departures from the authors' code"), so
    replay shapes the shared trunk only.
    """
    tr = ctx.cfg.train
    task, n, bs, n_batches, opt, gen = _start_task(ctx, t)
    perm = torch.randperm(n, generator=gen).numpy()
    buf = ctx.buffer
    total, log_every = 0.0, max(1, n_batches // 20)
    ctx.model.train(True)
    for b in range(n_batches):
        x, y = task.tensors("train", perm[b * bs : (b + 1) * bs], ctx.device)
        k = len(y)
        if buf is not None and len(buf) > 0:
            rx, ry, rt = buf.sample(tr.replay_batch)
            feats = ctx.model.trunk(torch.cat([x, rx]))
            loss = F.cross_entropy(ctx.model.heads(feats[:k], t), y)
            replay = feats.new_zeros(())
            for task_id in torch.unique(rt).tolist():
                rows = (rt == task_id).nonzero().flatten()
                replay = replay + F.cross_entropy(ctx.model.heads(feats[k:][rows], task_id), ry[rows], reduction="sum")
            loss = loss + replay / len(ry)
        else:
            loss = F.cross_entropy(ctx.model(x, t), y)
        if ctx.model.vcl is not None:
            loss = loss + ctx.model.vcl.loss()
        value = _step(ctx, opt, loss, t, f"task {t} batch {b}")
        total += value * k
        if buf is not None:
            buf.add(x, y, t)
        ctx.counters["examples"] += k
        if b % log_every == 0:
            ctx.scalar("train/loss", value, ctx.counters["examples"])
    ctx.counters["epochs"] += 1
    stats = {"train_loss": total / n}
    return {"epochs": 1, "batches": n_batches, "train_loss": stats["train_loss"],
            "buffer_size": len(buf) if buf is not None else 0}


def consolidation_batches(ctx: TaskContext, t: int) -> Iterator[tuple[Tensor, Tensor]]:
    """The finished task's training examples as ``(x, y)`` batches for ``reg.end_task`` (the first
    ``train.consolidation_samples`` of a seeded permutation when that is set)."""
    task = ctx.bench.tasks[t]
    n = len(task.y_train)
    rows = np.arange(n)
    cap = ctx.cfg.train.consolidation_samples
    if cap is not None and cap < n:
        rng = np.random.default_rng(derive_seed(ctx.cfg.seed, "consolidation", t))
        rows = np.sort(rng.permutation(n)[:cap])
    bs = ctx.cfg.eval.batch_size
    for lo in range(0, len(rows), bs):
        yield task.tensors("train", rows[lo : lo + bs], ctx.device)
