"""Run directories: where one run keeps its config, results, checkpoints, logs and figures.

``runs/<name>/`` (DESIGN.md, "Run directory")::

    config.yaml     the resolved config (every default filled in)
    results.json    rewritten atomically after every evaluation
    checkpoints/    latest.pt and task_XX.pt
    tb/             TensorBoard event files
    log.txt         the run's log
    figures/        the single-run report
    .lock           held (flock) while a run uses the directory
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from clrl.config import RLConfig, SupervisedConfig, dump_config, load_saved_config
from clrl.errors import UserError
from clrl.io import atomic_write_text


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def results_path(self) -> Path:
        return self.root / "results.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def latest_checkpoint(self) -> Path:
        return self.checkpoints / "latest.pt"

    def task_checkpoint(self, task: int) -> Path:
        return self.checkpoints / f"task_{task:02d}.pt"

    def task_checkpoints(self) -> dict[int, Path]:
        """The task-boundary checkpoints on disk, by task index, in task order."""
        if not self.checkpoints.is_dir():
            return {}
        found = {int(p.stem[5:]): p for p in self.checkpoints.glob("task_*.pt") if p.stem[5:].isdigit()}
        return dict(sorted(found.items()))

    @property
    def tb(self) -> Path:
        return self.root / "tb"

    @property
    def log_path(self) -> Path:
        return self.root / "log.txt"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def probes(self) -> Path:
        """The representation analysis's probe sets (:mod:`clrl.analysis.probes`)."""
        return self.root / "probes"

    def make(self) -> None:
        for folder in (self.root, self.checkpoints, self.figures):
            folder.mkdir(parents=True, exist_ok=True)


def _is_used(path: Path) -> bool:
    return path.exists() and any(path.iterdir()) if path.is_dir() else path.exists()


def prepare_run_dir(
    cfg: RLConfig | SupervisedConfig, out: str | os.PathLike | None = None, overwrite: bool = False
) -> RunDir:
    """Create the run directory and save the resolved config.

    Without ``out`` the run goes to ``<output.dir>/<name>``, or ``<name>-1``, ``-2``... if
    that is taken, so re-running a command never destroys an earlier run. An explicit
    ``out`` that already holds a run is refused unless ``overwrite``.
    """
    if out is not None:
        root = Path(out)
        if root.exists() and not root.is_dir():
            raise UserError(f"--out {root}: is a file, not a folder; give a folder for the run")
        if _is_used(root) and not overwrite:
            raise UserError(
                f"{root} already holds files; continue it with `clrl run --resume {root}`, "
                "or pass --overwrite to start over there"
            )
    else:
        base = Path(cfg.output.dir) / cfg.name
        root, n = base, 0
        while _is_used(root):
            n += 1
            root = base.with_name(f"{base.name}-{n}")
    rd = RunDir(root)
    try:
        if overwrite and rd.root.exists():
            with run_lock(rd.root):  # never delete the files of a run that is still going
                # everything the earlier run wrote: its TensorBoard events would otherwise mix
                # with the new run's, and its probe sets could be read back by a resume
                for stale in (rd.results_path, rd.latest_checkpoint, rd.log_path):
                    stale.unlink(missing_ok=True)
                for stale in rd.task_checkpoints().values():
                    stale.unlink()
                for folder in (rd.tb, rd.figures, rd.probes):
                    if folder.is_dir():
                        shutil.rmtree(folder)
        rd.make()
        atomic_write_text(rd.config_path, dump_config(cfg))
    except OSError as exc:
        raise UserError(f"cannot create the run directory {root}: {exc.strerror or exc} ({exc.filename or root})") from exc
    return rd


LOCK_FILE = ".lock"


@contextmanager
def folder_lock(root: str | os.PathLike, lock_file: str, what: str) -> Iterator[None]:
    """Hold the folder ``root`` for this process through ``root/lock_file``; a second holder gets
    a UserError naming the first (its pid and host, written into the lock file).

    ``flock`` is released by the kernel when the process ends, even on SIGKILL, so a killed
    process never leaves a stale lock. ``what`` names the holder in the message ("run", "sweep").
    """
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        f = open(root / lock_file, "a+")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise UserError(f"cannot use the {what} directory {root}: {exc.strerror or exc}") from exc
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise UserError(f"{root} is in use by another clrl {what} ({holder}); wait for it or stop it") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_lock(root: str | os.PathLike):  # noqa: ANN201 - a context manager
    """Hold the run directory ``root`` for this process (:func:`folder_lock`)."""
    return folder_lock(root, LOCK_FILE, "run")


def open_run_dir(path: str | os.PathLike) -> tuple[RunDir, RLConfig | SupervisedConfig]:
    """An existing run directory and its saved config, for ``--resume``."""
    rd = RunDir(Path(path))
    if not rd.config_path.is_file():
        raise UserError(f"{rd.root} is not a run directory (no config.yaml); nothing to resume")
    return rd, load_saved_config(rd.config_path)


def setup_logging(rd: RunDir, name: str = "clrl") -> logging.Logger:
    """A logger that writes to the run's log.txt (appending, so a resumed run keeps its history)."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler):
            logger.removeHandler(handler)
            handler.close()
    handler = logging.FileHandler(rd.log_path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    return logger
