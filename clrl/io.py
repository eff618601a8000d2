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
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from clrl.errors import CheckpointError, UserError, first_line


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


FALLBACK_ADVICE = (
    "to resume from the end of the last finished task instead, copy the newest checkpoints/task_XX.pt "
    "over checkpoints/latest.pt"
)


def _check_zip(path: Path) -> None:
    """Refuse a checkpoint whose bytes changed after writing: ``torch.load`` does not check the
    zip's CRC-32s, so a flipped bit inside a tensor or the pickle would load silently."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except zipfile.BadZipFile:
        return  # not a zip at all (a legacy or foreign file): torch.load says what it is
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is corrupt (its member {bad} fails its CRC check); {FALLBACK_ADVICE}")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``: a file that asks to run code is refused.

    Every way a damaged file can fail (a torn or foreign file, a flipped bit that the zip's
    CRC-32 catches, garbage the restricted unpickler trips on with KeyError or IndexError, an
    unreadable file) is a :class:`CheckpointError` naming the file, never a traceback."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        _check_zip(path)
        state = torch.load(path, map_location=map_location, weights_only=True)
    except CheckpointError:
        raise
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path} ({first_line(exc)})") from exc
    except Exception as exc:  # noqa: BLE001 - the unpickler fails on garbage in many ways
        # a hostile file lands here too: weights_only refuses it with an UnpicklingError
        # torch's own text can run to a paragraph of advice: its first sentence says what failed
        detail = first_line(exc).split(". ")[0].rstrip(".")
        raise CheckpointError(
            f"checkpoint {path} is corrupt, truncated or not a clrl checkpoint ({type(exc).__name__}: {detail}); "
            f"{FALLBACK_ADVICE}"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != "clrl.checkpoint":
        raise CheckpointError(f"{path} is not a clrl checkpoint (no 'format: clrl.checkpoint' marker)")
    return state


@contextmanager
def restoring(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Restore part ``what`` of a loaded checkpoint: a file that loads but holds the wrong things
    (a damaged results text, counters or RNG states of the wrong type, another run's layout) is a
    :class:`CheckpointError` naming the file, not a traceback. Errors that already explain
    themselves (:class:`clrl.errors.UserError`, such as an edited config) pass unchanged."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the damaged contents make fail
        raise CheckpointError(
            f"{path}: the checkpoint's {what} cannot be restored ({type(exc).__name__}: {first_line(exc)}); "
            f"{FALLBACK_ADVICE}"
        ) from exc


def check_finite_tensors(tensors: dict[str, Any], path: str | os.PathLike, what: str = "network") -> None:
    """Refuse a checkpoint whose weights hold NaN or inf: training from them cannot recover."""
    bad = [k for k, v in tensors.items() if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise CheckpointError(
            f"{path}: the {what} weights hold NaN or inf ({', '.join(bad[:3])}{more}); the checkpoint is "
            f"unusable: {FALLBACK_ADVICE}"
        )
