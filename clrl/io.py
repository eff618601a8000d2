"""Atomic file writes and safe checkpoint loading.

A crash (even SIGKILL) at any moment leaves either the old file or the new one,
never a torn one: we write a temporary file in the same folder, fsync it, and
rename it over the target (rename is atomic on POSIX within one file system).
The file gets the mode a plain ``open(path, "w")`` would give (0666 less the umask),
not ``mkstemp``'s private 0600, so a shared run or sweep folder stays readable.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from clrl.errors import CheckpointError, first_line


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    """The process umask (read by setting it and putting it back: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """``torch.save`` through an atomic write. ``state`` must hold only tensors and plain values."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``: a file that asks to run code is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a clrl checkpoint ({first_line(exc)}); "
            "delete it to fall back to an earlier one"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != "clrl.checkpoint":
        raise CheckpointError(f"{path} is not a clrl checkpoint (no 'format: clrl.checkpoint' marker)")
    return state


def check_finite_tensors(tensors: dict[str, Any], path: str | os.PathLike, what: str = "network") -> None:
    """Refuse a checkpoint whose weights hold NaN or inf: training from them cannot recover."""
    bad = [k for k, v in tensors.items() if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise CheckpointError(
            f"{path}: the {what} weights hold NaN or inf ({', '.join(bad[:3])}{more}); the checkpoint is "
            "unusable: delete it to fall back to an earlier one (checkpoints/task_XX.pt)"
        )
