"""How a run stops: signals, failures and exit codes, one mechanism for both front ends.

``clrl run`` (RL runner and supervised trainer alike) exits with

* 0 -- the run is complete (also a ``--resume`` of a complete run, which changes nothing);
* 1 -- an internal error (a bug): traceback on stderr, ``results.json`` marked ``failed``;
* 2 -- bad input (config, paths, checkpoints, a run directory in use, a full disk): one line on
  stderr, nothing lost (a full disk also marks the run ``failed`` when it still can);
* 3 -- the training diverged (non-finite loss or parameters): the cause on stderr, the run
  marked ``failed`` with it, the last good checkpoint kept;
* 130 -- interrupted (SIGINT or SIGTERM): the run marked ``failed`` with reason ``interrupted``
  and a checkpoint to resume from.

:class:`Interrupt` turns SIGINT/SIGTERM into a flag the RL runner checks between PPO updates
(it can checkpoint there); the supervised trainer checkpoints at task ends only, so it asks
for ``immediate`` and stops at once, keeping the checkpoint of the last finished task.
:func:`failure_guard` records every way out of a run in ``results.json``.
"""

from __future__ import annotations

import errno
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from clrl.errors import CheckpointError, TrainingDiverged, UserError, short_repr

if TYPE_CHECKING:
    from clrl.config import RLConfig, SupervisedConfig
    from clrl.results import Results
    from clrl.rundir import RunDir

__all__ = [
    "ALLOWED_ON_RESUME",
    "EXIT_BAD_INPUT",
    "EXIT_DIVERGED",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "Interrupt",
    "check_same_experiment",
    "event_writer",
    "exit_code",
    "failure_guard",
    "finished_run",
    "resume_start",
    "resume_without_checkpoint",
]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130

DIVERGED = "training diverged"
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class Interrupt:
    """SIGINT/SIGTERM -> a flag checked at the run's next safe point; a second signal stops at once.

    With ``immediate`` the first signal already stops (raises ``KeyboardInterrupt``): for a
    front end whose only safe points are the checkpoints it has already written.
    """

    SAVING = "saving a checkpoint after the current update"

    def __init__(self, logger: logging.Logger, immediate: bool = False, what_happens: str = SAVING) -> None:
        self.requested: str | None = None
        self.logger = logger
        self.immediate = immediate
        self.what_happens = what_happens  # what the run does at its next safe point (printed on a signal)

    def handler(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None or self.immediate:
            self.requested = self.requested or name
            raise KeyboardInterrupt(name if self.immediate else f"{name} (second signal)")
        self.requested = name
        msg = f"{name}: {self.what_happens} (send it again to stop at once)"
        self.logger.warning(msg)
        print(f"\nclrl: {msg}", file=sys.stderr, flush=True)

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, self.handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def diverged_reason(exc: BaseException) -> str:
    text = str(exc)
    return text if text.startswith(DIVERGED) else f"{DIVERGED}: {text}"


@contextmanager
def failure_guard(fail: Callable[[str], None], running: Callable[[], bool], root: Any) -> Iterator[None]:
    """Record in results.json how a run ended when it did not complete.

    ``fail(reason)`` marks the run failed and saves results.json; ``running()`` says whether it
    is still marked running (an interrupt honoured at a checkpoint has marked it already).
    Divergence is recorded and printed, then swallowed (the front end returns its results, see
    :func:`exit_code`); an interrupt is re-raised; a full disk becomes a :class:`UserError`.
    """
    hint = f"continue with `clrl run --resume {root}`"
    try:
        yield
    except TrainingDiverged as exc:
        reason = diverged_reason(exc)
        fail(reason)
        print(f"clrl: error: {reason}", file=sys.stderr, flush=True)
    except KeyboardInterrupt as exc:
        if running():
            why = str(exc) or "KeyboardInterrupt"
            fail(f"interrupted ({why}); the last checkpoint is kept: {hint}")
        raise
    except OSError as exc:
        if exc.errno not in _DISK_FULL:
            if running():
                fail(f"{type(exc).__name__}: {exc}")
            raise
        msg = f"disk full writing {exc.filename or 'a file'} ({exc.strerror}); the run is marked failed: free space, then {hint}"
        try:
            fail(msg)
        except OSError:
            msg = f"disk full writing {exc.filename or 'a file'} ({exc.strerror}); results.json could not be updated either: free space, then {hint}"
        raise UserError(msg) from exc
    except BaseException as exc:
        if running():
            fail(f"{type(exc).__name__}: {exc}")
        raise


def exit_code(results: Results) -> int:
    """0 for a complete run, 3 for a diverged one, 1 otherwise (see the module docstring)."""
    if results.status == "complete":
        return EXIT_OK
    if results.status == "failed" and (results.reason or "").startswith(DIVERGED):
        return EXIT_DIVERGED
    return EXIT_INTERNAL


# --------------------------------------------------------------------------- resume


def finished_run(rd: RunDir, cfg: Any) -> Results | None:
    """``--resume`` of a complete run: its results as they are, nothing rewritten (None when the
    run is not complete). An edited ``config.yaml`` is refused, as in any resume."""
    from clrl.errors import ResultsError
    from clrl.results import load_results

    if not rd.results_path.is_file():
        return None
    try:
        res = load_results(rd.results_path)
    except ResultsError as exc:
        if not rd.latest_checkpoint.is_file():
            raise
        # the checkpoint holds the results up to it: say how to go on from there
        raise ResultsError(f"{exc}; {rd.latest_checkpoint} holds the results up to its checkpoint: move "
                           f"{rd.results_path} aside (e.g. to results.json.damaged) and resume again") from exc
    if res.status != "complete":
        return None
    check_same_experiment(res.config, cfg, rd.results_path)
    return res


def resume_start(rd: RunDir, cfg: Any) -> Results | None:
    """Start of ``--resume`` in both front ends: a complete run's results (nothing to do: the
    caller returns them), else None to go on; an unfinished run with scores but no checkpoint is
    refused (:func:`resume_without_checkpoint`)."""
    done = finished_run(rd, cfg)
    if done is None and not rd.latest_checkpoint.is_file():
        resume_without_checkpoint(rd)
    return done


def resume_without_checkpoint(rd: RunDir) -> None:
    """``--resume`` of an unfinished run directory that has no checkpoint: never destroy results.

    A results.json that holds any score (R entries or curve points) is refused, because training
    again would overwrite it; otherwise (nothing recorded yet) the run may start from the
    beginning. A complete run is :func:`finished_run`'s case, checked before.
    """
    from clrl.results import load_results

    if not rd.results_path.is_file():
        return None
    res = load_results(rd.results_path)
    scored = sum(v is not None for row in res.R for v in row)
    if scored or res.curves:
        task_files = rd.task_checkpoints()
        last = max(task_files, default=None)
        way_on = (
            f"to resume from the end of its task {last + 1}, copy {task_files[last]} to "
            f"{rd.latest_checkpoint} (the work after it is done again)"
            if last is not None
            else "restore the checkpoints"
        )
        raise CheckpointError(
            f"{rd.root}: results.json holds {res.tasks_done()} finished tasks and {len(res.curves)} evaluations, "
            f"but {rd.latest_checkpoint} is missing, so the run cannot continue without overwriting them; "
            f"{way_on}, or start over elsewhere (`clrl run CONFIG --out NEW_DIR`)"
        )
    return None


# Keys that may change between a checkpoint and its resume: they do not change the experiment.
# ``reference`` is read once, when a run starts; a resumed run keeps the scores it stored (and a
# sweep folder that was moved names its reference trial by another path).
ALLOWED_ON_RESUME = ("output", "device", "reference", "train.torch_threads", "env.num_threads",
                     "env.emulator_nice")

_MISSING = object()


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _allowed(key: str) -> bool:
    return any(key == a or key.startswith(a + ".") for a in ALLOWED_ON_RESUME)


def check_same_experiment(saved: dict[str, Any], cfg: RLConfig | SupervisedConfig, source: Any,
                          advice: str | None = None) -> None:
    """Refuse to resume ``source`` (a checkpoint) under a config that defines another experiment.

    ``saved`` is the resolved config the checkpoint was made with (its results' ``config``);
    every key but :data:`ALLOWED_ON_RESUME` must be unchanged. The first differing key is named;
    ``advice`` replaces the resume's way on (``clrl eval`` checks a checkpoint belongs to its run).
    """
    from clrl.config import config_from_dict, config_to_dict

    try:  # fill in keys a newer clrl added, so only real edits count
        saved = config_to_dict(config_from_dict(json.loads(json.dumps(saved)), source=str(source)))
    except UserError:
        pass
    old, new = _flat(saved), _flat(config_to_dict(cfg))
    changed = [k for k in sorted(set(old) | set(new)) if not _allowed(k) and old.get(k, _MISSING) != new.get(k, _MISSING)]
    if changed:
        key = changed[0]
        more = f" (and {len(changed) - 1} more: {', '.join(changed[1:4])}{'...' if len(changed) > 4 else ''})" if len(changed) > 1 else ""
        advice = advice or (f"a resumed run must be the same experiment (only {', '.join(ALLOWED_ON_RESUME)} may "
                            "change): undo the edit, or start a new run")
        raise CheckpointError(
            f"{source}: config.yaml was changed since this checkpoint was made: {key} was "
            f"{short_repr(old.get(key, '(absent)'))}, now {short_repr(new.get(key, '(absent)'))}{more}; {advice}"
        )


def event_writer(rd: RunDir, checkpoint_step: int, log: logging.Logger) -> Any:
    """The run's TensorBoard writer (None when tensorboard cannot be imported: a broken install
    must not stop a run).

    A resumed run logs again what its stopped session logged after the restored checkpoint;
    TensorBoard hides events at steps >= ``purge_step``, so the purge starts right after the
    checkpoint's step (``checkpoint_step``, on the run's own step axis; 0 from the start): what
    was logged at that step came before the checkpoint and stays."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        log.warning("tensorboard unavailable (%s); no event files written", exc)
        return None
    return SummaryWriter(log_dir=str(rd.tb), purge_step=int(checkpoint_step) + 1)
