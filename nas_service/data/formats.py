"""Readers for the on-disk dataset formats.

Supported layouts (see ``docs/data.md``):

* ``idx`` (MNIST, Fashion-MNIST): ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each gzip-compressed (``.gz``) or
  not.
* CIFAR-10, looked up in the folder itself, then in ``cifar-10-batches-py/`` and
  ``cifar-10-batches-bin/`` below it:

  - ``cifar-python``: the pickled "python version" batches ``data_batch_1..5`` +
    ``test_batch``, decoded with a restricted unpickler;
  - ``cifar-binary``: ``data_batch_1.bin..5.bin`` + ``test_batch.bin``, records of
    1 label byte + 3072 pixel bytes;
  - ``npz``: ``train.npz`` (or ``train_part<k>.npz`` shards) + ``test.npz`` holding ``x``
    (uint8, ``N×32×32×3`` or ``N×3×32×32``) and ``y`` (integer labels).

Every reader returns uint8 images laid out ``N×C×H×W`` and int64 labels, already checked
against the task (shape, counts, label range). Anything wrong with a file raises
:class:`DatasetError`; no other exception type escapes for malformed input.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib
import io
import math
import pickle
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DatasetError
from .tasks import TaskSpec

__all__ = [
    "FilePlan",
    "RawData",
    "decode",
    "locate",
    "restricted_unpickle",
]

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension
_GZIP_MAGIC = b"\x1f\x8b"

_IDX_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_CIFAR_SUBFOLDERS = ("cifar-10-batches-py", "cifar-10-batches-bin")
_CIFAR_PY_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_PY_TEST = "test_batch"
_CIFAR_BIN_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_BIN_TEST = "test_batch.bin"
_NPZ_PART_RE = re.compile(r"^train_part(\d+)\.npz$")

_EXPECTED_CIFAR = (
    "python batches data_batch_1..data_batch_5 + test_batch; "
    "or binary batches data_batch_1.bin..data_batch_5.bin + test_batch.bin; "
    "or train.npz (or train_part0.npz, train_part1.npz, ...) + test.npz"
)


@dataclass(frozen=True)
class FilePlan:
    """Which files will be decoded for a task, before any of them is read.

    ``train`` and ``test`` are in decoding order. For ``idx`` they are ``(images, labels)``;
    for the CIFAR formats they are the batches/shards, concatenated in that order.
    """

    format: str
    folder: Path
    train: tuple[Path, ...]
    test: tuple[Path, ...]

    @property
    def files(self) -> tuple[Path, ...]:
        return self.train + self.test


@dataclass(frozen=True)
class RawData:
    """Decoded arrays of a task: uint8 ``N×C×H×W`` images and int64 ``N`` labels."""

    format: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


class _Ctx:
    """Carries task/folder so that every error names them without repeating arguments."""

    def __init__(self, spec: TaskSpec, root: Path) -> None:
        self.spec = spec
        self.root = root

    def name(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def folder_name(self, folder: Path) -> str:
        return "the folder itself" if folder == self.root else f"{self.name(folder)}/"

    def error(self, reason: str, path: Path | None = None) -> DatasetError:
        return DatasetError(
            reason,
            task=self.spec.name,
            root=self.root,
            filename=self.name(path) if path is not None else None,
        )

    @contextlib.contextmanager
    def guard(self, path: Path, what: str) -> Iterator[None]:
        """Turn any unexpected failure while decoding ``path`` into a DatasetError.

        Decoders validate what they can with precise messages; this is the safety net for
        the rest (corrupt zip members, malformed npy headers, odd pickles), so that callers
        only ever have to handle DatasetError for bad files. MemoryError is not a file
        problem and propagates unchanged.
        """
        try:
            yield
        except (DatasetError, MemoryError):
            raise
        except Exception as exc:
            raise self.error(f"{what}: {type(exc).__name__}: {exc}", path) from exc


# --------------------------------------------------------------------------- locating


def locate(spec: TaskSpec, root: Path, origin: str = "root argument") -> FilePlan:
    """Find the files of ``spec`` under ``root`` without decoding them.

    Raises :class:`DatasetError` when the folder does not exist or no supported layout is
    complete; the message lists what is missing and the names each format expects.
    """
    ctx = _Ctx(spec, root)
    if not root.exists():
        raise ctx.error(f"folder does not exist (chosen by {origin})")
    if not root.is_dir():
        raise ctx.error(f"not a folder (chosen by {origin})")
    if spec.family == "idx":
        return _locate_idx(ctx)
    if spec.family == "npz":
        plan, problem = _probe_npz(ctx, root)
        if plan is None:
            raise ctx.error(problem or "missing train.npz and test.npz")
        return plan
    return _locate_cifar(ctx)


def _locate_idx(ctx: _Ctx) -> FilePlan:
    found: dict[str, Path] = {}
    missing: list[str] = []
    for role, stem in _IDX_STEMS.items():
        # Prefer the uncompressed file when both exist: same content, no inflate cost.
        for candidate in (ctx.root / stem, ctx.root / f"{stem}.gz"):
            if candidate.is_file():
                found[role] = candidate
                break
        else:
            missing.append(f"{stem}(.gz)")
    if missing:
        expected = ", ".join(f"{stem}.gz" for stem in _IDX_STEMS.values())
        raise ctx.error(
            f"missing {', '.join(missing)}; expected the idx files {expected} "
            "(gzip-compressed, or the same names without .gz)"
        )
    return FilePlan(
        format="idx",
        folder=ctx.root,
        train=(found["train_images"], found["train_labels"]),
        test=(found["test_images"], found["test_labels"]),
    )


def _locate_cifar(ctx: _Ctx) -> FilePlan:
    folders = [ctx.root] + [ctx.root / sub for sub in _CIFAR_SUBFOLDERS]
    folders = [f for f in folders if f.is_dir()]
    partial: list[str] = []
    for folder in folders:
        for probe in (_probe_cifar_python, _probe_cifar_binary, _probe_npz):
            plan, problem = probe(ctx, folder)
            if plan is not None:
                return plan
            if problem is not None:
                partial.append(problem)
    if partial:
        raise ctx.error("; ".join(partial) + f". Expected one complete layout: {_EXPECTED_CIFAR}")
    looked = ", ".join(f"{sub}/" for sub in _CIFAR_SUBFOLDERS)
    raise ctx.error(
        f"no CIFAR-10 files found (looked in the folder and in {looked}). "
        f"Expected one of: {_EXPECTED_CIFAR}"
    )


def _probe_batches(
    ctx: _Ctx, folder: Path, fmt: str, train: tuple[str, ...], test: str
) -> tuple[FilePlan | None, str | None]:
    names = (*train, test)
    present = [n for n in names if (folder / n).is_file()]
    if not present:
        return None, None
    missing = [n for n in names if n not in present]
    if missing:
        return None, (
            f"incomplete {fmt} batches in {ctx.folder_name(folder)}: missing {', '.join(missing)}"
        )
    return (
        FilePlan(fmt, folder, tuple(folder / n for n in train), (folder / test,)),
        None,
    )


def _probe_cifar_python(ctx: _Ctx, folder: Path) -> tuple[FilePlan | None, str | None]:
    return _probe_batches(ctx, folder, "cifar-python", _CIFAR_PY_TRAIN, _CIFAR_PY_TEST)


def _probe_cifar_binary(ctx: _Ctx, folder: Path) -> tuple[FilePlan | None, str | None]:
    return _probe_batches(ctx, folder, "cifar-binary", _CIFAR_BIN_TRAIN, _CIFAR_BIN_TEST)


def _probe_npz(ctx: _Ctx, folder: Path) -> tuple[FilePlan | None, str | None]:
    test = folder / "test.npz"
    single = folder / "train.npz"
    parts: dict[int, Path] = {}
    for p in sorted(folder.glob("train_part*.npz")):
        m = _NPZ_PART_RE.match(p.name)
        if m and p.is_file():
            k = int(m.group(1))
            if k in parts:  # train_part1.npz and train_part01.npz
                return None, f"npz shards {parts[k].name} and {p.name} have the same number"
            parts[k] = p
    has_test, has_single = test.is_file(), single.is_file()
    if not (has_test or has_single or parts):
        return None, None
    where = ctx.folder_name(folder)
    if has_single and parts:
        # Concatenating both would silently duplicate images; make the operator choose.
        return None, (
            f"npz layout in {where} is ambiguous: both train.npz and train_part*.npz exist"
        )
    if not has_test:
        return None, f"npz layout in {where}: missing test.npz"
    if not (has_single or parts):
        return None, (f"npz layout in {where}: missing train.npz (or train_part0.npz, ...)")
    if parts:
        # Shards are numbered from 0 (as in shared/data/cifar10) or 1, without gaps, and
        # concatenated in numeric order. A gap is reported; a missing last shard cannot be
        # told apart from a smaller data set and is not.
        idx = sorted(parts)
        start = idx[0]
        expected = list(range(start, start + len(idx)))
        if start not in (0, 1) or idx != expected:
            first = 1 if start == 1 else 0
            gaps = sorted(set(range(first, idx[-1] + 1)) - set(idx))
            gap_names = ", ".join(f"train_part{i}.npz" for i in gaps)
            return None, f"npz shards in {where} are not contiguous: missing {gap_names}"
        train = tuple(parts[i] for i in idx)
    else:
        train = (single,)
    return FilePlan("npz", folder, train, (test,)), None


# --------------------------------------------------------------------------- decoding


def decode(spec: TaskSpec, plan: FilePlan, root: Path) -> RawData:
    """Read and validate every file of ``plan``.

    Guarantees on success: images are C-contiguous uint8 ``N×C×H×W`` with ``(C, H, W) ==
    spec.input_shape``; labels are int64 in ``[0, spec.num_classes)`` with one label per
    image; both splits are non-empty.
    """
    ctx = _Ctx(spec, root)
    if plan.format == "idx":
        tr_x, tr_y = _read_idx_pair(ctx, *plan.train)
        te_x, te_y = _read_idx_pair(ctx, *plan.test)
    else:
        reader = {
            "cifar-python": _read_cifar_python,
            "cifar-binary": _read_cifar_binary,
            "npz": _read_npz,
        }[plan.format]
        tr_x, tr_y = _concat([reader(ctx, p) for p in plan.train])
        te_x, te_y = _concat([reader(ctx, p) for p in plan.test])
    for path, n in ((plan.train[0], len(tr_y)), (plan.test[0], len(te_y))):
        if n == 0:
            raise ctx.error("split holds no images", path)
    return RawData(plan.format, tr_x, tr_y, te_x, te_y)


def _concat(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if len(pairs) == 1:
        return pairs[0]
    return (
        np.concatenate([p[0] for p in pairs]),
        np.concatenate([p[1] for p in pairs]),
    )


def _read_bytes(ctx: _Ctx, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ctx.error(f"cannot read file: {exc.strerror or exc}", path) from exc


def _check_labels(ctx: _Ctx, path: Path, labels: np.ndarray) -> np.ndarray:
    """Return ``labels`` as int64 after checking they are valid class ids."""
    labels = labels.astype(np.int64, copy=False)
    k = ctx.spec.num_classes
    bad = np.flatnonzero((labels < 0) | (labels >= k))
    if bad.size:
        i = int(bad[0])
        raise ctx.error(
            f"label out of range: {int(labels[i])} at index {i} ({bad.size} bad labels); "
            f"{ctx.spec.name} has {k} classes, labels must be in [0, {k})",
            path,
        )
    return labels


# idx ------------------------------------------------------------------------------


def _read_idx_pair(
    ctx: _Ctx, images_path: Path, labels_path: Path
) -> tuple[np.ndarray, np.ndarray]:
    _, h, w = ctx.spec.input_shape
    images = _read_idx(ctx, images_path, IDX_IMAGES_MAGIC, (h, w))
    labels = _read_idx(ctx, labels_path, IDX_LABELS_MAGIC, ())
    if len(images) != len(labels):
        raise ctx.error(
            f"count mismatch: {ctx.name(images_path)} holds {len(images)} images but "
            f"{ctx.name(labels_path)} holds {len(labels)} labels",
            labels_path,
        )
    # Copy out of the read-only decompressed buffer: tensors built on it must be writable.
    return images.reshape(len(images), 1, h, w).copy(), _check_labels(ctx, labels_path, labels)


def _read_idx(
    ctx: _Ctx, path: Path, magic_expected: int, item_shape: tuple[int, ...]
) -> np.ndarray:
    data = _read_bytes(ctx, path)
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise ctx.error(
                f"corrupt or truncated gzip data ({type(exc).__name__}: {exc})", path
            ) from exc
    elif path.suffix == ".gz":
        raise ctx.error(f"named .gz but is not gzip-compressed (starts with {data[:4]!r})", path)

    kind = "image" if magic_expected == IDX_IMAGES_MAGIC else "label"
    if len(data) < 4:
        raise ctx.error(f"too short for an idx header ({len(data)} bytes)", path)
    (magic,) = struct.unpack(">I", data[:4])
    if magic != magic_expected:
        hint = ""
        other = IDX_LABELS_MAGIC if magic_expected == IDX_IMAGES_MAGIC else IDX_IMAGES_MAGIC
        if magic == other:
            hint = " (this is an idx file of the other kind: images and labels swapped?)"
        raise ctx.error(
            f"bad idx magic number {magic} (0x{magic:08x}); an idx {kind} file starts with "
            f"{magic_expected} (0x{magic_expected:08x}){hint}",
            path,
        )
    ndim = 1 + len(item_shape)
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ctx.error(f"truncated idx header ({len(data)} of {header_len} bytes)", path)
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    if tuple(dims[1:]) != item_shape:
        got = "x".join(map(str, dims[1:]))
        want = "x".join(map(str, item_shape))
        raise ctx.error(f"images are {got} pixels, {ctx.spec.name} expects {want}", path)
    count = math.prod(dims)  # Python ints: a forged header cannot overflow
    payload = len(data) - header_len
    if payload != count:
        what = "truncated" if payload < count else "trailing bytes"
        raise ctx.error(
            f"{what}: the header declares {dims[0]} {kind}s ({count} bytes of data) but the "
            f"file holds {payload} bytes after the header",
            path,
        )
    return np.frombuffer(data, dtype=np.uint8, count=count, offset=header_len).reshape(dims)


# CIFAR python (pickle) -----------------------------------------------------------------


def _numpy_attr(modules: tuple[str, ...], name: str) -> Any:
    # numpy 2 moved numpy.core to numpy._core; resolve whichever this numpy has without
    # touching the deprecated alias (which warns on numpy 2).
    for mod in modules:
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {name} in {modules}")


_MULTIARRAY = ("numpy._core.multiarray", "numpy.core.multiarray")
_NUMERIC = ("numpy._core.numeric", "numpy.core.numeric")

# The complete set of globals the CIFAR python batches (pickled by Python 2 numpy, or
# re-pickled by Python 3 numpy with protocol 2..5) need. Anything else, in particular any
# callable with side effects (os.system, builtins.eval, subprocess...), is refused: a pickle
# can call any global it names, so an allowlist is the only safe way to read user files.
# Callables that could allocate memory out of proportion to the file (bytes(10**12), an
# ndarray of a huge shape) are wrapped so that only the argument patterns real pickles use
# are accepted.
_reconstruct = _numpy_attr(_MULTIARRAY, "_reconstruct")
_frombuffer = _numpy_attr(_NUMERIC, "_frombuffer")


class _NdarrayToken:
    """Stands for ``numpy.ndarray`` inside a pickle: usable only as _reconstruct's subtype."""


def _safe_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    # numpy pickles an array as _reconstruct(ndarray, (0,), b"b") followed by
    # __setstate__ with the real shape and data, whose size is checked against the data.
    if subtype is not _NdarrayToken or tuple(shape) != (0,):
        raise pickle.UnpicklingError("unexpected numpy _reconstruct arguments")
    return _reconstruct(np.ndarray, (0,), dtype)


def _safe_bytes(*args: Any) -> bytes:
    if args and isinstance(args[0], int):
        raise pickle.UnpicklingError("refusing bytes(<size>) in a dataset pickle")
    return bytes(*args)


def _safe_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Python 3 protocol-2 pickles spell bytes objects as _codecs.encode(str, "latin1").
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("unexpected _codecs.encode arguments")
    return obj.encode("latin1", errors)


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {}
for _mod in ("builtins", "__builtin__"):  # __builtin__: Python 2 pickles
    for _obj in (dict, list, tuple, str, int):
        _ALLOWED_GLOBALS[(_mod, _obj.__name__)] = _obj
    _ALLOWED_GLOBALS[(_mod, "bytes")] = _safe_bytes
_ALLOWED_GLOBALS[("numpy", "ndarray")] = _NdarrayToken
_ALLOWED_GLOBALS[("numpy", "dtype")] = np.dtype
for _mod in _MULTIARRAY:
    _ALLOWED_GLOBALS[(_mod, "_reconstruct")] = _safe_reconstruct
for _mod in _NUMERIC:  # protocol 5 pickles of numpy 2 arrays; views the pickled buffer
    _ALLOWED_GLOBALS[(_mod, "_frombuffer")] = _frombuffer
_ALLOWED_GLOBALS[("_codecs", "encode")] = _safe_encode


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only dict/list/str/bytes/int and "
                "numpy arrays are allowed in a dataset pickle"
            ) from None


def restricted_unpickle(data: bytes) -> Any:
    """Unpickle ``data`` allowing only the globals a CIFAR python batch needs.

    Python 2 ``str`` objects come back as ``bytes`` (``encoding="bytes"``, as the CIFAR
    authors' own loader does). Raises ``pickle.UnpicklingError`` for any other global.
    """
    return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


def _get_key(batch: dict[Any, Any], key: str) -> Any:
    # Python 2 pickles give bytes keys; a re-pickled batch may use str keys.
    if key.encode() in batch:
        return batch[key.encode()]
    return batch.get(key)


def _read_cifar_python(ctx: _Ctx, path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = _read_bytes(ctx, path)
    try:
        batch = restricted_unpickle(raw)
    except pickle.UnpicklingError as exc:
        raise ctx.error(f"unsafe or corrupt pickle: {exc}", path) from exc
    except Exception as exc:
        # Truncated or garbled pickles raise many types; a MemoryError here too is caused by
        # the file (it asked for the allocation), so it is reported as a bad file.
        raise ctx.error(f"corrupt pickle ({type(exc).__name__}: {exc})", path) from exc
    if not isinstance(batch, dict):
        raise ctx.error(f"expected a pickled dict, got {type(batch).__name__}", path)
    data = _get_key(batch, "data")
    labels = _get_key(batch, "labels")
    if data is None or labels is None:
        keys = sorted(repr(k) for k in batch)
        raise ctx.error(f"batch dict needs keys b'data' and b'labels'; has {', '.join(keys)}", path)
    c, h, w = ctx.spec.input_shape
    with ctx.guard(path, "bad batch contents"):
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
            desc = (
                f"array {data.dtype} {data.shape}"
                if isinstance(data, np.ndarray)
                else type(data).__name__
            )
            raise ctx.error(f"b'data' must be a uint8 N×{c * h * w} array, got {desc}", path)
        if data.shape[1] != c * h * w:
            raise ctx.error(
                f"b'data' rows have {data.shape[1]} values, expected {c * h * w} "
                f"({c}×{h}×{w} channel-major pixels)",
                path,
            )
        labels_arr = np.asarray(labels)
        if labels_arr.ndim != 1 or not np.issubdtype(labels_arr.dtype, np.integer):
            raise ctx.error(
                f"b'labels' must be a flat list of ints, got {labels_arr.dtype} {labels_arr.shape}",
                path,
            )
        if len(labels_arr) != len(data):
            raise ctx.error(
                f"count mismatch: {len(data)} images but {len(labels_arr)} labels", path
            )
        images = np.ascontiguousarray(data.reshape(len(data), c, h, w))
        return images, _check_labels(ctx, path, labels_arr)


# CIFAR binary ----------------------------------------------------------------------------


def _read_cifar_binary(ctx: _Ctx, path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = _read_bytes(ctx, path)
    c, h, w = ctx.spec.input_shape
    record = 1 + c * h * w
    if not raw or len(raw) % record:
        raise ctx.error(
            f"size {len(raw)} bytes is not a positive multiple of {record} "
            f"(1 label byte + {c * h * w} pixel bytes per record): truncated or not a "
            "CIFAR-10 binary batch",
            path,
        )
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    images = np.ascontiguousarray(rows[:, 1:]).reshape(-1, c, h, w)
    return images, _check_labels(ctx, path, rows[:, 0])


# npz -----------------------------------------------------------------------------------


def _read_npz(ctx: _Ctx, path: Path) -> tuple[np.ndarray, np.ndarray]:
    c, h, w = ctx.spec.input_shape
    try:
        x, y = _load_npz_xy(ctx, path)
    except MemoryError as exc:
        # numpy allocates the shape an .npy header declares before reading the data, so a
        # forged header fails here; report it as the bad file it is.
        raise ctx.error("the archive declares arrays too large to load into memory", path) from exc
    if x.dtype != np.uint8:
        raise ctx.error(f"x has dtype {x.dtype}, expected uint8 pixels (0..255)", path)
    if x.ndim == 4 and x.shape[1:] == (h, w, c):
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    elif x.ndim == 4 and x.shape[1:] == (c, h, w):
        x = np.ascontiguousarray(x)
    else:
        raise ctx.error(
            f"x has shape {x.shape}, expected (N, {h}, {w}, {c}) (HWC) or (N, {c}, {h}, {w}) (CHW)",
            path,
        )
    if y.ndim == 2 and y.shape[1] == 1:  # Keras-style column of labels
        y = y[:, 0]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ctx.error(f"y has dtype {y.dtype} shape {y.shape}, expected N integer labels", path)
    if len(y) != len(x):
        raise ctx.error(
            f"count mismatch: x holds {len(x)} images but y holds {len(y)} labels", path
        )
    return x, _check_labels(ctx, path, y)


def _load_npz_xy(ctx: _Ctx, path: Path) -> tuple[np.ndarray, np.ndarray]:
    with ctx.guard(path, "cannot read npz archive"):
        try:
            archive = np.load(path, allow_pickle=False)
        except ValueError as exc:
            # np.load falls back to pickle for unknown content; refused by allow_pickle.
            raise ctx.error(
                f"not an npz archive, or it needs pickle which is refused ({exc})", path
            ) from exc
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ctx.error("not an npz archive (a single .npy array?); expected keys x, y", path)
        with archive:
            missing = [k for k in ("x", "y") if k not in archive.files]
            if missing:
                raise ctx.error(
                    f"npz lacks array(s) {', '.join(missing)}; has {', '.join(archive.files)}",
                    path,
                )
            x, y = (_npz_array(ctx, path, archive, k) for k in ("x", "y"))
    return x, y


def _npz_array(ctx: _Ctx, path: Path, archive: Any, key: str) -> np.ndarray:
    try:
        return archive[key]
    except ValueError as exc:
        if "pickle" in str(exc):
            raise ctx.error(
                f"array {key!r} is an object array that needs pickle, which is refused; "
                "store plain numeric arrays",
                path,
            ) from exc
        raise
