"""The sequential Atari runner: train one game after another, evaluate every game seen so far.

``run_experiment(cfg, rd, resume)`` (called by ``clrl run``) for each task ``t`` in order:
``begin_task`` (new heads, new PPO object and Adam, regularizer hooks attached), ``J =
ceil(steps_per_task / (n_envs * n_steps))`` PPO updates, ``end_task`` on
``train.consolidation_samples`` states the trained policy visits, then the end-of-task
evaluation of every seen game with its own head, which fills ``R[t][j]`` (j <= t). Every
``eval.every_steps`` env steps a curve point is added as well. ``results.json`` is rewritten
(atomically) after every evaluation.

The end-of-task evaluation runs after ``end_task``: R[t][t] scores the network the next tasks
start from (AGS-CL's re-initialization and head masking included).

Checkpoints (``checkpoints/latest.pt``, plus ``task_XX.pt`` at each task boundary) are taken
only between PPO updates, after any evaluation due there, so a checkpoint is always a
consistent point of the loop; they are written atomically and never after a non-finite update
(the NaN guard stops the run first and keeps the last good one).

Resume and the deterministic mode: the emulators' state cannot be saved, so a resumed run
restarts its training envs (re-seeded from ``(seed, task, update)``) where the checkpoint was
taken. With ``train.deterministic: true`` every run, interrupted or not, does exactly that every
``train.checkpoint_every_updates`` updates and checkpoints only there; with the RNG states,
counters, Adam and regularizer state restored and torch's thread count pinned to the first
run's, a CPU run killed at any moment and resumed ends with the same R and curves, bit for bit,
as one that was never interrupted. Without it, checkpoints are time based
(``output.checkpoint_every_minutes``) and a resumed run continues statistically, not bitwise.

SIGINT/SIGTERM (:class:`clrl.lifecycle.Interrupt`, shared with the supervised trainer): the first
one finishes the current update (and evaluation), saves a checkpoint (in the deterministic mode
it keeps the last one at a fixed update count instead, so that the resumed run stays bit-exact),
marks results.json failed
with reason "interrupted" and raises KeyboardInterrupt (the CLI exits 130); a second one stops at
once, keeping the last checkpoint. One during start-up (building, the baseline) stops after the
initial checkpoint; one after the last task's last update lets the run complete.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import numpy as np
import torch

from clrl.allocator import tune_malloc
from clrl.analysis.monitor import RepresentationMonitor, rollout_states
from clrl.config import RLConfig, config_to_dict
from clrl.device import resolve_device, torch_threads
from clrl.errors import CheckpointError, TrainingDiverged
from clrl.events import EventBus
from clrl.io import restoring
from clrl.lifecycle import (
    Interrupt,
    check_same_experiment,
    event_writer,
    failure_guard,
    resume_start,
)
from clrl.preflight import rl_regularizer_hparams
from clrl.progress import RunProgress
from clrl.regularizers import Regularizer, build_from_config
from clrl.regularizers.base import diagnostic_scalars
from clrl.results import (
    CurvePoint,
    GameRecord,
    Results,
    compute_metrics,
    new_results,
    reference_from_run,
    save_results,
)
from clrl.rl import checkpoint as ckpt
from clrl.rl.agent import TaskPPO, collect_states
from clrl.rl.checkpoint import Counters
from clrl.rl.envs import action_count, make_vec_env
from clrl.rl.evaluation import EvalJob, EvalResult, evaluate_many
from clrl.rl.policy import ActorCritic, build_actor_critic
from clrl.rl.schedule import CheckpointSchedule
from clrl.rundir import RunDir, run_lock, setup_logging
from clrl.seeding import derive_seed, get_rng_state, seed_everything, set_rng_state

__all__ = ["run_experiment", "updates_per_task", "SequentialRun"]


def updates_per_task(cfg: RLConfig) -> int:
    """PPO updates per task: ``steps_per_task`` rounded up to whole rollouts."""
    batch = cfg.train.n_envs * cfg.train.n_steps
    return max(1, math.ceil(cfg.tasks.steps_per_task / batch))


def run_experiment(cfg: RLConfig, rd: RunDir, resume: bool = False) -> Results:
    """Run (or resume) the sequential Atari experiment ``cfg`` in ``rd``; returns its results."""
    tune_malloc()  # large activations reuse heap memory instead of faulting in new pages
    with run_lock(rd.root):  # one run per directory (a second gets exit 2 naming the holder)
        return SequentialRun(cfg, rd).run(resume=resume)


_Interrupt = Interrupt  # the shared mechanism (clrl.lifecycle); the old name kept for importers


class SequentialRun:
    """One sequential Atari run: its network, regularizer, counters and results."""

    def __init__(self, cfg: RLConfig, rd: RunDir) -> None:
        self.cfg = cfg
        self.rd = rd
        self.games = list(cfg.tasks.games)
        self.T = len(self.games)
        self.J = updates_per_task(cfg)
        self.batch = cfg.train.n_envs * cfg.train.n_steps
        self.device = resolve_device(cfg.device)
        self.deterministic = bool(cfg.train.deterministic)
        self.logger = setup_logging(rd)
        self.interrupt = _Interrupt(self.logger, what_happens=(
            # clrl.rl.schedule: the deterministic mode saves only where a resume is bit-exact
            "stopping after the current update; the last fixed-point checkpoint is kept, and the updates "
            "since it are trained again on resume, exactly as before"
            if self.deterministic else Interrupt.SAVING
        ))
        self.counters = Counters(next_eval=cfg.eval.every_steps)
        self.model: TaskPPO | None = None
        self.writer = None
        self._started: float | None = None
        self._wall_base = 0.0
        self.torch_threads = torch.get_num_threads()
        self.events = EventBus()  # task_start, update_end, evaluation, task_end, safe_point (clrl.events)
        self.analysis: RepresentationMonitor | None = None

    # ================================================================== setup

    def _build(self) -> None:
        cfg = self.cfg
        rd = self.rd
        rd.make()
        if cfg.train.torch_threads:
            torch.set_num_threads(cfg.train.torch_threads)
        self.torch_threads = torch.get_num_threads()
        seed_everything(cfg.seed, deterministic=self.deterministic)
        self.net: ActorCritic = build_actor_critic(
            cfg.model.channels, cfg.model.hidden, cfg.model.activation, in_channels=cfg.env.frame_stack,
            init=cfg.model.init,
        ).to(self.device)
        if cfg.train.vcl.gamma > 0:
            self.net.enable_vcl(cfg.train.vcl.gamma, cfg.train.vcl.n)
        self.reg: Regularizer = build_from_config(*rl_regularizer_hparams(cfg), self.net.trunk, self.net.actor,
                                                  cfg.model.activation)
        self.n_actions = [action_count(g, cfg.env) for g in self.games]
        # what happens around training subscribes to its events: logging, progress, checkpoints, analysis
        self.events.subscribe("update_end", lambda task, stats, seconds, **_: self._log_update(task, stats, seconds))
        self.display = RunProgress(self.games, self.batch, enabled=cfg.output.progress).attach(self.events)
        self.schedule = CheckpointSchedule(
            self._checkpoint, deterministic=self.deterministic, every_minutes=cfg.output.checkpoint_every_minutes,
            stop_requested=lambda: self.interrupt.requested is not None,
        ).attach(self.events)
        if cfg.eval.analysis:
            n = cfg.eval.analysis_probes
            self.analysis = RepresentationMonitor(
                self.net.trunk, lambda j, x: torch.as_tensor(x, device=self.device), self.net.features,
                rd.probes, tau=cfg.eval.analysis_tau, probe_size=n, regularizer=self.reg,
                current=lambda j: rollout_states(self.model, n) if self.model is not None else None,
                timings=lambda: self.results.timings, writer=lambda: self.writer, task_names=self.games,
                tasks_done=lambda: self.counters.task,
                every=cfg.eval.analysis_every,
                eval_index=lambda: len(self.results.curves) - 1,  # the point being reported
            ).attach(self.events)

    def _fresh_results(self) -> Results:
        res = new_results("rl", self.cfg.name, self.cfg.seed, config_to_dict(self.cfg), self.games)
        if self.cfg.reference:
            res.reference = reference_from_run(self.cfg.reference, self.games, config=config_to_dict(self.cfg))
        res.R_games = [[None] * self.T for _ in range(self.T)]
        res.R_ci = [[None] * self.T for _ in range(self.T)]
        res.timings = {
            "device": str(self.device),
            "updates_per_task": self.J,
            "steps_per_update": self.batch,
            "train_seconds": 0.0,
            "eval_seconds": 0.0,
            "consolidation_seconds": 0.0,
            "checkpoint_seconds": 0.0,
            "seconds_per_task": [],
            "train_seconds_per_task": [],
            "env_steps_per_task": [],
            "env_steps_per_s": None,
            "resumes": 0,
        }
        return res

    def _restore(self) -> bool:
        """Load the latest checkpoint if there is one; False if the run starts fresh."""
        path = self.rd.latest_checkpoint
        if not path.is_file():
            return False
        state = ckpt.read(path, map_location=None if self.device.type == "cuda" else "cpu")
        if self.deterministic and state.get("torch_threads"):
            self.torch_threads = int(state["torch_threads"])
            torch.set_num_threads(self.torch_threads)
        with restoring(path, "results"):
            saved = ckpt.results_of(state)
        check_same_experiment(saved.config, self.cfg, path)  # an edited config.yaml is refused
        with restoring(path, "network"):
            ckpt.restore_net(self.net, state, path)
        with restoring(path, "counters"):
            self.counters = Counters.from_dict(state["counters"])
        with restoring(path, "regularizer state"):
            try:
                self.reg.load_state_dict(state["regularizer"])
            except (ValueError, KeyError) as exc:
                raise CheckpointError(f"{path}: regularizer state does not match the config ({exc})") from exc
        c = self.counters
        if c.begun and c.task < self.T:
            self._start_model(c.task, env_seed_update=c.update)
            if state["optimizer"] is not None:
                with restoring(path, "optimizer state"):
                    self.model.policy.optimizer.load_state_dict(state["optimizer"])
            self.reg.begin_task(c.task, self.model.policy.optimizer)  # re-attaches the hooks
        with restoring(path, "RNG states"):
            set_rng_state(state["rng"])
        self.results = saved  # only now: a checkpoint refused above leaves results.json alone
        self.results.timings["resumes"] = int(self.results.timings.get("resumes", 0)) + 1
        self.results.status, self.results.reason = "running", None
        self.logger.info(
            "resumed from %s: task %d/%d (%s), update %d/%d, %d env steps",
            path, min(c.task, self.T - 1) + 1, self.T, self.games[min(c.task, self.T - 1)], c.update, self.J, c.global_steps,
        )
        return True

    # ================================================================== main loop

    def run(self, resume: bool = False) -> Results:
        done = resume_start(self.rd, self.cfg) if resume else None
        if done is not None:  # nothing to do: results.json stays as it is
            self.logger.info("resume: %s is already complete", self.rd.root)
            return done
        self.results = None  # until restored or created: a failure then leaves results.json alone
        with self.interrupt.installed(), failure_guard(self._fail, self._running, self.rd.root):
            try:
                self._build()
                resumed = self._restore() if resume else False
                if not resumed:
                    if resume:
                        self.logger.info("no checkpoint in %s: starting from the beginning", self.rd.root)
                    self.results = self._fresh_results()
                    self._save_results()  # from the start: a signal during start-up is recorded
                    if self.cfg.eval.baseline:
                        self._baseline()
                    # the initial state: a run killed early resumes from here
                    self.events.emit("safe_point", reason="start", task=0, step=0)
                self._honour_interrupt()  # a signal during start-up stops here, with a checkpoint
                self._open_writer()
                self._wall_base = float(self.results.timings.get("wall_seconds", 0.0))
                self._started = time.monotonic()
                with self.display.shown():
                    self._save_results()
                    while self.counters.task < self.T:
                        self._run_task(self.counters.task)
                self.results.status = "complete"
                self.results.reason = None
                self.results.metrics = compute_metrics(self.results)
                self._save_results()
                self.logger.info("run complete: %d tasks, %d env steps", self.T, self.counters.global_steps)
            finally:
                self._close()
        return self.results

    def _running(self) -> bool:
        return self.results is not None and self.results.status == "running"

    def _save_results(self) -> None:
        """Atomic rewrite of results.json, with the wall time of this run and earlier sessions."""
        if self._started is not None:
            self.results.timings["wall_seconds"] = self._wall_base + (time.monotonic() - self._started)
        save_results(self.rd.results_path, self.results)

    def _fail(self, reason: str) -> None:
        if self.results is None:  # failed before the run's results existed: results.json is untouched
            self.logger.error("run stopped before it started: %s", reason)
            return
        self.results.status = "failed"
        self.results.reason = reason
        self.logger.error("run stopped: %s", reason)
        try:
            self.results.metrics = compute_metrics(self.results)
        except Exception:  # noqa: BLE001 - metrics of a broken run are a nicety
            pass
        self._save_results()

    def _close(self) -> None:
        if self.model is not None:
            self.model.env.close()
            self.model = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    # ================================================================== one task

    def _start_model(self, t: int, env_seed_update: int) -> None:
        """Heads (if new), training envs and the task's PPO object with a fresh Adam."""
        if t not in self.net.actor:
            self.net.add_task(t, self.n_actions[t])
        env = make_vec_env(self.games[t], self.cfg.train.n_envs, self.cfg.env, self._env_seed(t, env_seed_update), train=True)
        if self.model is not None:
            self.model.env.close()
        self.model = TaskPPO(env, self.net, t, self.cfg.train, device=self.device)
        self.model.reset_envs(self._env_seed(t, env_seed_update))

    def _reseeds_at(self, update: int) -> bool:
        """Whether the training envs restart (re-seeded) before update ``update`` of a task: in the
        deterministic mode every ``checkpoint_every_updates``, so that a checkpoint taken there
        resumes bit for bit (the ``exact`` of those ``safe_point`` events)."""
        return self.deterministic and update % self.cfg.train.checkpoint_every_updates == 0

    def _env_seed(self, t: int, update: int) -> int:
        return derive_seed(self.cfg.seed, "train-env", t, update)

    def _run_task(self, t: int) -> None:
        c = self.counters
        game = self.games[t]
        if not c.begun:
            self._start_model(t, env_seed_update=0)
            self.reg.begin_task(t, self.model.policy.optimizer)
            c.begun, c.update = True, 0
            self.logger.info("task %d/%d: %s (%d actions), %d updates of %d steps", t + 1, self.T, game,
                             self.n_actions[t], self.J, self.batch)
        self.events.emit("task_start", task=t, step=c.global_steps, name=game, total=self.J, done=c.update)
        timings = self.results.timings
        task_started = time.monotonic()
        while c.update < self.J:
            if c.update > 0 and self._reseeds_at(c.update):
                self.model.reset_envs(self._env_seed(t, c.update))
            tick = time.monotonic()
            stats = self.model.update(progress_remaining=1.0 - c.update / self.J)
            self._check_finite(stats, t)
            train_s = time.monotonic() - tick
            c.update += 1
            c.updates_total += 1
            c.global_steps += self.batch
            self._add_time("train_seconds", train_s)
            self._add_task_time("train_seconds_per_task", t, train_s)
            self._add_task_count("env_steps_per_task", t, self.batch)
            timings["env_steps_per_s"] = sum(timings["env_steps_per_task"]) / max(timings["train_seconds"], 1e-9)
            self.events.emit("update_end", task=t, step=c.global_steps, stats=stats, seconds=train_s, update=c.update)
            if c.update == self.J:  # the task end follows at once, with its own safe point
                break
            if c.global_steps >= c.next_eval:
                self._evaluate(t, end_of_task=False)
            self.events.emit("safe_point", reason="update", task=t, step=c.global_steps, update=c.update,
                             exact=self._reseeds_at(c.update))
            self._honour_interrupt()
        self._add_task_time("seconds_per_task", t, time.monotonic() - task_started)
        self._finish_task(t)

    def _finish_task(self, t: int) -> None:
        c = self.counters
        tick = time.monotonic()
        batches = collect_states(self.model, self.cfg.train.consolidation_samples)
        net = self.net

        def forward(x: torch.Tensor) -> torch.Tensor:
            return net.logits(x, t)

        self.reg.end_task(t, batches, forward)
        self._check_params(t, "after end_task")
        consolidate_s = time.monotonic() - tick
        self._add_time("consolidation_seconds", consolidate_s)
        self._add_task_time("seconds_per_task", t, consolidate_s)
        self.events.emit("task_end", task=t, step=c.global_steps, inputs=batches)
        del batches
        diag = self.reg.diagnostics()
        diag["task"] = t
        diag["game"] = self.games[t]
        self.results.diagnostics.append(diag)
        self._log_diagnostics(t, diag)
        self.model.env.close()
        self.model = None
        tick = time.monotonic()
        self._evaluate(t, end_of_task=True)
        self._add_task_time("seconds_per_task", t, time.monotonic() - tick)
        self.logger.info("task %d/%d (%s) done: R[%d] = %s", t + 1, self.T, self.games[t], t, self.results.R[t][: t + 1])
        c.task, c.update, c.begun = t + 1, 0, False
        self.events.emit("safe_point", reason="task_end", task=t, step=c.global_steps)
        if c.task < self.T:  # after the last task the run is complete: a late signal changes nothing
            self._honour_interrupt()

    # ================================================================== evaluation

    def _play(self, net: ActorCritic, tag: Any, games: list[int]) -> list[EvalResult]:
        """Every game in ``games`` with its own head, all at once (:func:`evaluate_many`).

        Each game's actions and envs are seeded from (seed, game, ``tag``) alone, so its result
        does not depend on which other games are played beside it."""
        ev = self.cfg.eval
        jobs = []
        for j in games:
            gen = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "eval-act", j, tag))
            jobs.append(EvalJob(net.actor_fn(j, deterministic=ev.deterministic, generator=gen),
                                self.games[j], derive_seed(self.cfg.seed, "eval-env", j, tag)))
        was = net.training
        net.eval()  # once, here: the threads must not toggle the shared modules' mode
        try:
            # small-batch inference between emulator steps, as in a rollout: the rollout's threads
            with torch_threads(self.cfg.train.rollout_threads):
                return evaluate_many(jobs, self.cfg.env, episodes=ev.episodes, n_envs=ev.n_envs,
                                     max_frames=ev.max_frames)
        finally:
            net.train(was)

    def _evaluate(self, t: int, end_of_task: bool) -> None:
        """Score every game seen so far with its own head; a curve point (and R row at task end)."""
        c = self.counters
        ev = self.cfg.eval
        tick = time.monotonic()
        results = self._play(self.net, c.global_steps, list(range(t + 1)))
        scores = [float(r.mean) for r in results]
        games = [[GameRecord(**g) for g in r.games] for r in results]
        cis = [list(r.ci()) for r in results]
        if self.writer is not None:
            for j, r in enumerate(results):
                self.writer.add_scalar(f"eval/{self.games[j]}", r.mean, c.global_steps)
        seconds = time.monotonic() - tick
        self._add_time("eval_seconds", seconds)
        self.results.curves.append(CurvePoint(step=c.global_steps, task=t, scores=scores, wall_time=time.time(),
                                              games=games, ci=cis))
        if end_of_task:
            res = self.results
            if res.R_games is None or res.R_ci is None:  # a run begun before per-game records
                res.R_games = [[None] * self.T for _ in range(self.T)]
                res.R_ci = [[None] * self.T for _ in range(self.T)]
            for j, s in enumerate(scores):
                res.R[t][j] = s
                res.R_games[t][j] = games[j]
                res.R_ci[t][j] = cis[j]
        self.events.emit("evaluation", task=t, step=c.global_steps, point=self.results.curves[-1], end_of_task=end_of_task)
        c.evals += 1
        while c.next_eval <= c.global_steps:
            c.next_eval += ev.every_steps
        self.results.metrics = compute_metrics(self.results)
        self._save_results()
        text = ", ".join(f"{self.games[j]} {s:.1f}" for j, s in enumerate(scores))
        self.logger.info("eval at step %d (task %d%s, %.1fs): %s", c.global_steps, t,
                         ", end of task" if end_of_task else "", seconds, text)
        if self.writer is not None and self.results.reference is not None:
            curve = self.results.metrics.get("accumulated_normalized_reward") or []
            if curve and curve[-1] is not None:
                self.writer.add_scalar("eval/accumulated_normalized_reward", curve[-1], c.global_steps)

    def _baseline(self) -> None:
        """Scores of the untrained network on every game (fresh heads), before any training.

        Run on a copy under a forked RNG, so the run itself draws exactly the same numbers with
        or without it."""
        tick = time.monotonic()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.cfg.seed, "baseline"))
            untrained = copy.deepcopy(self.net)
            for j in range(self.T):
                untrained.add_task(j, self.n_actions[j])
            results = self._play(untrained, "baseline", list(range(self.T)))
        del untrained
        scores = [float(r.mean) for r in results]
        self.results.baseline = scores
        self.results.baseline_games = [[GameRecord(**g) for g in r.games] for r in results]
        self.results.baseline_ci = [list(r.ci()) for r in results]
        self._add_time("eval_seconds", time.monotonic() - tick)
        self.logger.info("untrained network: %s", ", ".join(f"{g} {s:.1f}" for g, s in zip(self.games, scores, strict=True)))

    # ================================================================== NaN guard

    def _check_finite(self, stats: dict[str, float], t: int) -> None:
        bad = [k for k in ("loss", "policy_loss", "value_loss") if k in stats and not math.isfinite(stats[k])]
        if bad:
            self._diverged(t, f"non-finite {', '.join(bad)}")
        self._check_params(t, "after the update")

    def _check_params(self, t: int, when: str) -> None:
        params = [p for p in self.net.parameters() if p.numel()]
        finite = torch.stack([torch.isfinite(p.detach()).all() for p in params]).all()
        if not bool(finite):
            names = [n for n, p in self.net.named_parameters() if p.numel() and not bool(torch.isfinite(p.detach()).all())]
            self._diverged(t, f"non-finite parameters {when} ({', '.join(names[:4])}{'...' if len(names) > 4 else ''})")

    def _diverged(self, t: int, what: str) -> None:
        c = self.counters
        kept = self.rd.latest_checkpoint if self.rd.latest_checkpoint.is_file() else None
        # after the task's last update the consolidation (end_task) is what ran
        at = f"update {c.update + 1}/{self.J}" if c.update < self.J else f"its consolidation after update {self.J}/{self.J}"
        raise TrainingDiverged(
            f"training diverged: {what} in task {t} ({self.games[t]}), {at}, "
            f"env step {c.global_steps}; "
            + (f"the last good checkpoint {kept} is kept" if kept else "no checkpoint was written")
            + " (lower train.learning_rate or train.max_grad_norm, or check the regularizer's lambda)"
        )

    # ================================================================== checkpoints

    def _checkpoint(self, task_file: int | None = None) -> None:
        tick = time.monotonic()
        state = ckpt.pack(
            net=self.net,
            optimizer=self.model.policy.optimizer if self.model is not None else None,
            regularizer_state=self.reg.state_dict(),
            counters=self.counters,
            results=self.results,
            rng=get_rng_state(),
            torch_threads=self.torch_threads,
        )
        ckpt.write(self.rd.latest_checkpoint, state)
        if task_file is not None:
            ckpt.write(self.rd.task_checkpoint(task_file), state)
        self._add_time("checkpoint_seconds", time.monotonic() - tick)
        c = self.counters
        self.logger.info("checkpoint: task %d, update %d, step %d", c.task, c.update, c.global_steps)

    def _honour_interrupt(self) -> None:
        """After a checkpoint: stop if a signal asked for it."""
        if self.interrupt.requested is None:
            return
        c = self.counters
        self._fail(f"interrupted ({self.interrupt.requested}) at env step {c.global_steps}; continue with "
                   f"`clrl run --resume {self.rd.root}`")
        raise KeyboardInterrupt(self.interrupt.requested)

    # ================================================================== bookkeeping

    def _add_time(self, key: str, seconds: float) -> None:
        self.results.timings[key] = float(self.results.timings.get(key, 0.0)) + float(seconds)

    def _add_task_time(self, key: str, t: int, seconds: float) -> None:
        values = self.results.timings.setdefault(key, [])
        while len(values) <= t:
            values.append(0.0)
        values[t] = float(values[t]) + float(seconds)

    def _add_task_count(self, key: str, t: int, n: int) -> None:
        values = self.results.timings.setdefault(key, [])
        while len(values) <= t:
            values.append(0)
        values[t] = int(values[t]) + int(n)

    # ================================================================== TensorBoard

    def _open_writer(self) -> None:
        if self.cfg.output.tensorboard:
            self.writer = event_writer(self.rd, self.counters.global_steps, self.logger)

    def _log_update(self, t: int, stats: dict[str, float], seconds: float) -> None:
        c = self.counters
        episodes = self.model.drain_episodes()
        if self.writer is None:
            return
        for key, value in stats.items():
            self.writer.add_scalar(f"train/{key}", value, c.global_steps)
        self.writer.add_scalar("train/env_steps_per_s", self.batch / max(seconds, 1e-9), c.global_steps)
        if episodes:
            returns = [e["r"] for e in episodes]
            self.writer.add_scalar(f"train_return/{self.games[t]}", float(np.mean(returns)), c.global_steps)
        self.writer.add_scalar("train/task", t, c.global_steps)

    def _log_diagnostics(self, t: int, diag: dict[str, Any]) -> None:
        overall = diag.get("overall") or {}
        parts = {k: overall.get(k) for k in ("sparsity", "used_capacity", "important_unmoved", "zero_groups")}
        self.logger.info("regularizer %s after task %d: %s", diag.get("method"), t, parts)
        if self.writer is None:
            return
        # at the task end's env step, like every other scalar: a resume's purge step then also
        # drops a killed session's diagnostics (by task index they would be shown twice)
        for tag, value in diagnostic_scalars(diag).items():
            self.writer.add_scalar(tag, value, self.counters.global_steps)
        self.writer.flush()
