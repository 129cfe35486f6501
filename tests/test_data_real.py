"""Loading the real data sets where this machine has them (skipped elsewhere)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nas_service.data import DATASETS_DIR_ENV, TASKS, clear_cache, load_task

FASHION_DIR = Path(TASKS["fashion-mnist"].default_root or "")
REPO = Path(__file__).resolve().parents[1]
# Benchmark-only CIFAR-10 copy (JPEG-derived, npz); read in place, never copied.
SHARED_CIFAR = next(
    (p for p in (REPO / "shared/data/cifar10", REPO.parent / "shared/data/cifar10") if p.is_dir()),
    None,
)


def pixel_stats(*images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean/std on the [0, 1] scale, from a histogram (no float copy)."""
    means, stds = [], []
    levels = torch.arange(256, dtype=torch.float64) / 255
    for ch in range(images[0].shape[1]):
        hist = sum(torch.bincount(x[:, ch].reshape(-1), minlength=256) for x in images)
        p = hist.double() / hist.sum()
        mean = (p * levels).sum().item()
        means.append(mean)
        stds.append((p * (levels - mean) ** 2).sum().item() ** 0.5)
    return means, stds


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATASETS_DIR_ENV, raising=False)
    clear_cache()


@pytest.mark.skipif(
    not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file(), reason="no Fashion-MNIST here"
)
def test_real_fashion_mnist() -> None:
    task = load_task("fashion-mnist")  # the embedded default folder
    assert task.format == "idx"
    assert (len(task.train), len(task.val), len(task.test)) == (55000, 5000, 10000)
    assert tuple(task.train.images.shape[1:]) == (1, 28, 28)
    # The official test set has exactly 1000 images per class; val is a random 5000 of
    # the training set, so roughly 500 per class.
    assert torch.bincount(task.test.labels).tolist() == [1000] * 10
    assert torch.bincount(task.val.labels, minlength=10).min() > 400
    # The documented mean/std are those of the full 60000-image training set.
    mean, std = pixel_stats(task.train.images, task.val.images)
    assert abs(mean[0] - 0.2860) < 5e-4
    assert abs(std[0] - 0.3530) < 5e-4
    x, y = next(iter(task.batches("val", 256)))
    assert x.shape == (256, 1, 28, 28) and y.shape == (256,)


@pytest.mark.skipif(SHARED_CIFAR is None, reason="no shared CIFAR-10 npz copy here")
def test_shared_cifar10_npz() -> None:
    task = load_task("cifar10", SHARED_CIFAR)
    assert task.format == "npz"
    assert (len(task.train), len(task.val), len(task.test)) == (20000, 5000, 10000)
    assert tuple(task.test.images.shape[1:]) == (3, 32, 32)
    # Files are sorted by class; the seeded split must still give a balanced val set.
    assert torch.bincount(task.val.labels, minlength=10).min() > 420
    mean, _ = pixel_stats(task.train.images, task.val.images)
    for got, want in zip(mean, TASKS["cifar10"].mean, strict=True):
        assert abs(got - want) < 3e-3
