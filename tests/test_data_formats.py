"""Each supported on-disk format loads with the right shapes, dtypes, pixels and labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from data_files import (
    Written,
    write_cifar_binary,
    write_cifar_npz,
    write_cifar_python,
    write_idx_task,
)

from nas_service.data import DATASETS_DIR_ENV, TaskData, clear_cache, load_task

VAL = 50  # small override so that tiny files can still be split


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATASETS_DIR_ENV, raising=False)
    clear_cache()


def assert_matches(task: TaskData, w: Written) -> None:
    """The loaded splits are exactly the written arrays, re-partitioned by the indices."""
    c, h, wd = task.spec.input_shape
    for split in (task.train, task.val, task.test):
        assert split.images.dtype == torch.uint8
        assert split.labels.dtype == torch.int64
        assert tuple(split.images.shape[1:]) == (c, h, wd)
        assert split.images.is_contiguous()
        assert len(split.images) == len(split.labels) == len(split)
    assert len(task.train) + len(task.val) == len(w.train_labels)
    assert len(task.val) == VAL
    for split, idx in ((task.train, task.train_indices), (task.val, task.val_indices)):
        np.testing.assert_array_equal(split.images.numpy(), w.train_images[idx.numpy()])
        np.testing.assert_array_equal(split.labels.numpy(), w.train_labels[idx.numpy()])
    np.testing.assert_array_equal(task.test.images.numpy(), w.test_images)
    np.testing.assert_array_equal(task.test.labels.numpy(), w.test_labels)


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
@pytest.mark.parametrize(
    "gz",
    [
        True,
        False,
        {"train_images": True, "train_labels": False, "test_images": False, "test_labels": True},
    ],
    ids=["gz", "raw", "mixed"],
)
def test_idx(tmp_path: Path, name: str, gz: bool | dict[str, bool]) -> None:
    w = write_idx_task(tmp_path, 300, 60, gz=gz)
    task = load_task(name, tmp_path, val_size=VAL)
    assert task.format == "idx"
    assert task.spec.name == name
    assert tuple(task.train.images.shape) == (250, 1, 28, 28)
    assert tuple(task.test.images.shape) == (60, 1, 28, 28)
    assert_matches(task, w)


def test_idx_prefers_identical_raw_over_gz(tmp_path: Path) -> None:
    w = write_idx_task(tmp_path, 120, 20, gz=True)
    write_idx_task(tmp_path, 120, 20, gz=False)  # same seed: same content, both present
    assert_matches(load_task("mnist", tmp_path, val_size=VAL), w)


@pytest.mark.parametrize("protocol", ["py2", 2, 4, 5])
def test_cifar_python(tmp_path: Path, protocol: int | str) -> None:
    w = write_cifar_python(tmp_path, 40, 30, protocol=protocol)
    task = load_task("cifar10", tmp_path, val_size=VAL)
    assert task.format == "cifar-python"
    assert tuple(task.train.images.shape) == (150, 3, 32, 32)
    assert_matches(task, w)


def test_cifar_python_in_standard_subfolder(tmp_path: Path) -> None:
    w = write_cifar_python(tmp_path / "cifar-10-batches-py", 40, 30, protocol="py2")
    assert_matches(load_task("cifar10", tmp_path, val_size=VAL), w)


@pytest.mark.parametrize("subfolder", ["", "cifar-10-batches-bin"])
def test_cifar_binary(tmp_path: Path, subfolder: str) -> None:
    w = write_cifar_binary(tmp_path / subfolder, 40, 30)
    task = load_task("cifar10", tmp_path, val_size=VAL)
    assert task.format == "cifar-binary"
    assert_matches(task, w)


def test_cifar_binary_channel_order(tmp_path: Path) -> None:
    """Record bytes are R plane, G plane, B plane: channel 0 must hold the first 1024."""
    w = write_cifar_binary(tmp_path, 12, 5)
    raw = (tmp_path / "test_batch.bin").read_bytes()
    first = np.frombuffer(raw[1 : 1 + 3072], dtype=np.uint8).reshape(3, 32, 32)
    task = load_task("cifar10", tmp_path, val_size=10)
    np.testing.assert_array_equal(task.test.images[0].numpy(), first)
    assert task.test.labels[0].item() == raw[0] == w.test_labels[0]


@pytest.mark.parametrize(
    ("parts", "chw", "label_dtype"),
    [(0, False, np.int64), (3, False, np.uint8), (2, True, np.int32), (12, False, np.int16)],
)
def test_cifar_npz(tmp_path: Path, parts: int, chw: bool, label_dtype: type) -> None:
    w = write_cifar_npz(tmp_path, 240, 30, parts=parts, chw=chw, label_dtype=label_dtype)
    task = load_task("cifar10", tmp_path, val_size=VAL)
    assert task.format == "npz"
    assert_matches(task, w)  # shards are concatenated in numeric order (part10 after part9)


def test_npz_keras_style_label_column(tmp_path: Path) -> None:
    w = write_cifar_npz(tmp_path, 120, 20)
    x = np.load(tmp_path / "train.npz")["x"]
    np.savez(tmp_path / "train.npz", x=x, y=w.train_labels[:, None])
    assert_matches(load_task("cifar10", tmp_path, val_size=VAL), w)


def test_npz_hwc_is_transposed_to_chw(tmp_path: Path) -> None:
    x = np.zeros((60, 32, 32, 3), dtype=np.uint8)
    x[..., 0], x[..., 1], x[..., 2] = 10, 20, 30  # constant R, G, B
    y = np.arange(60) % 10
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=x[:5], y=y[:5])
    task = load_task("cifar10", tmp_path, val_size=10)
    assert task.test.images[:, 0].unique().tolist() == [10]
    assert task.test.images[:, 2].unique().tolist() == [30]


def test_python_layout_wins_over_npz_in_same_folder(tmp_path: Path) -> None:
    w = write_cifar_python(tmp_path, 20, 10)
    write_cifar_npz(tmp_path, 70, 10, seed=1)
    task = load_task("cifar10", tmp_path, val_size=VAL)
    assert task.format == "cifar-python"
    assert_matches(task, w)
