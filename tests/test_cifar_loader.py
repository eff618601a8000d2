"""CIFAR loaders on tiny folders in the real layout; the restricted unpickler; clear errors."""

from __future__ import annotations

import os
import pickle
import pickletools
from pathlib import Path

import numpy as np
import pytest
from _cifar_fixture import CIFAR10_NAMES, dump, write_cifar10, write_cifar100

from clrl.errors import UserError
from clrl.supervised.cifar import UnsafePickleError, load_cifar10, load_cifar100, safe_load_pickle


def _globals(path: Path) -> set[str]:
    ops = list(pickletools.genops(path.read_bytes()))
    out = set()
    for i, (op, arg, _) in enumerate(ops):
        if op.name == "GLOBAL":
            out.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            out.add(f"{ops[i - 2][1]}.{ops[i - 1][1]}")
    return out


@pytest.mark.parametrize("style", ["py3", "py2"])
def test_cifar10_loads_the_batches_in_order(tmp_path, style):
    folder = write_cifar10(tmp_path, train_per_class=4, test_per_class=2, style=style)
    if style == "py2":  # what the original files reference
        assert _globals(folder / "data_batch_1") == {"numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype"}
    data = load_cifar10(tmp_path)
    assert data.x_train.shape == (40, 3, 32, 32) and data.x_train.dtype == np.uint8
    assert data.x_test.shape == (20, 3, 32, 32)
    assert data.class_names == CIFAR10_NAMES
    # independent read of the same files with plain pickle (trusted here: we wrote them)
    ys, xs = [], []
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "rb") as f:
            d = pickle.load(f, encoding="bytes")
        ys += d[b"labels"]
        xs.append(d[b"data"])
    assert data.y_train.tolist() == ys
    assert np.array_equal(data.x_train.reshape(40, -1), np.concatenate(xs))
    assert sorted(np.bincount(data.y_train).tolist()) == [4] * 10


def test_cifar100_loads_fine_labels_and_names(tmp_path):
    folder = write_cifar100(tmp_path, train_per_class=2, test_per_class=1)
    data = load_cifar100(tmp_path)
    with open(folder / "train", "rb") as f:
        d = pickle.load(f, encoding="bytes")
    assert data.y_train.tolist() == d[b"fine_labels"]
    assert np.array_equal(data.x_train[3].reshape(-1), d[b"data"][3])
    assert data.x_train.shape == (200, 3, 32, 32) and data.x_test.shape == (100, 3, 32, 32)
    assert data.class_names[7] == "class07"


def test_root_may_be_the_dataset_folder_itself(tmp_path):
    folder = write_cifar100(tmp_path, train_per_class=1, test_per_class=1)
    assert len(load_cifar100(folder).y_train) == 100
    folder10 = write_cifar10(tmp_path, train_per_class=1, test_per_class=1)
    assert len(load_cifar10(folder10).y_train) == 10


def test_missing_folder_names_the_expected_paths_and_the_source(tmp_path):
    with pytest.raises(UserError) as err:
        load_cifar100(tmp_path / "nowhere")
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / "cifar-100-python") in msg
    assert "train, test, meta" in msg and "cifar-100-python.tar.gz" in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in msg and "tasks.root" in msg
    with pytest.raises(UserError, match=r"data_batch_1, .*test_batch, batches.meta"):
        load_cifar10(tmp_path)


def test_incomplete_folder_names_the_missing_file(tmp_path):
    folder = write_cifar10(tmp_path, train_per_class=1, test_per_class=1)
    (folder / "data_batch_3").unlink()
    with pytest.raises(UserError, match=r"incomplete CIFAR folder, missing data_batch_3"):
        load_cifar10(tmp_path)


class _Payload:
    """Unpickling this runs ``os.system("touch <marker>")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_refused_without_running(tmp_path):
    folder = write_cifar10(tmp_path, train_per_class=1, test_per_class=1)
    marker = tmp_path / "pwned"
    hostile = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"x": _Payload(marker)}
    dump(hostile, folder / "data_batch_2")
    with pytest.raises(UnsafePickleError) as err:
        load_cifar10(tmp_path)
    msg = str(err.value)
    assert str(folder / "data_batch_2") in msg
    assert "posix.system" in msg and "nothing was run" in msg
    assert not marker.exists()
    # the payload is live: plain pickle would have run it (so the check above can fail)
    with open(folder / "data_batch_2", "rb") as f:
        pickle.load(f)
    assert marker.exists()


@pytest.mark.parametrize(
    ("obj", "refused"),
    [
        (np.int64(3), "numpy._core.multiarray.scalar"),  # numpy scalars are not in CIFAR files
        (bytearray(b"x"), "builtins.bytearray"),
    ],
)
def test_any_other_global_is_refused(tmp_path, obj, refused):
    path = tmp_path / "f"
    dump({b"a": obj}, path)
    with pytest.raises(UnsafePickleError, match=refused.replace(".", r"\.")):
        safe_load_pickle(path)


def test_protocol5_numpy_pickles_are_refused_by_name(tmp_path):
    path = tmp_path / "p5"
    path.write_bytes(pickle.dumps({b"data": np.zeros(3, np.uint8)}, protocol=5))
    with pytest.raises(UnsafePickleError, match=r"_frombuffer"):
        safe_load_pickle(path)


def test_object_arrays_are_refused(tmp_path):
    path = tmp_path / "obj"
    dump({b"data": np.array([1, "a"], dtype=object)}, path)
    with pytest.raises(UnsafePickleError, match="object array"):
        safe_load_pickle(path)


def test_truncated_file_gives_a_user_error(tmp_path):
    folder = write_cifar100(tmp_path, train_per_class=1, test_per_class=1)
    data = (folder / "test").read_bytes()
    (folder / "test").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"test: not a readable CIFAR pickle"):
        load_cifar100(tmp_path)


def test_wrong_content_gives_a_user_error(tmp_path):
    folder = write_cifar100(tmp_path, train_per_class=1, test_per_class=1)
    dump({b"data": np.zeros((2, 10), np.uint8), b"fine_labels": [0, 1]}, folder / "train")
    with pytest.raises(UserError, match=r"'data' should be uint8 of shape \(N, 3072\)"):
        load_cifar100(tmp_path)


@pytest.mark.parametrize("value", [5, None, b"airplane"])
def test_class_names_that_are_not_a_list_give_a_user_error(tmp_path, value):
    folder = write_cifar10(tmp_path, train_per_class=1, test_per_class=1)
    dump({b"label_names": value}, folder / "batches.meta")
    with pytest.raises(UserError, match=r"batches.meta: 'label_names' should be a list of 10 class names"):
        load_cifar10(tmp_path)


def test_a_file_that_cannot_be_opened_is_a_user_error(tmp_path, monkeypatch):
    folder = write_cifar100(tmp_path, train_per_class=1, test_per_class=1)
    real_open = Path.open

    def denied(self, *args, **kwargs):  # what a file without read permission gives (root reads any file)
        if self.name == "train":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(UserError, match=r"train: cannot read \(Permission denied\)"):
        load_cifar100(folder)


def _int4(n: int) -> bytes:
    return b"J" + n.to_bytes(4, "little", signed=True)


@pytest.mark.parametrize("dtype", [b"O", b"u1"])
def test_calling_ndarray_is_refused_before_it_allocates(tmp_path, dtype):
    """``numpy.ndarray((N,), dtype)`` from a 30-byte file would allocate N elements (an object
    array is even filled with None at once): refused, so arrays cannot outgrow the file."""
    path = tmp_path / "alloc"
    path.write_bytes(b"\x80\x02cnumpy\nndarray\n" + _int4(10**6) + b"\x85U" + bytes([len(dtype)]) + dtype + b"\x86R.")
    assert path.stat().st_size < 40
    with pytest.raises(UnsafePickleError, match=r"alloc: refused to call numpy\.ndarray \(nothing was built\)"):
        safe_load_pickle(path)


def test_reconstruct_of_a_non_empty_shape_is_refused(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _int4(10**6)
                     + b"\x85U\x01b\x87R.")
    with pytest.raises(UnsafePickleError, match=r"big: refused numpy's _reconstruct of _ArrayType with shape \(1000000,\)"):
        safe_load_pickle(path)


@pytest.mark.parametrize("protocol", [3, 4])
def test_numpy_arrays_of_every_plain_kind_load_back(tmp_path, protocol):
    """What numpy itself pickles (protocols 3 and 4; 2 needs _codecs.encode, refused) still loads."""
    arrays = {b"u8": np.arange(3072 * 2, dtype=np.uint8).reshape(2, 3072), b"i64": np.array([3, -1], np.int64),
              b"f32": np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3), b"fortran": np.asfortranarray(np.eye(3)),
              b"empty": np.zeros((0, 4), np.int16), b"rec": np.zeros(2, dtype=[("a", "u1"), ("b", "<f4")])}
    path = tmp_path / "ok"
    path.write_bytes(pickle.dumps(arrays, protocol=protocol))
    back = safe_load_pickle(path)
    for key, value in arrays.items():
        assert back[key].dtype == value.dtype and np.array_equal(back[key], value), key
