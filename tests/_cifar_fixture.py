"""Tiny CIFAR-10 / CIFAR-100 "python version" folders for tests.

Files are dicts with byte-string keys (``b"data"`` uint8 (N, 3072), ``b"labels"`` /
``b"fine_labels"`` lists of ints, meta files with label names), as in the real archives.
``style="py3"`` writes them with plain ``pickle.dump``; ``style="py2"`` reproduces what the
original Python 2 files hold: byte strings as ``BINSTRING`` opcodes and numpy's globals under
``numpy.core.multiarray`` (the module name numpy 1.x and Python 2 wrote).
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler, so str/bytes writing can be replaced
    dispatch = pickle._Pickler.dispatch.copy()

    def _save_str8(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)

    dispatch[bytes] = _save_str8
    dispatch[str] = _save_str8


def dump(obj: object, path: Path, style: str = "py3") -> None:
    if style == "py3":
        with open(path, "wb") as f:
            pickle.dump(obj, f)
        return
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    data = buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    path.write_bytes(data)


def images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 (N, 3072) noise whose mean depends on the class (so a net can learn something)."""
    base = (np.asarray(labels) * 37 % 200 + 20).astype(np.int16)[:, None]
    noise = rng.integers(-20, 21, size=(len(labels), 3072))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _labels(n_classes: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(n_classes), per_class))


def write_cifar10(root: Path, train_per_class: int = 5, test_per_class: int = 2, style: str = "py3", seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` with five training batches, a test batch and batches.meta."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    y = _labels(10, train_per_class, rng)
    for i, part in enumerate(np.array_split(np.arange(len(y)), 5), start=1):
        d = {b"batch_label": b"training batch %d of 5" % i, b"labels": [int(v) for v in y[part]],
             b"data": images(y[part], rng), b"filenames": [b"img_%d.png" % j for j in part]}
        dump(d, folder / f"data_batch_{i}", style)
    yt = _labels(10, test_per_class, rng)
    dump({b"batch_label": b"testing batch 1 of 1", b"labels": [int(v) for v in yt], b"data": images(yt, rng),
          b"filenames": [b"t_%d.png" % j for j in range(len(yt))]}, folder / "test_batch", style)
    dump({b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_cases_per_batch": 10000, b"num_vis": 3072},
         folder / "batches.meta", style)
    return folder


def write_cifar100(root: Path, train_per_class: int = 5, test_per_class: int = 2, style: str = "py3", seed: int = 1) -> Path:
    """``root/cifar-100-python`` with train, test and meta (fine and coarse labels)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, per in (("train", train_per_class), ("test", test_per_class)):
        y = _labels(100, per, rng)
        d = {b"filenames": [b"f%d.png" % j for j in range(len(y))], b"batch_label": name.encode(),
             b"fine_labels": [int(v) for v in y], b"coarse_labels": [int(v) // 5 for v in y], b"data": images(y, rng)}
        dump(d, folder / name, style)
    dump({b"fine_label_names": [f"class{c:02d}".encode() for c in range(100)],
          b"coarse_label_names": [f"super{c:02d}".encode() for c in range(20)]}, folder / "meta", style)
    return folder
