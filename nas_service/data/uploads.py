"""Datasets uploaded by users: decoded from a standard format, checked, stored as a task.

An upload is a list of ``(file name, bytes)``; its format is told by the files themselves:

* ``npz``: one ``.npz`` archive with ``x`` (uint8 images ``N×H×W``, ``N×H×W×C`` or
  ``N×C×H×W``, ``C`` 1 or 3) and ``y`` (integer labels), optionally ``x_test``/``y_test``;
* ``idx``: MNIST-style idx files (gzip-compressed or not), an images file and a labels file,
  told apart by their magic numbers; a second pair whose names start with ``t10k`` (or hold
  ``test``) is the test split;
* ``cifar-python``: CIFAR-10 python batches (``data_batch_*`` and ``test_batch``, plus
  ``batches.meta`` for the class names), as files or inside one ``.tar``/``.tar.gz``.

Nothing of an upload is trusted: every size an archive declares is checked against
:class:`UploadLimits` before anything of that size is allocated (zip members, ``.npy`` headers,
idx headers, tar members, gzip streams are inflated with a bound), tar members are read in
memory and never extracted (a name that leaves the archive's folder, a link or a device is
refused), pickles go through :func:`~nas_service.data.formats.restricted_unpickle`. Every
problem raises :class:`~nas_service.data.DatasetError` naming the file and, where there is one,
the array and the index.

:func:`store_task` writes an accepted dataset as ``train.npz`` + ``test.npz`` + ``task.json`` in
its own folder; :func:`read_stored_task` reads the :class:`~nas_service.data.TaskSpec` back
(family ``npz``), which :func:`~nas_service.data.register_task` makes loadable by name.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import re
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .errors import DatasetError
from .formats import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, restricted_unpickle
from .loader import split_indices
from .tasks import _ALIASES, TASKS, TaskSpec

__all__ = [
    "TASK_NAME_PATTERN",
    "DecodedUpload",
    "UploadLimits",
    "check_task_name",
    "decode_upload",
    "read_stored_task",
    "store_task",
    "task_spec_for",
]

TASK_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
"""Names of registered tasks: lowercase letters, digits and ``-``, as folder names and URLs take
them without escaping."""

TEST_SEED = 20261207
"""Seed of the permutation that holds out the test split of an upload that has none."""

TASK_FILE = "task.json"
_GZIP_MAGIC = b"\x1f\x8b"
_CIFAR_BATCH = re.compile(r"^(data_batch_\d+|test_batch)$")


@dataclass(frozen=True)
class UploadLimits:
    """What an upload may hold. ``max_bytes`` bounds the decoded pixels and every inflated file
    or archive member; the rest are what a task must have to be scored at all."""

    max_bytes: int = 256 * 1024 * 1024
    max_images: int = 200_000
    max_side: int = 64
    min_side: int = 8
    max_classes: int = 100
    min_per_class: int = 10
    max_files: int = 16


@dataclass(frozen=True)
class DecodedUpload:
    """An upload decoded and checked: uint8 ``N×C×H×W`` images, int64 labels in
    ``[0, num_classes)``; ``test_*`` is ``None`` when the upload had no test split."""

    format: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray | None
    test_labels: np.ndarray | None
    num_classes: int
    class_names: tuple[str, ...] | None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train_images.shape[1:]
        return int(c), int(h), int(w)


def check_task_name(name: str) -> str:
    """``name`` if it can name a new task; :class:`DatasetError` otherwise."""
    if not re.fullmatch(TASK_NAME_PATTERN, name):
        raise DatasetError(f"task name {name!r} must match {TASK_NAME_PATTERN} (lowercase "
                           "letters, digits and '-', at most 63 characters)")
    if name in TASKS or name in _ALIASES:
        raise DatasetError(f"task name {name!r} is a built-in task's")
    return name


# --------------------------------------------------------------------------- decoding


def decode_upload(files: Sequence[tuple[str, bytes]], limits: UploadLimits | None = None,
                  *, num_classes: int | None = None) -> DecodedUpload:
    """Decode and check an upload (see the module's docstring for the formats).

    ``num_classes``: the task's class count when the labels alone should not decide it (a class
    without examples is then reported). Raises :class:`DatasetError`.
    """
    limits = limits or UploadLimits()
    if not files:
        raise DatasetError("the upload holds no file")
    if len(files) > limits.max_files:
        raise DatasetError(f"the upload holds {len(files)} files, at most {limits.max_files} "
                           "are accepted")
    names = [_base_name(name) for name, _ in files]
    for name in names:
        if not name:
            raise DatasetError("a file of the upload has no name")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DatasetError("the upload holds two files of the same name", filename=dup)
    named = list(zip(names, (data for _, data in files), strict=True))
    npz = [f for f in named if f[0].endswith(".npz")]
    tars = [f for f in named if f[0].endswith((".tar", ".tar.gz", ".tgz"))]
    if npz:
        if len(named) != 1:
            raise DatasetError("an .npz upload is one file; it came with "
                               f"{', '.join(n for n, _ in named if not n.endswith('.npz'))}",
                               filename=npz[0][0])
        raw = _decode_npz(npz[0][0], npz[0][1], limits)
    elif tars:
        if len(named) != 1:
            raise DatasetError("a tar upload is one archive and nothing else", filename=tars[0][0])
        raw = _decode_cifar(_tar_members(tars[0][0], tars[0][1], limits), limits,
                            where=tars[0][0])
    elif any(_CIFAR_BATCH.match(n) or n == "batches.meta" for n in names):
        raw = _decode_cifar(named, limits, where=None)
    else:
        raw = _decode_idx(named, limits)
    return _checked(raw, limits, num_classes)


def _base_name(name: str) -> str:
    # A browser may send a path; only its last part names the file.
    return PurePosixPath(str(name).replace("\\", "/")).name


@dataclass
class _Raw:
    format: str
    train: tuple[np.ndarray, np.ndarray, str]  # images NCHW, labels, file they came from
    test: tuple[np.ndarray, np.ndarray, str] | None
    class_names: tuple[str, ...] | None = None


def _inflate(name: str, data: bytes, limits: UploadLimits) -> bytes:
    """``data`` gunzipped when it is gzip data, never to more than ``limits.max_bytes``."""
    if data[:2] != _GZIP_MAGIC:
        if name.endswith(".gz"):
            raise DatasetError(f"named .gz but is not gzip data (starts with {data[:4]!r})",
                               filename=name)
        return data
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(data, limits.max_bytes + 1)
    except zlib.error as e:
        raise DatasetError(f"corrupt gzip data ({e})", filename=name) from None
    if len(out) > limits.max_bytes or inflater.unconsumed_tail:
        raise DatasetError(f"inflates to more than {limits.max_bytes} bytes (the upload limit)",
                           filename=name)
    if not inflater.eof:
        raise DatasetError("truncated gzip data", filename=name)
    return out


# npz ------------------------------------------------------------------------------------


def _decode_npz(name: str, data: bytes, limits: UploadLimits) -> _Raw:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise DatasetError(f"not a readable .npz (zip) archive: {e}", filename=name) from None
    with archive:
        members = {info.filename: info for info in archive.infolist()}
        declared = sum(info.file_size for info in members.values())
        if declared > limits.max_bytes:
            raise DatasetError(f"its members declare {declared} bytes once inflated, more than "
                               f"the upload limit of {limits.max_bytes}", filename=name)
        keys = {m[:-4] if m.endswith(".npy") else m: m for m in members}
        missing = [k for k in ("x", "y") if k not in keys]
        if missing:
            raise DatasetError(f"lacks array(s) {', '.join(missing)}; has "
                               f"{', '.join(sorted(keys)) or 'nothing'}", filename=name)
        if ("x_test" in keys) != ("y_test" in keys):
            raise DatasetError("x_test and y_test come together", filename=name)
        arrays = {k: _npy(archive, members[keys[k]], name, k, limits)
                  for k in ("x", "y", "x_test", "y_test") if k in keys}
    train = (_images(arrays["x"], name, "x"), arrays["y"], name)
    test = None
    if "x_test" in arrays:
        test = (_images(arrays["x_test"], name, "x_test"), arrays["y_test"], name)
    return _Raw("npz", train, test)


def _npy(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, key: str,
         limits: UploadLimits) -> np.ndarray:
    """One ``.npy`` member, its header checked against its declared size before numpy
    allocates the array it describes."""
    try:
        with archive.open(info) as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise DatasetError(f"array {key!r} is .npy format version {version}; 1.0 and "
                                   "2.0 are accepted", filename=name)
            shape, _, dtype = read_header(f)
            if dtype.hasobject:
                raise DatasetError(f"array {key!r} is an object array (it needs pickle, which "
                                   "is refused)", filename=name)
            size = math.prod(shape) * dtype.itemsize
            if size > info.file_size or size > limits.max_bytes:
                raise DatasetError(f"array {key!r} declares shape {tuple(shape)} of {dtype} "
                                   f"({size} bytes), more than its member holds "
                                   f"({info.file_size} bytes) or the upload limit",
                                   filename=name)
        with archive.open(info) as f:  # read_array reads the header again
            array = np.lib.format.read_array(f, allow_pickle=False)
    except DatasetError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error) as e:
        raise DatasetError(f"array {key!r} is corrupt or truncated: {e}", filename=name) from None
    return array


def _images(x: np.ndarray, name: str, key: str) -> np.ndarray:
    """Images as uint8 ``N×C×H×W`` from ``N×H×W``, ``N×H×W×C`` or ``N×C×H×W``."""
    if x.dtype != np.uint8:
        if np.issubdtype(x.dtype, np.floating) and x.size:
            bad = np.flatnonzero(~np.isfinite(x.reshape(-1)))
            if bad.size:
                raise DatasetError(f"array {key!r} holds {bad.size} NaN or infinite value(s), "
                                   f"the first at flat index {int(bad[0])}; images are uint8 "
                                   "pixels 0..255", filename=name)
        raise DatasetError(f"array {key!r} has dtype {x.dtype}; images are uint8 pixels 0..255",
                           filename=name)
    if x.ndim == 3:
        return np.ascontiguousarray(x[:, None])
    if x.ndim == 4 and x.shape[3] in (1, 3):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if x.ndim == 4 and x.shape[1] in (1, 3):
        return np.ascontiguousarray(x)
    raise DatasetError(f"array {key!r} has shape {tuple(x.shape)}; images are (N, H, W), "
                       "(N, H, W, C) or (N, C, H, W) with C 1 or 3", filename=name)


# idx ------------------------------------------------------------------------------------


def _decode_idx(files: list[tuple[str, bytes]], limits: UploadLimits) -> _Raw:
    images: dict[str, tuple[np.ndarray, str]] = {}
    labels: dict[str, tuple[np.ndarray, str]] = {}
    for name, data in files:
        data = _inflate(name, data, limits)
        if len(data) < 8:
            raise DatasetError(f"too short for an idx file ({len(data)} bytes)", filename=name)
        magic = int.from_bytes(data[:4], "big")
        split = "test" if name.startswith("t10k") or "test" in name else "train"
        if magic == IDX_IMAGES_MAGIC:
            target, array = images, _idx_array(name, data, 3)
        elif magic == IDX_LABELS_MAGIC:
            target, array = labels, _idx_array(name, data, 1)
        else:
            raise DatasetError(
                f"not an idx images ({IDX_IMAGES_MAGIC}) or labels ({IDX_LABELS_MAGIC}) file: "
                f"magic number {magic}; expected an .npz, idx files or CIFAR-10 python batches",
                filename=name)
        if split in target:
            raise DatasetError(f"a second idx {'images' if target is images else 'labels'} file "
                               f"of the {split} split (the first: {target[split][1]})",
                               filename=name)
        target[split] = (array, name)
    if "train" not in images or "train" not in labels:
        have = [n for n, _ in files]
        raise DatasetError("idx upload needs an images file and a labels file of the training "
                           f"split; got {', '.join(have)}")
    if ("test" in images) != ("test" in labels):
        which = images.get("test") or labels.get("test")
        raise DatasetError("a test split needs both an images and a labels file",
                           filename=which[1] if which else None)
    pairs = {}
    for split in images:
        (x, xname), (y, yname) = images[split], labels[split]
        if len(x) != len(y):
            raise DatasetError(f"{xname} holds {len(x)} images but {yname} holds {len(y)} "
                               "labels", filename=yname)
        pairs[split] = (np.ascontiguousarray(x[:, None]), y, xname)
    return _Raw("idx", pairs["train"], pairs.get("test"))


def _idx_array(name: str, data: bytes, ndim: int) -> np.ndarray:
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"truncated idx header ({len(data)} of {header} bytes)", filename=name)
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    count = math.prod(dims)
    payload = len(data) - header
    if payload != count:
        what = "truncated" if payload < count else "trailing bytes"
        raise DatasetError(f"{what}: the header declares shape {dims} ({count} bytes of data), "
                           f"the file holds {payload} bytes after it", filename=name)
    return np.frombuffer(data, dtype=np.uint8, count=count, offset=header).reshape(dims).copy()


# CIFAR python batches ---------------------------------------------------------------------


def _tar_members(name: str, data: bytes, limits: UploadLimits) -> list[tuple[str, bytes]]:
    """The regular files of a tar archive, read in memory; names outside the archive's folder,
    links and devices are refused, sizes bounded before they are read."""
    out: list[tuple[str, bytes]] = []
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
            for member in archive:
                path = PurePosixPath(member.name)
                if path.is_absolute() or ".." in path.parts:
                    raise DatasetError(f"archive member {member.name!r} lies outside the "
                                       "archive's folder", filename=name)
                if member.isdir():
                    continue
                if not member.isfile():
                    raise DatasetError(f"archive member {member.name!r} is a link or a device "
                                       "file; only regular files are accepted", filename=name)
                total += member.size
                if total > limits.max_bytes:
                    raise DatasetError(f"its members declare more than the upload limit of "
                                       f"{limits.max_bytes} bytes", filename=name)
                if path.name in {n for n, _ in out} and (
                        _CIFAR_BATCH.match(path.name) or path.name == "batches.meta"):
                    raise DatasetError(f"two archive members named {path.name!r}", filename=name)
                if len(out) >= 64:
                    raise DatasetError("the archive holds more than 64 files", filename=name)
                handle = archive.extractfile(member)
                assert handle is not None  # a regular file
                content = handle.read()
                if len(content) != member.size:
                    raise DatasetError(f"archive member {member.name!r} is truncated",
                                       filename=name)
                out.append((path.name, content))
    except DatasetError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"not a readable tar archive, or truncated: {e}", filename=name) from None
    return out


def _decode_cifar(files: list[tuple[str, bytes]], limits: UploadLimits,
                  where: str | None) -> _Raw:
    batches = sorted((n, d) for n, d in files if _CIFAR_BATCH.match(n))
    train = [(n, d) for n, d in batches if n != "test_batch"]
    if not train:
        raise DatasetError("CIFAR-10 python upload holds no data_batch_* file",
                           filename=where)
    train_parts = [_cifar_batch(n, d, where) for n, d in train]
    test = [_cifar_batch(n, d, where) for n, d in batches if n == "test_batch"]
    for n, _ in files:
        if n != "batches.meta" and not _CIFAR_BATCH.match(n) and where is None:
            raise DatasetError("not a CIFAR-10 python batch (data_batch_*, test_batch, "
                               "batches.meta)", filename=n)
    shapes = {x.shape[1:] for x, _, _ in train_parts + test}
    if len(shapes) > 1:
        raise DatasetError(f"the batches hold images of different shapes: {sorted(shapes)}",
                           filename=where)
    names = None
    meta = [d for n, d in files if n == "batches.meta"]
    if meta:
        names = _cifar_label_names(meta[0], where)
    x = np.concatenate([p[0] for p in train_parts])
    y = np.concatenate([p[1] for p in train_parts])
    return _Raw("cifar-python", (x, y, train_parts[0][2]), test[0] if test else None, names)


def _cifar_unpickle(name: str, data: bytes, where: str | None) -> Any:
    try:
        return restricted_unpickle(data)
    except pickle.UnpicklingError as e:
        raise DatasetError(f"{_member(name, where)}unsafe or corrupt pickle: {e}",
                           filename=where or name) from None
    except Exception as e:  # noqa: BLE001 - a truncated pickle raises many types
        raise DatasetError(f"{_member(name, where)}corrupt pickle ({type(e).__name__}: {e})",
                           filename=where or name) from None


def _member(name: str, where: str | None) -> str:
    return f"member {name!r}: " if where else ""


def _key(batch: dict[Any, Any], key: str) -> Any:
    return batch[key.encode()] if key.encode() in batch else batch.get(key)


def _cifar_batch(name: str, data: bytes, where: str | None
                 ) -> tuple[np.ndarray, np.ndarray, str]:
    filename = where or name
    batch = _cifar_unpickle(name, data, where)
    if not isinstance(batch, dict):
        raise DatasetError(f"{_member(name, where)}expected a pickled dict, got "
                           f"{type(batch).__name__}", filename=filename)
    x, y = _key(batch, "data"), _key(batch, "labels")
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2:
        raise DatasetError(f"{_member(name, where)}'data' must be a uint8 N×(C·H·W) array",
                           filename=filename)
    row = x.shape[1]
    channels, side = next(((c, int(round(math.sqrt(row / c)))) for c in (3, 1)
                           if row % c == 0 and int(round(math.sqrt(row / c))) ** 2 * c == row),
                          (0, 0))
    if not channels:
        raise DatasetError(f"{_member(name, where)}'data' rows hold {row} values, not "
                           "C·S·S pixels of square images with 1 or 3 channels", filename=filename)
    try:
        labels = np.asarray(y)
    except Exception:  # noqa: BLE001 - any odd object
        labels = np.asarray([])
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{_member(name, where)}'labels' must be a flat list of ints",
                           filename=filename)
    if len(labels) != len(x):
        raise DatasetError(f"{_member(name, where)}{len(x)} images but {len(labels)} labels",
                           filename=filename)
    return np.ascontiguousarray(x.reshape(len(x), channels, side, side)), labels, filename


def _cifar_label_names(data: bytes, where: str | None) -> tuple[str, ...]:
    meta = _cifar_unpickle("batches.meta", data, where)
    names = _key(meta, "label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
        raise DatasetError(f"{_member('batches.meta', where)}needs a list 'label_names'",
                           filename=where or "batches.meta")
    return tuple((n.decode("utf-8", "replace") if isinstance(n, bytes) else n)[:128]
                 for n in names)


# checks ---------------------------------------------------------------------------------


def _checked(raw: _Raw, limits: UploadLimits, num_classes: int | None) -> DecodedUpload:
    splits = [("train", *raw.train)] + ([("test", *raw.test)] if raw.test else [])
    total = 0
    for split, x, y, name in splits:
        if len(x) == 0:
            raise DatasetError(f"the {split} split holds no images", filename=name)
        _, c, h, w = x.shape
        if c not in (1, 3):
            raise DatasetError(f"images have {c} channels; 1 or 3 are accepted", filename=name)
        for side, what in ((h, "height"), (w, "width")):
            if not limits.min_side <= side <= limits.max_side:
                raise DatasetError(f"image {what} {side} is outside [{limits.min_side}, "
                                   f"{limits.max_side}] pixels", filename=name)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
            if np.issubdtype(y.dtype, np.floating) and np.isnan(y).any():
                first = int(np.flatnonzero(np.isnan(y.reshape(-1)))[0])
                raise DatasetError(f"the {split} labels hold NaN, the first at index {first}; "
                                   "labels are integers", filename=name)
            raise DatasetError(f"the {split} labels have dtype {y.dtype} and shape "
                               f"{tuple(y.shape)}; expected N integers", filename=name)
        if len(y) != len(x):
            raise DatasetError(f"the {split} split holds {len(x)} images but {len(y)} labels",
                               filename=name)
        total += len(x)
    if total > limits.max_images:
        raise DatasetError(f"the upload holds {total} images, at most {limits.max_images} are "
                           "accepted")
    shapes = {tuple(s[1].shape[1:]) for s in splits}
    if len(shapes) > 1:
        raise DatasetError(f"train and test images differ in shape: {sorted(shapes)}")
    train_y = raw.train[1].reshape(len(raw.train[0])).astype(np.int64)
    k = num_classes if num_classes is not None else int(train_y.max()) + 1
    if not 2 <= k <= limits.max_classes:
        raise DatasetError(f"{k} classes; a task has 2 to {limits.max_classes}",
                           filename=raw.train[2])
    labels = {}
    for split, x, y, name in splits:
        y = y.reshape(len(x)).astype(np.int64)
        bad = np.flatnonzero((y < 0) | (y >= k))
        if bad.size:
            i = int(bad[0])
            raise DatasetError(f"{split} label {int(y[i])} at index {i} is out of range "
                               f"({bad.size} bad labels); labels are in [0, {k})", filename=name)
        labels[split] = y
    counts = np.bincount(labels["train"], minlength=k)
    short = np.flatnonzero(counts < limits.min_per_class)
    if short.size:
        c = int(short[0])
        raise DatasetError(f"class {c} has {int(counts[c])} training images, a task needs at "
                           f"least {limits.min_per_class} per class ({short.size} class(es) "
                           "short)", filename=raw.train[2])
    names = raw.class_names
    if names is not None and len(names) != k:
        names = None  # batches.meta of another class count: numbered names instead
    return DecodedUpload(raw.format, raw.train[0], labels["train"],
                         raw.test[0] if raw.test else None, labels.get("test"), k, names)


# --------------------------------------------------------------------------- storing


def task_spec_for(name: str, upload: DecodedUpload, folder: str | os.PathLike[str],
                  *, class_names: Sequence[str] | None = None) -> TaskSpec:
    """The spec of ``upload`` stored in ``folder`` as task ``name``: normalisation from its
    training images, a validation split of a fifth of them (at most 5,000)."""
    x = upload.train_images
    channels = x.shape[1]
    pixels = x.transpose(1, 0, 2, 3).reshape(channels, -1)
    mean = tuple(float(v) / 255.0 for v in pixels.mean(axis=1, dtype=np.float64))
    std = tuple(max(float(v) / 255.0, 1e-3) for v in pixels.std(axis=1, dtype=np.float64))
    names = tuple(class_names or upload.class_names
                  or (str(i) for i in range(upload.num_classes)))
    n_train = len(x) if upload.test_images is not None else len(x) - _test_size(len(x))
    side = upload.input_shape[1]
    return TaskSpec(name=name, input_shape=upload.input_shape, num_classes=upload.num_classes,
                    class_names=names, mean=mean, std=std, default_root=str(folder),
                    val_size=max(1, min(5000, n_train // 5)), family="npz",
                    augment_pad=2 if side <= 28 else 4, augment_flip=False)


def _test_size(n: int) -> int:
    return max(1, n // 6)


def store_task(spec: TaskSpec, upload: DecodedUpload) -> tuple[int, int]:
    """Write ``upload`` as ``train.npz`` + ``test.npz`` + ``task.json`` in ``spec.default_root``
    (created; each file written to a temporary name and renamed, ``task.json`` last, so a folder
    with a ``task.json`` is complete). Without a test split in the upload, a fixed sixth of the
    images (seeded permutation) becomes it. Returns the images of the stored ``(train, test)``
    files."""
    assert spec.default_root is not None
    folder = Path(spec.default_root)
    folder.mkdir(parents=True, exist_ok=True)
    x, y = upload.train_images, upload.train_labels
    if upload.test_images is None:
        train_idx, test_idx = split_indices(len(x), _test_size(len(x)), seed=TEST_SEED)
        splits = {"train": (x[train_idx], y[train_idx]), "test": (x[test_idx], y[test_idx])}
    else:
        assert upload.test_labels is not None
        splits = {"train": (x, y), "test": (upload.test_images, upload.test_labels)}
    for split, (images, labels) in splits.items():
        _atomic(folder / f"{split}.npz",
                lambda f, images=images, labels=labels: np.savez(f, x=images, y=labels))
    record = {**asdict(spec), "format": upload.format}
    record.pop("default_root")
    _atomic(folder / TASK_FILE, lambda f: f.write(json.dumps(record, indent=2).encode()))
    return len(splits["train"][1]), len(splits["test"][1])


def _atomic(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_stored_task(folder: str | os.PathLike[str]) -> TaskSpec:
    """The spec :func:`store_task` wrote in ``folder``; :class:`DatasetError` when it is missing
    or unreadable."""
    folder = Path(folder)
    try:
        record = json.loads((folder / TASK_FILE).read_text())
        fields = {k: record[k] for k in ("name", "num_classes", "val_size", "family",
                                         "augment_pad", "augment_flip")}
        return TaskSpec(**fields, input_shape=tuple(record["input_shape"]),
                        class_names=tuple(record["class_names"]), mean=tuple(record["mean"]),
                        std=tuple(record["std"]), default_root=str(folder))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"cannot read the stored task: {e}", root=folder,
                           filename=TASK_FILE) from None
