"""Run directories: where one run keeps its config, results, checkpoints, logs and figures.

``runs/<name>/`` (DESIGN.md, "Run directory")::

    config.yaml     the resolved config (every default filled in)
    results.json    rewritten atomically after every evaluation
    checkpoints/    latest.pt and task_XX.pt
    tb/             TensorBoard event files
    log.txt         the run's log
    figures/        the single-run report
"""

from __future__ import annotations

import logging
import os
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

    @property
    def tb(self) -> Path:
        return self.root / "tb"

    @property
    def log_path(self) -> Path:
        return self.root / "log.txt"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

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
    if overwrite and rd.root.exists():
        for stale in (rd.results_path, rd.latest_checkpoint):
            stale.unlink(missing_ok=True)
        for stale in rd.checkpoints.glob("task_*.pt") if rd.checkpoints.exists() else []:
            stale.unlink()
    rd.make()
    atomic_write_text(rd.config_path, dump_config(cfg))
    return rd


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
