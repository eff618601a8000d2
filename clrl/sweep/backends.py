"""Where trials run: in this process, in a process pool, or as Ray tasks.

Each backend only starts jobs and reports finished ones; :func:`clrl.sweep.runner.schedule`
decides what may start (references before the trials that need them). A backend's
``wait()`` blocks until at least one job has finished and returns ``(job, outcome)`` pairs,
with the outcome of :func:`clrl.sweep.trial.run_trial` (a crashed worker becomes a failed
outcome with ``crashed: True``, which the scheduler may start again: it resumes from the
trial's checkpoint).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import wait as mp_wait
from typing import Any

from clrl.errors import UserError, first_line
from clrl.sweep.trial import run_trial

Job = dict[str, Any]


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _crashed(job: Job, why: str) -> dict[str, Any]:
    return {"name": job["name"], "status": "failed", "reason": why, "crashed": True, "attempts": 1,
            "resumed": False, "skipped": False, "seconds": None, "acc": None}


GRACE_S = 10.0  # seconds a cancelled worker gets to stop on a Ctrl-C it received itself
STOP_S = 120.0  # seconds it then gets after our SIGINT (an RL run finishes its PPO update)


def _wait_exit(procs: list, timeout: float) -> list:
    """Wait up to ``timeout`` s for processes to exit (on their sentinels); return those still running."""
    deadline = time.monotonic() + timeout
    alive = list(procs)
    while alive:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        done = set(mp_wait([p.sentinel for p in alive], timeout=left))
        alive = [p for p in alive if p.sentinel not in done]
    return alive


class InlineBackend:
    """One trial at a time in this process (the default with one worker; easy to debug)."""

    slots = 1
    label = "local (in process)"

    def __init__(self) -> None:
        self._queue: list[Job] = []

    def submit(self, job: Job) -> None:
        self._queue.append(job)

    def wait(self) -> list[tuple[Job, dict]]:
        job = self._queue.pop(0)
        return [(job, run_trial(job))]

    def close(self, cancel: bool = False) -> None:
        self._queue.clear()


class PoolBackend:
    """``workers`` spawned processes (spawn: no forked torch/thread state) running one trial each."""

    def __init__(self, workers: int) -> None:
        self.slots = workers
        self.label = f"local ({workers} processes)"
        self._pool = self._new_pool()
        self._running: dict[Future, Job] = {}

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.slots, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, job: Job) -> None:
        self._running[self._pool.submit(run_trial, job)] = job

    def wait(self) -> list[tuple[Job, dict]]:
        done, _ = wait(list(self._running), return_when=FIRST_COMPLETED)
        finished, broken = [], False
        for future in done:
            job = self._running.pop(future)
            try:
                finished.append((job, future.result()))
            except BrokenProcessPool as exc:
                broken = True
                finished.append((job, _crashed(job, f"worker process died ({exc})")))
            except Exception as exc:  # noqa: BLE001 - e.g. an outcome that failed to pickle
                finished.append((job, _crashed(job, f"{type(exc).__name__}: {exc}")))
        if broken:  # every other job of the dead pool is lost too: report them, start a new pool
            for job in self._running.values():
                finished.append((job, _crashed(job, "worker pool broke while this trial ran")))
            self._running.clear()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
        return finished

    def close(self, cancel: bool = False) -> None:
        """Stop the pool; with ``cancel`` (Ctrl-C, an error) stop the running trials gracefully.

        A Ctrl-C in the terminal reaches the workers too (one process group), and the runners
        then save a checkpoint and stop. A worker still running after ``GRACE_S`` did not get
        it (the signal went to the driver alone), so it is sent SIGINT now; one that ignores
        that for ``STOP_S`` more is terminated (its last checkpoint remains).
        """
        if not cancel:
            self._pool.shutdown(wait=True)
            return
        procs = list((getattr(self._pool, "_processes", None) or {}).values())
        self._pool.shutdown(wait=False, cancel_futures=True)
        alive = _wait_exit(procs, GRACE_S)
        for proc in alive:
            try:
                os.kill(proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
        for proc in _wait_exit(alive, STOP_S):
            proc.terminate()


class RayBackend:
    """Ray tasks with per-trial CPU/GPU resources; Ray re-runs a task whose worker died.

    With ``address`` the driver joins an existing cluster (``auto``, or ``ray://host:10001``);
    without it a local Ray instance with ``num_cpus`` CPUs is started (and stopped at the end).
    Workers import clrl from their own Python environment: install it (``pip install -e .``)
    on every node. Trial folders must be on storage every node sees at the same path.
    """

    slots = 1 << 30  # Ray queues tasks by resources; the scheduler only holds back dependents

    def __init__(self, address: str | None, num_cpus: int | None, cpu: float, gpu: float) -> None:
        try:
            import ray
        except ImportError as exc:
            raise UserError(
                f"--backend ray needs Ray ({exc}); install it with `pip install -e .[ray]`, "
                "or run the sweep with --backend local"
            ) from None
        self._ray = ray
        self._owns = False
        if not ray.is_initialized():
            try:
                if address:
                    ray.init(address=address, log_to_driver=True)
                else:
                    # "local": a fresh instance, never a cluster someone else started on this host
                    ray.init(address="local", num_cpus=num_cpus or available_cpus(), include_dashboard=False)
            except ConnectionError as exc:
                raise UserError(f"could not reach the Ray cluster at {address!r}: {exc}") from None
            self._owns = True
        have = ray.cluster_resources()
        if gpu > 0 and have.get("GPU", 0) <= 0:
            if not address:
                self.close()
                raise UserError(
                    f"resources.gpu is {gpu} but this Ray instance has no GPU; set resources.gpu: 0 "
                    "(or --gpus-per-trial 0), or join a cluster with GPUs with --address"
                )
            print(f"clrl sweep: warning: the Ray cluster shows no GPU yet; trials asking for {gpu} GPU wait for one")
        if cpu > have.get("CPU", 0) and not address:
            self.close()
            raise UserError(f"resources.cpu is {cpu} but this Ray instance has {have.get('CPU', 0):g} CPUs")
        self.label = f"ray ({address or 'local'}: {have.get('CPU', 0):g} CPUs, {have.get('GPU', 0):g} GPUs)"
        # max_retries=0: a task whose worker process or node dies comes back as a RayError, and
        # the driver restarts it from its checkpoint out of the trial's one budget of retries
        # (errors inside a run are retried by run_trial out of the same budget). Ray's own
        # retries on top would multiply the two: (retries + 1)^2 starts for retries: 1.
        self._remote = ray.remote(num_cpus=cpu, num_gpus=gpu, max_retries=0)(run_trial)
        self._running: dict[Any, Job] = {}

    def submit(self, job: Job) -> None:
        self._running[self._remote.remote(job)] = job

    def wait(self) -> list[tuple[Job, dict]]:
        ray = self._ray
        ready, _ = ray.wait(list(self._running), num_returns=1)
        finished = []
        for ref in ready:
            job = self._running.pop(ref)
            try:
                finished.append((job, ray.get(ref)))
            except ray.exceptions.RayError as exc:  # its worker or node died (no Ray retries: see above)
                finished.append((job, _crashed(job, f"{type(exc).__name__}: {first_line(exc)}")))
        return finished

    def close(self, cancel: bool = False) -> None:
        if cancel and self._running:
            # not force: Ray raises KeyboardInterrupt in the task, the runner saves a checkpoint
            refs = list(self._running)
            for ref in refs:
                self._ray.cancel(ref, force=False)
            self._ray.wait(refs, num_returns=len(refs), timeout=STOP_S)
        self._running.clear()
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
