"""Read the CIFAR-10 / CIFAR-100 "python version" folders the user already has, safely.

The files are pickles written by Python 2 (dicts with byte-string keys holding numpy arrays).
``pickle.load`` would run any callable a file names, so they are read through
:class:`RestrictedUnpickler`, whose ``find_class`` hands out exactly the globals those files
reference -- ``numpy.core.multiarray._reconstruct`` (``numpy._core.multiarray._reconstruct``
when written by numpy 2), ``numpy.ndarray`` and ``numpy.dtype`` -- from a fixed table (no
import by name) and refuses anything else with a :class:`UnsafePickleError` naming the file
and the global *before* it can be called. Everything else in the files (dicts, lists, ints,
byte strings) is built by pickle opcodes that call no code. Object arrays are refused too. Arrays
are made only the way numpy's own pickles make them: ``_reconstruct(ndarray, (0,), ...)`` gives an
empty array that the next BUILD fills from the file's bytes, so no array outgrows the file;
``ndarray`` is handed out as a token for that argument (calling it, which would allocate an array
of any shape from a few bytes, is refused), and ``_reconstruct`` of any other shape is refused.

Deliberately not allowed (so a re-pickled file may be refused): ``numpy._core.numeric._frombuffer``
(protocol-5 pickles of numpy 2 arrays), ``_codecs.encode`` (protocol-2 pickles of ``bytes``
written by Python 3) and numpy scalars. The original files from the CIFAR page need none of them.

Layouts (``root`` may be the parent folder or the dataset folder itself)::

    cifar-10-batches-py/  data_batch_1 .. data_batch_5, test_batch, batches.meta
    cifar-100-python/     train, test, meta
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clrl.errors import UserError

__all__ = [
    "CIFAR10_FILES",
    "CIFAR100_FILES",
    "CifarSplit",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "find_cifar_folder",
    "load_cifar10",
    "load_cifar100",
    "safe_load_pickle",
]

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
CIFAR100_FILES = ("train", "test", "meta")
_ARCHIVES = {CIFAR10_DIR: "cifar-10-python.tar.gz", CIFAR100_DIR: "cifar-100-python.tar.gz"}


class UnsafePickleError(UserError):
    """A data file asked the unpickler for a global outside the allow-list."""


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """(module, name) -> object, for exactly what CIFAR's numpy pickles reference."""
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class _ArrayType:
    """What the unpickler hands out for ``numpy.ndarray``: numpy's pickles only pass it to
    ``_reconstruct`` as the type of the array to make. Calling it would build an array of any
    shape (gigabytes of ``None`` for an object dtype) from a 30-byte file, so it is refused."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsafePickleError(
            f"{self.source}: refused to call numpy.ndarray (nothing was built); CIFAR files only name it "
            "as the type of an array they fill from their own bytes"
        )


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds plain containers and numpy arrays and calls nothing else.

    ``source`` names the file in error messages.
    """

    ALLOWED = _allowed_globals()

    def __init__(self, file: io.BufferedIOBase, source: str = "<pickle>") -> None:
        super().__init__(file, encoding="bytes")
        self.source = source
        self._array_type = _ArrayType(source)

    def _reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        """numpy's ``_reconstruct`` for exactly what numpy's pickles ask (``(ndarray, (0,), 'b')``,
        an empty array the next BUILD fills from the file), so no array is larger than the file."""
        if subtype is not self._array_type or not isinstance(shape, tuple) or shape != (0,):
            raise UnsafePickleError(
                f"{self.source}: refused numpy's _reconstruct of {type(subtype).__name__} with shape "
                f"{str(shape)[:40]} (nothing was built); numpy's own pickles ask for an empty ndarray of shape (0,)"
            )
        return self.ALLOWED[("numpy._core.multiarray", "_reconstruct")](np.ndarray, shape, dtype)

    def find_class(self, module: str, name: str) -> Any:
        try:
            found = self.ALLOWED[(module, name)]
            if found is np.ndarray:
                return self._array_type
            if found is self.ALLOWED[("numpy._core.multiarray", "_reconstruct")]:
                return self._reconstruct
            return found
        except KeyError:
            allowed = ", ".join(f"{m}.{n}" for m, n in self.ALLOWED)
            raise UnsafePickleError(
                f"{self.source}: refused to unpickle global '{module}.{name}' (nothing was run); "
                f"CIFAR data files only need {allowed}. Is this file really from {CIFAR_URL}?"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: refused a persistent id in the pickle (nothing was run)")


MAX_FILE_BYTES = 1 << 30  # the largest original file (cifar-100-python/train) is about 155 MB
MAX_DEPTH = 8  # the original files nest 2 deep (a dict of arrays and lists)
MAX_ITEMS = 10_000_000  # values in all containers, counting each shared container once


def safe_load_pickle(path: str | os.PathLike) -> Any:
    """Unpickle one CIFAR file through :class:`RestrictedUnpickler`; refuse object arrays.

    Bounded, so a hostile file is refused at once instead of hanging or overflowing the stack:
    the file size, then the nesting depth and number of values of what it built."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if size > MAX_FILE_BYTES:
        raise UserError(f"{path}: {size:,} bytes, larger than any CIFAR file ({MAX_FILE_BYTES:,} at most); is it a CIFAR python-version file?")
    try:
        with path.open("rb") as f:
            data = RestrictedUnpickler(f, source=str(path)).load()
    except UserError:
        raise
    except OSError as exc:  # stat passed, open or read failed (permissions, an I/O error)
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            RecursionError, MemoryError, OverflowError) as exc:
        raise UserError(f"{path}: not a readable CIFAR pickle ({type(exc).__name__}: {str(exc)[:200]}); re-extract it from {CIFAR_URL}") from exc
    _check_structure(data, path)
    return data


def _check_structure(data: Any, path: Path) -> None:
    """Walk what the pickle built once (iteratively, each shared container once): refuse object
    arrays, a container that contains itself, nesting deeper than MAX_DEPTH and more than
    MAX_ITEMS values."""
    done: set[int] = set()
    on_path: set[int] = set()
    stack: list[tuple[Any, int, bool]] = [(data, 0, False)]
    items = 0
    while stack:
        obj, depth, leaving = stack.pop()
        if leaving:
            on_path.discard(id(obj))
            done.add(id(obj))
            continue
        if isinstance(obj, np.ndarray):
            if obj.dtype.hasobject:
                raise UnsafePickleError(f"{path}: holds an object array; CIFAR files hold only numeric arrays")
            continue
        if not isinstance(obj, (dict, list, tuple)) or id(obj) in done:
            continue
        if id(obj) in on_path:
            raise UnsafePickleError(f"{path}: a container that contains itself; CIFAR files hold plain dicts and lists")
        if depth >= MAX_DEPTH:
            raise UnsafePickleError(f"{path}: containers nested more than {MAX_DEPTH} deep; CIFAR files nest 2 deep")
        children = list(obj.values()) if isinstance(obj, dict) else obj
        items += len(children)
        if items > MAX_ITEMS:
            raise UnsafePickleError(f"{path}: holds more than {MAX_ITEMS:,} values; no CIFAR file does")
        on_path.add(id(obj))
        stack.append((obj, depth, True))
        stack.extend((child, depth + 1, False) for child in children)


# --------------------------------------------------------------------------- folders


def find_cifar_folder(root: str | os.PathLike, folder: str, files: tuple[str, ...]) -> Path:
    """The dataset folder: ``root/folder`` or ``root`` itself; a clear error listing what is missing."""
    root = Path(root).expanduser()
    candidates = [root / folder, root] if root.name != folder else [root]
    for cand in candidates:
        if cand.is_dir() and all((cand / f).is_file() for f in files):
            return cand
    best = next((c for c in candidates if c.is_dir() and any((c / f).is_file() for f in files)), None)
    if best is not None:
        missing = [f for f in files if not (best / f).is_file()]
        raise UserError(
            f"{best}: incomplete CIFAR folder, missing {', '.join(missing)}; "
            f"re-extract {_ARCHIVES[folder]} (python version) from {CIFAR_URL}"
        )
    where = " or ".join(str(c) for c in candidates)
    raise UserError(
        f"CIFAR data not found: expected {where} holding {', '.join(files)}. Download the "
        f"python version ({_ARCHIVES[folder]}) from {CIFAR_URL}, extract it, and point tasks.root at "
        f"the folder that holds {folder}/ (e.g. --set tasks.root=/data/cifar); nothing is downloaded at run time"
    )


def _key(d: dict, name: str, path: Path) -> Any:
    """``d[b"name"]`` (the original files) or ``d["name"]`` (files re-pickled under Python 3)."""
    if not isinstance(d, dict):
        raise UserError(f"{path}: expected a pickled dict, got {type(d).__name__}")
    for k in (name.encode(), name):
        if k in d:
            return d[k]
    keys = ", ".join(k.decode("latin1") if isinstance(k, bytes) else str(k) for k in d)
    raise UserError(f"{path}: no '{name}' entry (has: {keys}); is this a CIFAR python-version file?")


def _images(d: dict, path: Path) -> np.ndarray:
    data = np.asarray(_key(d, "data", path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UserError(f"{path}: 'data' should be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    return data.reshape(-1, 3, 32, 32)


def _labels(d: dict, name: str, path: Path, n: int, n_classes: int) -> np.ndarray:
    labels = np.asarray(_key(d, name, path))
    if labels.ndim != 1 or labels.shape[0] != n or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{path}: '{name}' should be {n} integer labels, got {labels.dtype} {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= n_classes):
        raise UserError(f"{path}: '{name}' outside 0..{n_classes - 1}")
    return labels.astype(np.int64)


def _names(meta: dict, name: str, path: Path, n_classes: int) -> list[str]:
    listed = _key(meta, name, path)
    if not isinstance(listed, (list, tuple)):
        raise UserError(f"{path}: '{name}' should be a list of {n_classes} class names, got {type(listed).__name__}")
    names = [v.decode("latin1") if isinstance(v, bytes) else str(v) for v in listed]
    if len(names) != n_classes:
        raise UserError(f"{path}: '{name}' should list {n_classes} classes, got {len(names)}")
    return names


@dataclass
class CifarSplit:
    """Images as uint8 ``(N, 3, 32, 32)``, integer labels, class names."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]


def load_cifar10(root: str | os.PathLike) -> CifarSplit:
    """The five training batches, the test batch and the label names of CIFAR-10."""
    folder = find_cifar_folder(root, CIFAR10_DIR, CIFAR10_FILES)
    xs, ys = [], []
    for f in CIFAR10_FILES[:5] + ("test_batch",):
        d = safe_load_pickle(folder / f)
        x = _images(d, folder / f)
        xs.append(x)
        ys.append(_labels(d, "labels", folder / f, len(x), 10))
    names = _names(safe_load_pickle(folder / "batches.meta"), "label_names", folder / "batches.meta", 10)
    return CifarSplit(np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5], names)


def load_cifar100(root: str | os.PathLike) -> CifarSplit:
    """CIFAR-100 train/test with the 100 fine labels and their names."""
    folder = find_cifar_folder(root, CIFAR100_DIR, CIFAR100_FILES)
    out = []
    for f in ("train", "test"):
        d = safe_load_pickle(folder / f)
        x = _images(d, folder / f)
        out += [x, _labels(d, "fine_labels", folder / f, len(x), 100)]
    names = _names(safe_load_pickle(folder / "meta"), "fine_label_names", folder / "meta", 100)
    return CifarSplit(*out, names)
