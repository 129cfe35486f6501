"""Loading tasks into memory, the fixed train/val split, normalisation and batching."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DatasetError
from .formats import FilePlan, RawData, decode, locate
from .tasks import TaskSpec, get_task, resolve_root

__all__ = [
    "SPLITS",
    "SPLIT_SEED",
    "Split",
    "TaskData",
    "clear_cache",
    "load_task",
    "normalize",
    "random_crop_flip",
    "split_indices",
]

#: Names of the splits a :class:`TaskData` holds.
SPLITS = ("train", "val", "test")

#: Seed of the permutation that carves the validation split. Changing it changes which
#: images architectures are scored on, so scores stop being comparable: don't.
SPLIT_SEED = 20240611

_MASK64 = (1 << 64) - 1


# --------------------------------------------------------------------------- split


def _permutation(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of ``range(n)`` that depends on nothing but ``(n, seed)``.

    Ranks the indices by splitmix64 of ``index + seed·2^32``. splitmix64 is a bijection on
    64-bit integers, so keys never tie and the order is exact; unlike ``np.random`` or
    ``torch.randperm`` its output is fixed by definition rather than by library version,
    so the validation split stays the same across numpy/torch upgrades.
    """
    z = np.arange(n, dtype=np.uint64) + np.uint64((seed << 32) & _MASK64)
    # uint64 array arithmetic wraps modulo 2^64, which is what splitmix64 wants.
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return np.argsort(z, kind="stable").astype(np.int64)


def split_indices(
    n_total: int,
    val_size: int,
    *,
    limit_train: int | None = None,
    seed: int = SPLIT_SEED,
) -> tuple[np.ndarray, np.ndarray]:
    """Carve ``range(n_total)`` into ``(train_indices, val_indices)``, both sorted int64.

    Guarantees:

    * deterministic: a pure function of the arguments (no global RNG, no library-version
      dependence);
    * ``val_indices`` are the first ``val_size`` entries of a fixed permutation, so they
      do not depend on ``limit_train`` and a smaller ``val_size`` gives a subset;
    * train and val are disjoint and, without ``limit_train``, cover ``range(n_total)``;
    * ``limit_train`` keeps the next ``limit_train`` entries of the same permutation: a
      random (not class-sorted) subset, and smaller limits give subsets of larger ones.
    """
    if not 0 <= val_size < n_total:
        raise ValueError(f"val_size must be in [0, {n_total}), got {val_size}")
    order = _permutation(n_total, seed)
    val = np.sort(order[:val_size])
    rest = order[val_size:]
    if limit_train is not None:
        rest = rest[:limit_train]
    return np.sort(rest), val


# --------------------------------------------------------------------------- tensors


def normalize(images: torch.Tensor, spec: TaskSpec) -> torch.Tensor:
    """Map uint8 images ``(..., C, H, W)`` to float32 ``(x / 255 - mean) / std``.

    The result is a new tensor on the same device; ``images`` is not modified.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 images, got {images.dtype}")
    c = spec.input_shape[0]
    if images.dim() < 3 or images.shape[-3] != c:
        raise ValueError(
            f"normalize expects (..., {c}, H, W) images for {spec.name}, got {tuple(images.shape)}"
        )
    std = torch.tensor(spec.std, dtype=torch.float32, device=images.device).view(c, 1, 1)
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=images.device).view(c, 1, 1)
    # In place on the fresh float copy: no further full-size temporaries.
    return images.to(torch.float32).mul_(1.0 / (255.0 * std)).sub_(mean / std)


def random_crop_flip(
    images: torch.Tensor,
    pad: int,
    flip: bool,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Standard training augmentation on a uint8 batch ``N×C×H×W``.

    Each image is zero-padded by ``pad`` pixels on every side (black, as torchvision's
    ``RandomCrop(padding=pad)`` does before normalisation) and cropped back to ``H×W`` at a
    uniformly random offset; with ``flip`` it is also mirrored left-right with probability
    1/2. Random numbers come from ``generator`` on the CPU, so a seeded generator gives the
    same result on any device. Returns a new tensor on ``images.device``.
    """
    n, c, h, w = images.shape
    dev = images.device
    out = images
    if pad > 0:
        padded = F.pad(images, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
        rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]
        batch = torch.arange(n, device=dev)[:, None, None, None]
        chan = torch.arange(c, device=dev)[None, :, None, None]
        # One gather with per-image offsets: no Python loop over the batch.
        out = padded[batch, chan, rows, cols]
    if flip:
        mirror = (torch.rand(n, generator=generator) < 0.5).to(dev)
        out = torch.where(mirror[:, None, None, None], out.flip(-1), out)
    return out if out is not images else images.clone()


@dataclass(frozen=True, eq=False)
class Split:
    """One split held in memory: ``images`` uint8 ``N×C×H×W``, ``labels`` int64 ``N``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True, eq=False)
class TaskData:
    """A task loaded into memory.

    ``train``/``val``/``test`` own their tensors (copies, never views of the cache), so a
    caller modifying them in place cannot affect other loads. ``val`` is the fixed
    validation split used to score architectures; ``test`` is only for final evaluation.
    ``train_indices``/``val_indices`` are positions in the original training files.
    """

    spec: TaskSpec
    root: Path
    format: str
    train: Split
    val: Split
    test: Split
    train_indices: torch.Tensor
    val_indices: torch.Tensor

    def split(self, name: str) -> Split:
        """Return split ``name`` (one of :data:`SPLITS`)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise uint8 images with this task's mean/std (see :func:`normalize`)."""
        return normalize(images, self.spec)

    def tensors(
        self, split: str, device: str | torch.device = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split as ``(float32 normalised images, int64 labels)`` on ``device``."""
        s = self.split(split)
        # Move uint8 first: 4x less to transfer than float32.
        return self.normalize(s.images.to(device)), s.labels.to(device, copy=True)

    def num_batches(self, split: str, batch_size: int, *, drop_last: bool = False) -> int:
        """How many batches :meth:`batches` yields with these arguments."""
        n = len(self.split(split))
        return n // batch_size if drop_last else -(-n // batch_size)

    def batches(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int | None = None,
        device: str | torch.device = "cpu",
        drop_last: bool = False,
        augment: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate over ``split`` in batches of normalised float32 images and int64 labels.

        Guarantees:

        * every example appears exactly once per pass (the last, smaller batch is dropped
          only with ``drop_last``);
        * without ``shuffle``, batches follow the split's order;
        * with a ``seed``, the order and the augmentation are reproducible (and independent
          of ``device``); ``seed=None`` draws fresh randomness each call;
        * ``augment`` applies :func:`random_crop_flip` with the task's padding and flip
          setting (flips only where they preserve labels, i.e. CIFAR-10). It is meant for
          the train split; scoring should use un-augmented val batches.

        Arguments are checked when this is called, not at the first ``next()``.
        """
        s = self.split(split)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        generator = torch.Generator()
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(int(seed))
        return self._iter_batches(s, batch_size, shuffle, generator, device, drop_last, augment)

    def _iter_batches(
        self,
        s: Split,
        batch_size: int,
        shuffle: bool,
        generator: torch.Generator,
        device: str | torch.device,
        drop_last: bool,
        augment: bool,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(s)
        order = torch.randperm(n, generator=generator) if shuffle else None
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            end = min(start + batch_size, n)
            if order is None:
                images, labels = s.images[start:end], s.labels[start:end]
            else:
                idx = order[start:end]
                images, labels = s.images.index_select(0, idx), s.labels.index_select(0, idx)
            images = images.to(device)
            if augment:
                images = random_crop_flip(
                    images, self.spec.augment_pad, self.spec.augment_flip, generator
                )
            # copy=True: a caller editing the labels in place must not edit the split.
            yield self.normalize(images), labels.to(device, copy=True)


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class _CacheEntry:
    signature: tuple[tuple[str, int, int], ...]
    format: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


_CACHE: dict[tuple[str, str], _CacheEntry] = {}
_CACHE_LOCK = threading.Lock()
_KEY_LOCKS: dict[tuple[str, str], threading.Lock] = {}


def clear_cache() -> None:
    """Drop every decoded dataset kept in memory by :func:`load_task`."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _signature(spec: TaskSpec, plan: FilePlan, root: Path) -> tuple[tuple[str, int, int], ...]:
    # Size + mtime of every file read: a replaced or rewritten file invalidates the cache
    # without re-reading anything when nothing changed.
    sig = []
    for p in plan.files:
        try:
            st = p.stat()
        except OSError as exc:
            raise DatasetError(
                f"cannot stat file: {exc.strerror or exc}",
                task=spec.name,
                root=root,
                filename=p.name,
            ) from exc
        # Relative name: the cache key already holds the resolved folder, and the same
        # folder reached through another spelling (symlink, "..") must hit the cache.
        sig.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns))
    return tuple(sig)


def _tensor(arr: np.ndarray) -> torch.Tensor:
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr).copy()
    return torch.from_numpy(arr)


def _decoded(spec: TaskSpec, root: Path, origin: str) -> _CacheEntry:
    plan = locate(spec, root, origin)
    sig = _signature(spec, plan, root)
    key = (spec.name, str(root.resolve()))
    with _CACHE_LOCK:
        key_lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    # Per-key lock: concurrent loads of one task decode it once; other tasks don't wait.
    with key_lock:
        with _CACHE_LOCK:
            entry = _CACHE.get(key)
        if entry is not None and entry.signature == sig:
            return entry
        raw: RawData = decode(spec, plan, root)
        entry = _CacheEntry(
            signature=sig,
            format=raw.format,
            train_images=_tensor(raw.train_images),
            train_labels=_tensor(raw.train_labels),
            test_images=_tensor(raw.test_images),
            test_labels=_tensor(raw.test_labels),
        )
        with _CACHE_LOCK:
            _CACHE[key] = entry
        return entry


def load_task(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    limit_train: int | None = None,
    val_size: int | None = None,
) -> TaskData:
    """Load task ``name`` into memory and split it.

    Args:
        name: task name (see :func:`~nas_service.data.list_tasks`).
        root: folder holding the files; defaults to ``$NAS_DATASETS_DIR/<name>``, then the
            task's default folder (see :func:`~nas_service.data.resolve_root`).
        limit_train: keep at most this many training images (a fixed random subset, see
            :func:`split_indices`); the validation and test splits are unaffected.
        val_size: override ``spec.val_size``. Only for tests and experiments on small
            files: architecture scores are comparable only with the default.

    Decoded files are cached per (task, resolved folder) for the life of the process and
    re-read only when a file's size or mtime changes, so repeated loads cost only the
    split copies. Raises :class:`DatasetError` for an unknown task, a missing folder or
    file, or any malformed file.
    """
    spec = get_task(name)
    if spec.is_language_model:
        raise DatasetError(f"{spec.name!r} is a character task, not images: load it with "
                           "nas_service.data.characters.load_char_task", task=spec.name)
    if limit_train is not None and (isinstance(limit_train, bool) or limit_train < 1):
        raise ValueError(f"limit_train must be a positive int or None, got {limit_train!r}")
    vsize = spec.val_size if val_size is None else int(val_size)
    if vsize < 0:
        raise ValueError(f"val_size must be >= 0, got {val_size!r}")
    folder, origin = resolve_root(spec, root)
    entry = _decoded(spec, folder, origin)

    n_total = len(entry.train_labels)
    if vsize >= n_total:
        raise DatasetError(
            f"the training files hold {n_total} images, too few to carve a validation split "
            f"of {vsize} and keep any for training",
            task=spec.name,
            root=folder,
        )
    train_idx, val_idx = split_indices(n_total, vsize, limit_train=limit_train)
    tr, va = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    return TaskData(
        spec=spec,
        root=folder,
        format=entry.format,
        # index_select copies: each TaskData owns its tensors.
        train=Split(entry.train_images.index_select(0, tr), entry.train_labels.index_select(0, tr)),
        val=Split(entry.train_images.index_select(0, va), entry.train_labels.index_select(0, va)),
        test=Split(entry.test_images.clone(), entry.test_labels.clone()),
        train_indices=tr,
        val_indices=va,
    )
