"""The supervised front end: train a multi-head network on a sequence of split-image tasks.

``run_experiment(cfg, rd, resume)`` (called by ``clrl run``) does, for every task t in order:
train (offline or single-pass regime, :mod:`clrl.supervised.loops`), ``reg.end_task`` on the
task's training examples with ``forward(x) = heads(trunk(x), t)``, score every task through its
own head on its test split (row t of R; entries above the diagonal are untrained tasks with
fresh heads), then write ``results.json`` (atomically), the regularizer's diagnostics, TensorBoard
scalars and a checkpoint (``checkpoints/task_XX.pt`` and ``latest.pt``).

With ``eval.fwt_baseline`` the untouched initial model is scored first (``results.baseline``,
the b of FWT). A non-finite loss raises :class:`~clrl.errors.TrainingDiverged` inside; the run
is then marked ``failed`` with the reason (the last checkpoint stays valid) and returned.
SIGINT/SIGTERM stop at once (checkpoints exist only at task ends, and a first one before task 0):
the run is marked ``failed`` with reason ``interrupted`` and the CLI exits 130; a crash marks it
``failed`` with the exception. Both through :mod:`clrl.lifecycle`, as in the RL runner.

Resume (``clrl run --resume DIR``): the model, heads, regularizer state, VCL betas, reservoir,
global RNG states and results are read back from ``latest.pt`` (through
:func:`clrl.io.load_checkpoint`), and training continues with the task after the last finished
one. Every random stream of a task is derived from (seed, task) or restored, so on CPU a resumed
run gives the same R as an uninterrupted one with the same seed.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from typing import Any

import torch

from clrl.allocator import tune_malloc
from clrl.analysis.monitor import RepresentationMonitor
from clrl.config import SupervisedConfig, config_to_dict, regularizer_hparams
from clrl.device import resolve_device
from clrl.errors import CheckpointError
from clrl.io import check_finite_tensors, load_checkpoint, restoring, save_checkpoint
from clrl.lifecycle import (
    Interrupt,
    check_same_experiment,
    event_writer,
    failure_guard,
    resume_start,
)
from clrl.progress import TaskBar
from clrl.regularizers import Regularizer, build_from_config
from clrl.regularizers.base import diagnostic_scalars
from clrl.results import (
    CurvePoint,
    Results,
    compute_metrics,
    dumps,
    new_results,
    reference_from_run,
    save_results,
)
from clrl.rundir import RunDir, run_lock, setup_logging
from clrl.seeding import derive_seed, get_rng_state, seed_everything, set_rng_state
from clrl.supervised.data import build_benchmark
from clrl.supervised.evaluation import evaluate_tasks
from clrl.supervised.loops import (
    TaskContext,
    consolidation_batches,
    train_offline_task,
    train_single_pass_task,
)
from clrl.supervised.model import build_model
from clrl.supervised.reservoir import ReservoirBuffer

__all__ = ["run_experiment"]

CHECKPOINT_KIND = "clrl.supervised"


def _wall(start: float) -> float:
    return round(time.time() - start, 3)


def _checkpoint_state(ctx: TaskContext, results: Results, task: int) -> dict[str, Any]:
    m = ctx.model
    return {
        "format": "clrl.checkpoint",
        "kind": CHECKPOINT_KIND,
        "task": int(task),
        "tasks": list(results.tasks),
        "trunk": m.trunk.state_dict(),
        "heads": m.heads.state_dict(),
        "vcl": m.vcl.state_dict() if m.vcl is not None else None,
        "regularizer": ctx.reg.state_dict(),
        "reservoir": ctx.buffer.state_dict() if ctx.buffer is not None else None,
        "rng": get_rng_state(),
        "counters": dict(ctx.counters),
        "results": dumps(results),
    }


def _restore_checkpoint(ctx: TaskContext, state: dict[str, Any], path: Any) -> Results:
    if state.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(f"{path}: not a supervised-run checkpoint (kind {state.get('kind')!r})")
    saved = Results.model_validate(json.loads(state["results"]))
    check_same_experiment(saved.config, ctx.cfg, path)  # an edited config.yaml is refused
    for part in ("trunk", "heads", "vcl"):
        check_finite_tensors(state.get(part) or {}, path, part)
    if list(state["tasks"]) != ctx.bench.task_names:
        raise CheckpointError(
            f"{path}: saved for tasks {state['tasks']}, but the config now gives {ctx.bench.task_names}"
        )
    m = ctx.model
    try:
        m.trunk.load_state_dict(state["trunk"])
        m.heads.load_state_dict(state["heads"])
        if m.vcl is not None:
            m.vcl.load_state_dict(state["vcl"])
        saved_hp = state["regularizer"].get("hparams", {})
        if ctx.prox_every_auto and "prox_every" in ctx.reg.hparams and "prox_every" in saved_hp:
            ctx.reg.hparams["prox_every"] = saved_hp["prox_every"]  # set per task by the loop
        ctx.reg.load_state_dict(state["regularizer"])
        if ctx.buffer is not None:
            ctx.buffer.load_state_dict(state["reservoir"], device=ctx.device)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: does not match this run's model ({exc})") from exc
    set_rng_state(state["rng"])
    ctx.counters.update({k: int(v) for k, v in state["counters"].items()})
    return saved


def run_experiment(cfg: SupervisedConfig, rd: RunDir, resume: bool = False) -> Results:
    """Run (or resume) the supervised experiment ``cfg`` in ``rd``; return its results."""
    tune_malloc()  # large batches reuse heap memory instead of faulting in new pages
    with run_lock(rd.root):  # one run per directory (a second gets exit 2 naming the holder)
        return _run(cfg, rd, resume)


def _run(cfg: SupervisedConfig, rd: RunDir, resume: bool) -> Results:
    log = setup_logging(rd, "clrl.supervised")
    start = time.time()
    rd.make()
    previous = resume_start(rd, cfg) if resume else None
    if previous is not None:
        log.info("resume: %s is already complete", rd.root)
        return previous
    results: Results | None = None  # until restored or created: a failure then leaves results.json alone

    def fail(reason: str) -> None:
        if results is None:
            log.error("run stopped before it started: %s", reason)
            return
        results.status, results.reason = "failed", reason
        try:
            results.metrics = compute_metrics(results)
        except Exception:  # noqa: BLE001 - metrics of a broken run are a nicety
            pass
        log.error("run stopped: %s", reason)
        save_results(rd.results_path, results)

    def running() -> bool:
        return results is not None and results.status == "running"

    # checkpoints are written at task ends only: a signal stops at once and keeps the last one
    interrupt = Interrupt(log, immediate=True)
    with interrupt.installed(), failure_guard(fail, running, rd.root):
        device = resolve_device(cfg.device)
        seed_everything(cfg.seed, deterministic=cfg.train.deterministic)
        bench = build_benchmark(cfg.tasks, cfg.seed)
        T = len(bench.tasks)
        model = build_model(cfg, bench).to(device)
        name, hparams = regularizer_hparams(cfg)
        reg: Regularizer = build_from_config(name, hparams, model.trunk, model.heads, cfg.model.activation)
        buffer = None
        if cfg.train.regime == "single_pass" and cfg.train.buffer_size > 0:
            buffer = ReservoirBuffer(cfg.train.buffer_size, seed=derive_seed(cfg.seed, "reservoir"))
        ctx = TaskContext(cfg, bench, model, reg, device, log, buffer=buffer,
                          prox_every_auto=getattr(cfg.regularizer, "prox_every", 1) is None)

        def save_checkpoints(reason: str, task: int, **_: Any) -> None:
            """The supervised run's checkpoints: the initial state and every finished task (the
            file's ``task`` is the last finished one, -1 at the start)."""
            if reason not in ("start", "task_end"):
                raise ValueError(f"unknown safe_point reason {reason!r} for a supervised run")
            state = _checkpoint_state(ctx, results, task if reason == "task_end" else -1)
            if reason == "task_end":
                save_checkpoint(rd.task_checkpoint(task), state)
            save_checkpoint(rd.latest_checkpoint, state)

        ctx.events.subscribe("safe_point", save_checkpoints)
        bar = TaskBar(T, enabled=cfg.output.progress).attach(ctx.events)

        if resume and rd.latest_checkpoint.is_file():
            state = load_checkpoint(rd.latest_checkpoint, map_location=device)
            with restoring(rd.latest_checkpoint, "state"):
                restored = _restore_checkpoint(ctx, state, rd.latest_checkpoint)
            restored.status, restored.reason = "running", None
            results = restored
            log.info("resumed from %s after task %d", rd.latest_checkpoint, results.tasks_done() - 1)
        elif resume:
            log.warning("resume: no checkpoint in %s; starting from the first task", rd.checkpoints)
        if results is None:
            fresh = new_results("supervised", cfg.name, cfg.seed, config_to_dict(cfg), bench.task_names)
            if cfg.reference:  # finished, the same tasks with the same classes (as the CLI's preflight checks)
                fresh.reference = reference_from_run(cfg.reference, bench.task_names, config=config_to_dict(cfg),
                                                     kind=cfg.kind, classes=[task.classes for task in bench.tasks])
            fresh.timings = {"per_task": []}
            results = fresh
            save_results(rd.results_path, results)  # from the start: a signal during start-up is recorded
            log.info("run %s: %d tasks %s, device %s, regularizer %s %s", cfg.name, T, bench.task_names, device, name, hparams)
            if cfg.train.regime == "single_pass" and cfg.tasks.validation > 0:
                log.warning("single-pass regime: tasks.validation = %s of the training data is held out but unused",
                            cfg.tasks.validation)
            for t, task in enumerate(bench.tasks):
                log.info("task %d %s: classes %s, %d train / %d val / %d test", t, task.name, task.classes,
                         len(task.y_train), len(task.y_val), len(task.y_test))
            if cfg.eval.fwt_baseline:
                t0 = time.time()
                results.baseline = evaluate_tasks(model, bench.tasks, range(T), cfg.eval.batch_size, device)
                results.timings["baseline_s"] = _wall(t0)
            # the initial state: a run stopped during its first task resumes from here
            ctx.events.emit("safe_point", reason="start", task=0, step=0)
            save_results(rd.results_path, results)

        writer = event_writer(rd, _tb_step(ctx), log) if cfg.output.tensorboard else None
        ctx.writer = writer
        if cfg.eval.analysis:
            RepresentationMonitor(
                model.trunk, lambda j, x: torch.from_numpy(bench.tasks[j].norm(x)).to(device), model.trunk,
                rd.probes, tau=cfg.eval.analysis_tau, probe_size=cfg.eval.analysis_probes, regularizer=reg,
                current=lambda j: bench.tasks[j].x_test, timings=lambda: results.timings, writer=lambda: ctx.writer,
                task_names=bench.task_names, tasks_done=results.tasks_done, every=cfg.eval.analysis_every,
                eval_index=lambda: len(results.curves) - 1,  # the point being reported
            ).attach(ctx.events)
        first = results.tasks_done()
        run_start = time.time()

        def record_curve(task: int, epoch: int, last: bool = False, **_: Any) -> None:
            """A curve point every ``eval.every_epochs`` epochs of the offline regime, except at a
            task's last epoch, where the end-of-task point is taken (as the RL runner folds a
            periodic point due at a task's last update into its end-of-task one)."""
            t, every = task, cfg.eval.every_epochs
            if every and (epoch + 1) % every == 0 and not last:
                scores = evaluate_tasks(model, bench.tasks, range(t + 1), cfg.eval.batch_size, device)
                step = ctx.counters["epochs"]
                results.curves.append(CurvePoint(step=step, task=t, scores=scores, wall_time=_wall(run_start)))
                ctx.events.emit("evaluation", task=t, step=step, point=results.curves[-1], end_of_task=False)
                for j, s in enumerate(scores):
                    ctx.scalar(f"eval/acc/{bench.tasks[j].name}", s, step)
                save_results(rd.results_path, results)

        ctx.events.subscribe("update_end", record_curve)  # update_end: an offline-regime epoch
        train_task = train_offline_task if cfg.train.regime == "offline" else train_single_pass_task
        with writer if writer is not None else nullcontext():
            try:
                for t in range(first, T):
                    _run_task(ctx, results, rd, t, train_task, run_start)
            finally:
                bar.close()  # a failed task leaves no half-drawn bar
        results.status = "complete"
        results.metrics = compute_metrics(results)
        results.timings["total_s"] = round(results.timings.get("total_s", 0.0) + time.time() - start, 3)
        save_results(rd.results_path, results)
        log.info("complete: ACC %.4f", results.metrics.get("acc") or float("nan"))
    return results


def _tb_step(ctx: TaskContext) -> int:
    """The TensorBoard step axis: epochs in the offline regime, examples seen in the single pass."""
    return int(ctx.counters["epochs"] if ctx.cfg.train.regime == "offline" else ctx.counters["examples"])


def _run_task(ctx: TaskContext, results: Results, rd: RunDir, t: int, train_task, run_start: float) -> None:
    cfg, bench, model = ctx.cfg, ctx.bench, ctx.model
    T = len(bench.tasks)
    log = ctx.log
    t0 = time.time()
    info = train_task(ctx, t)  # emits task_start, batch_end and (offline) update_end
    t1 = time.time()
    ctx.reg.end_task(t, consolidation_batches(ctx, t), lambda x: model.heads(model.trunk(x), t))
    if model.vcl is not None:
        model.vcl.clear()
    t2 = time.time()
    step = _tb_step(ctx)
    ctx.events.emit("task_end", task=t, step=step, inputs=bench.tasks[t].x_test)
    t2a = time.time()
    row = evaluate_tasks(model, bench.tasks, range(T), cfg.eval.batch_size, ctx.device)
    t3 = time.time()
    results.R[t] = row
    results.curves.append(CurvePoint(step=step, task=t, scores=row[: t + 1], wall_time=_wall(run_start)))
    ctx.events.emit("evaluation", task=t, step=step, point=results.curves[-1], end_of_task=True)
    diag = ctx.reg.diagnostics()
    diag.update(task_name=bench.tasks[t].name, classes=bench.tasks[t].classes, train=info)
    results.diagnostics.append(diag)
    results.timings.setdefault("per_task", []).append(
        {"task": t, "train_s": round(t1 - t0, 3), "consolidate_s": round(t2 - t1, 3), "eval_s": round(t3 - t2a, 3)}
    )
    results.metrics = compute_metrics(results)
    for j, s in enumerate(row):
        ctx.scalar(f"eval/acc/{bench.tasks[j].name}", s, step)
    # every scalar on the run's one step axis (_tb_step), so a resume's purge covers them all
    ctx.scalar("eval/avg_acc_seen", sum(row[: t + 1]) / (t + 1), step)
    for tag, value in diagnostic_scalars(diag).items():
        ctx.scalar(tag, value, step)
    log.info("task %d %s done in %.1fs (%s): R[%d] = %s", t, bench.tasks[t].name, t3 - t0, info, t,
             " ".join(f"{v:.3f}" for v in row))
    ctx.events.emit("safe_point", reason="task_end", task=t, step=step)
    save_results(rd.results_path, results)
