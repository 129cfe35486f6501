"""Writers of small dataset files in the REAL on-disk formats, for the data tests.

Each writer produces files byte-compatible with the official distributions (idx with its
magic numbers, CIFAR-10 python pickles with bytes keys, CIFAR-10 binary records, npz) and
returns the arrays it wrote, laid out as the loader must return them: uint8 ``N×C×H×W``
images and int64 labels.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049

IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass
class Written:
    """What a writer put on disk, in the layout the loader returns."""

    train_images: np.ndarray  # uint8 N×C×H×W
    train_labels: np.ndarray  # int64 N
    test_images: np.ndarray
    test_labels: np.ndarray


def random_split(
    n_train: int, n_test: int, shape: tuple[int, int, int], seed: int = 0, num_classes: int = 10
) -> Written:
    rng = np.random.default_rng(seed)
    return Written(
        rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        rng.integers(0, num_classes, n_train).astype(np.int64),
        rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        rng.integers(0, num_classes, n_test).astype(np.int64),
    )


# --------------------------------------------------------------------------- idx


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """Serialise a uint8 array as an idx file: big-endian magic, dims, then raw bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if magic is None:
        magic = 0x0800 | array.ndim  # 0x08 = unsigned byte
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    return header + array.tobytes()


def write_bytes(path: Path, data: bytes, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data, compresslevel=1)
    path.write_bytes(data)
    return path


def write_idx_task(
    folder: Path,
    n_train: int = 300,
    n_test: int = 60,
    *,
    gz: bool | dict[str, bool] = True,
    seed: int = 0,
) -> Written:
    """Write the four idx files of an MNIST-style task (28×28 grey images).

    ``gz`` may be a dict role -> bool to mix compressed and raw files.
    """
    folder.mkdir(parents=True, exist_ok=True)
    w = random_split(n_train, n_test, (1, 28, 28), seed)
    arrays = {
        "train_images": w.train_images[:, 0],
        "train_labels": w.train_labels.astype(np.uint8),
        "test_images": w.test_images[:, 0],
        "test_labels": w.test_labels.astype(np.uint8),
    }
    for role, arr in arrays.items():
        compress = gz[role] if isinstance(gz, dict) else gz
        write_bytes(folder / IDX_NAMES[role], idx_bytes(arr), compress)
    return w


# --------------------------------------------------------------------------- CIFAR python


def py2_pickle(obj: Any) -> bytes:
    """Pickle ``obj`` the way Python 2's cPickle (protocol 2) wrote the CIFAR batches.

    Byte strings become Python 2 ``str`` opcodes (SHORT_BINSTRING/BINSTRING) and numpy
    arrays reference ``numpy.core.multiarray._reconstruct``, as in the official files. Only
    dict, list, bytes, int and uint8 ndarrays are supported.
    """
    return b"\x80\x02" + _py2(obj) + b"."


def _py2_str(b: bytes) -> bytes:
    if len(b) < 256:
        return b"U" + bytes([len(b)]) + b
    return b"T" + struct.pack("<I", len(b)) + b


def _py2_int(i: int) -> bytes:
    if 0 <= i < 256:
        return b"K" + bytes([i])
    return b"J" + struct.pack("<i", i)


def _py2(obj: Any) -> bytes:
    if isinstance(obj, dict):
        body = b"".join(_py2(k) + _py2(v) for k, v in obj.items())
        return b"}(" + body + b"u"
    if isinstance(obj, list):
        return b"](" + b"".join(_py2(v) for v in obj) + b"e"
    if isinstance(obj, bytes):
        return _py2_str(obj)
    if isinstance(obj, int):
        return _py2_int(obj)
    if isinstance(obj, np.ndarray):
        assert obj.dtype == np.uint8 and obj.ndim == 2
        dtype = (
            b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R"
            b"(" + _py2_int(3) + _py2_str(b"|") + b"NNN" + _py2_int(-1) + _py2_int(-1)
            + _py2_int(0) + b"tb"
        )  # fmt: skip
        shape = _py2_int(obj.shape[0]) + _py2_int(obj.shape[1]) + b"\x86"
        return (
            b"cnumpy.core.multiarray\n_reconstruct\n"
            b"cnumpy\nndarray\n" + _py2_int(0) + b"\x85" + _py2_str(b"b") + b"\x87R"
            b"(" + _py2_int(1) + shape + dtype + b"\x89" + _py2_str(obj.tobytes()) + b"tb"
        )  # fmt: skip
    raise TypeError(type(obj))


def cifar_batch_dict(images: np.ndarray, labels: np.ndarray, label: bytes) -> dict[bytes, Any]:
    """The dict stored in a CIFAR-10 python batch (bytes keys, as in the real files)."""
    n = len(images)
    return {
        b"batch_label": label,
        b"labels": [int(v) for v in labels],
        b"data": np.ascontiguousarray(images.reshape(n, -1)),
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(n)],
    }


def write_cifar_python(
    folder: Path,
    n_per_batch: int = 40,
    n_test: int = 30,
    *,
    protocol: int | str = 2,
    seed: int = 0,
) -> Written:
    """Write ``data_batch_1..5`` + ``test_batch``; ``protocol="py2"`` mimics the originals."""
    folder.mkdir(parents=True, exist_ok=True)
    w = random_split(5 * n_per_batch, n_test, (3, 32, 32), seed)

    def dump(path: Path, images: np.ndarray, labels: np.ndarray, label: bytes) -> None:
        batch = cifar_batch_dict(images, labels, label)
        if protocol == "py2":
            path.write_bytes(py2_pickle(batch))
        else:
            path.write_bytes(pickle.dumps(batch, protocol=int(protocol)))

    for i in range(5):
        sl = slice(i * n_per_batch, (i + 1) * n_per_batch)
        label = f"training batch {i + 1} of 5".encode()
        dump(folder / f"data_batch_{i + 1}", w.train_images[sl], w.train_labels[sl], label)
    dump(folder / "test_batch", w.test_images, w.test_labels, b"testing batch 1 of 1")
    return w


# --------------------------------------------------------------------------- CIFAR binary


def cifar_binary_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """Records of 1 label byte + 3072 pixel bytes (R plane, G plane, B plane)."""
    n = len(images)
    rows = np.empty((n, 3073), dtype=np.uint8)
    rows[:, 0] = labels
    rows[:, 1:] = images.reshape(n, -1)
    return rows.tobytes()


def write_cifar_binary(
    folder: Path, n_per_batch: int = 40, n_test: int = 30, *, seed: int = 0
) -> Written:
    folder.mkdir(parents=True, exist_ok=True)
    w = random_split(5 * n_per_batch, n_test, (3, 32, 32), seed)
    for i in range(5):
        sl = slice(i * n_per_batch, (i + 1) * n_per_batch)
        data = cifar_binary_bytes(w.train_images[sl], w.train_labels[sl])
        (folder / f"data_batch_{i + 1}.bin").write_bytes(data)
    (folder / "test_batch.bin").write_bytes(cifar_binary_bytes(w.test_images, w.test_labels))
    return w


# --------------------------------------------------------------------------- npz


def write_cifar_npz(
    folder: Path,
    n_train: int = 200,
    n_test: int = 30,
    *,
    parts: int = 0,
    chw: bool = False,
    label_dtype: type = np.int64,
    seed: int = 0,
) -> Written:
    """Write ``train.npz`` (``parts=0``) or ``train_part0..`` shards, plus ``test.npz``.

    ``x`` is HWC (as in shared/data/cifar10) unless ``chw``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    w = random_split(n_train, n_test, (3, 32, 32), seed)

    def save(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
        x = images if chw else images.transpose(0, 2, 3, 1)
        np.savez_compressed(path, x=np.ascontiguousarray(x), y=labels.astype(label_dtype))

    if parts:
        bounds = np.linspace(0, n_train, parts + 1).astype(int)
        for k in range(parts):
            sl = slice(bounds[k], bounds[k + 1])
            save(folder / f"train_part{k}.npz", w.train_images[sl], w.train_labels[sl])
    else:
        save(folder / "train.npz", w.train_images, w.train_labels)
    save(folder / "test.npz", w.test_images, w.test_labels)
    return w
