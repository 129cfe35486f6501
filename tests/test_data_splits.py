"""Task registry, folder resolution, the fixed val split, caching, normalisation, batching."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from data_files import write_cifar_npz, write_idx_task
from hypothesis import given, settings
from hypothesis import strategies as st

import nas_service.data.loader as loader_module
from nas_service.data import (
    DATASETS_DIR_ENV,
    SPLITS,
    TASKS,
    DatasetError,
    TaskData,
    clear_cache,
    get_task,
    list_tasks,
    load_task,
    normalize,
    random_crop_flip,
    resolve_root,
    split_indices,
)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATASETS_DIR_ENV, raising=False)
    clear_cache()


@pytest.fixture
def mnist_dir(tmp_path: Path) -> Path:
    write_idx_task(tmp_path / "mnist", 400, 70)
    return tmp_path / "mnist"


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    write_cifar_npz(tmp_path / "cifar10", 300, 40)
    return tmp_path / "cifar10"


# --------------------------------------------------------------------------- registry


def test_registry() -> None:
    assert list_tasks() == ["cifar10", "fashion-mnist", "gcide-chars", "mnist"]
    fm, mn, c10 = TASKS["fashion-mnist"], TASKS["mnist"], TASKS["cifar10"]
    assert (fm.input_shape, fm.mean, fm.std) == ((1, 28, 28), (0.2860,), (0.3530,))
    assert (mn.input_shape, mn.mean, mn.std) == ((1, 28, 28), (0.1307,), (0.3081,))
    assert c10.input_shape == (3, 32, 32)
    assert c10.mean == (0.4914, 0.4822, 0.4465)
    assert c10.std == (0.2470, 0.2435, 0.2616)
    assert fm.default_root == "/usr/share/datasets/fashion-mnist"
    assert c10.default_root is None
    for spec in (fm, mn, c10):
        assert spec.num_classes == len(spec.class_names) == 10
        assert spec.val_size == 5000
    assert c10.augment_flip and not fm.augment_flip and not mn.augment_flip
    assert (fm.augment_pad, c10.augment_pad) == (2, 4)
    assert c10.class_names[0] == "airplane" and fm.class_names[9] == "Ankle boot"


@pytest.mark.parametrize(
    ("alias", "name"),
    [("CIFAR-10", "cifar10"), ("fashion_mnist", "fashion-mnist"), (" MNIST ", "mnist")],
)
def test_get_task_aliases(alias: str, name: str) -> None:
    assert get_task(alias) is TASKS[name]


def test_task_spec_is_frozen() -> None:
    with pytest.raises(AttributeError):
        TASKS["mnist"].val_size = 1  # type: ignore[misc]


# --------------------------------------------------------------------------- folders


def test_resolve_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = get_task("fashion-mnist")
    assert resolve_root(spec)[0] == Path("/usr/share/datasets/fashion-mnist")
    monkeypatch.setenv(DATASETS_DIR_ENV, str(tmp_path))
    assert resolve_root(spec)[0] == tmp_path / "fashion-mnist"
    assert resolve_root(spec, tmp_path / "explicit")[0] == tmp_path / "explicit"
    monkeypatch.setenv(DATASETS_DIR_ENV, "")  # empty means unset
    assert resolve_root(get_task("mnist"))[0] == Path("/usr/share/datasets/mnist")
    with pytest.raises(DatasetError, match=DATASETS_DIR_ENV):
        resolve_root(get_task("cifar10"))


def test_load_from_env_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_idx_task(tmp_path / "fashion-mnist", 100, 10)
    monkeypatch.setenv(DATASETS_DIR_ENV, str(tmp_path))
    task = load_task("fashion-mnist", val_size=20)
    assert task.root == tmp_path / "fashion-mnist"
    assert len(task.train) == 80


def test_explicit_root_beats_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_idx_task(tmp_path / "env" / "mnist", 100, 10)
    write_idx_task(tmp_path / "explicit", 150, 10)
    monkeypatch.setenv(DATASETS_DIR_ENV, str(tmp_path / "env"))
    assert len(load_task("mnist", tmp_path / "explicit", val_size=20).train) == 130


# --------------------------------------------------------------------------- split


def test_split_golden_values() -> None:
    """The val split of a full-size training set must never change (scores depend on it)."""
    for n, first, digest in [
        (60000, [40, 69, 75, 101, 110, 115, 125, 142], "6498afb962bdd1e4"),
        (50000, [19, 40, 69, 75, 86, 90, 91, 101], "031b02b02734985e"),
    ]:
        train, val = split_indices(n, 5000)
        assert val[:8].tolist() == first
        assert hashlib.sha256(val.astype("<i8").tobytes()).hexdigest()[:16] == digest
        assert len(train) == n - 5000


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 3000),
    frac=st.floats(0, 0.99),
    limit=st.one_of(st.none(), st.integers(1, 4000)),
)
def test_split_properties(n: int, frac: float, limit: int | None) -> None:
    val_size = min(int(n * frac), n - 1)
    train, val = split_indices(n, val_size, limit_train=limit)
    assert len(val) == val_size
    assert len(np.intersect1d(train, val)) == 0
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)  # sorted, unique
    full_train, val2 = split_indices(n, val_size)
    np.testing.assert_array_equal(val, val2)  # val does not depend on limit_train
    assert np.array_equal(np.union1d(full_train, val), np.arange(n))  # cover
    assert len(train) == (n - val_size if limit is None else min(limit, n - val_size))
    assert np.isin(train, full_train).all()
    if limit is not None and limit > 1:
        smaller, _ = split_indices(n, val_size, limit_train=limit // 2)
        assert np.isin(smaller, train).all()  # nested subsets
    # smaller validation sets are subsets of larger ones
    _, half_val = split_indices(n, val_size // 2)
    assert np.isin(half_val, val).all()


def test_split_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError):
        split_indices(10, 10)
    with pytest.raises(ValueError):
        split_indices(10, -1)


def test_val_split_fixed_and_disjoint(mnist_dir: Path) -> None:
    a = load_task("mnist", mnist_dir, val_size=100)
    clear_cache()
    b = load_task("mnist", mnist_dir, val_size=100)
    assert torch.equal(a.val_indices, b.val_indices)
    assert torch.equal(a.val.images, b.val.images)
    assert not set(a.val_indices.tolist()) & set(a.train_indices.tolist())
    assert len(a.train) + len(a.val) == 400
    # val is not just the tail or head of the file: it is spread over the whole range
    assert a.val_indices.min() < 100 and a.val_indices.max() > 300


def test_limit_train(mnist_dir: Path) -> None:
    full = load_task("mnist", mnist_dir, val_size=100)
    small = load_task("mnist", mnist_dir, val_size=100, limit_train=50)
    assert len(small.train) == 50
    assert torch.equal(small.val_indices, full.val_indices)
    assert torch.equal(small.test.images, full.test.images)
    assert set(small.train_indices.tolist()) <= set(full.train_indices.tolist())
    assert len(load_task("mnist", mnist_dir, val_size=100, limit_train=10**6).train) == 300
    with pytest.raises(ValueError):
        load_task("mnist", mnist_dir, limit_train=0)


# --------------------------------------------------------------------------- cache


def test_cache_decodes_once_and_notices_changes(
    mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real_decode = loader_module.decode

    def counting_decode(*args, **kwargs):
        calls.append(1)
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(loader_module, "decode", counting_decode)
    load_task("mnist", mnist_dir, val_size=100)
    load_task("mnist", mnist_dir / ".." / "mnist", val_size=50)  # same resolved folder
    assert len(calls) == 1
    write_idx_task(mnist_dir, 500, 70, seed=3)  # rewritten files: different size
    assert len(load_task("mnist", mnist_dir, val_size=100).train) == 400
    assert len(calls) == 2


def test_loads_do_not_share_tensors(mnist_dir: Path) -> None:
    a = load_task("mnist", mnist_dir, val_size=100)
    b = load_task("mnist", mnist_dir, val_size=100)
    before = b.train.images.clone(), b.test.images.clone()
    a.train.images.zero_()
    a.test.images.zero_()
    assert torch.equal(b.train.images, before[0])
    assert torch.equal(b.test.images, before[1])


# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_normalize_formula(name: str) -> None:
    spec = get_task(name)
    c = spec.input_shape[0]
    x = torch.arange(256, dtype=torch.uint8).repeat(c, 1).view(c, 16, 16)
    out = normalize(x, spec)
    assert out.dtype == torch.float32
    mean = torch.tensor(spec.mean).view(c, 1, 1)
    std = torch.tensor(spec.std).view(c, 1, 1)
    torch.testing.assert_close(
        out, (x.double() / 255 - mean.double()) / std.double(), check_dtype=False
    )
    assert x.dtype == torch.uint8  # input untouched


def test_normalize_synthetic_known_stats() -> None:
    """Pixels drawn with exactly the task's mean/std come out with mean 0 and std 1."""
    spec = get_task("cifar10")
    rng = np.random.default_rng(0)
    n = 200_000
    imgs = np.empty((n, 3, 1, 1), dtype=np.uint8)
    for ch, (m, s) in enumerate(zip(spec.mean, spec.std, strict=True)):
        # a two-point distribution a/b with probability p has mean m and std s exactly,
        # up to rounding the points to whole grey levels
        p = 0.5
        a, b = round((m - s) * 255), round((m + s) * 255)
        imgs[:, ch, 0, 0] = np.where(rng.random(n) < p, a, b)
    out = normalize(torch.from_numpy(imgs), spec)
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=0.02)
    assert torch.allclose(out.std(dim=(0, 2, 3)), torch.ones(3), atol=0.02)


def test_normalize_rejects_bad_input() -> None:
    spec = get_task("mnist")
    with pytest.raises(TypeError):
        normalize(torch.zeros(2, 1, 28, 28), spec)
    with pytest.raises(ValueError):
        normalize(torch.zeros(2, 3, 28, 28, dtype=torch.uint8), spec)


def test_tensors(cifar_dir: Path) -> None:
    task = load_task("cifar10", cifar_dir, val_size=60)
    for split in SPLITS:
        x, y = task.tensors(split)
        s = task.split(split)
        assert x.dtype == torch.float32 and tuple(x.shape) == tuple(s.images.shape)
        assert torch.equal(y, s.labels)
        torch.testing.assert_close(x, task.normalize(s.images))
    with pytest.raises(ValueError):
        task.split("validation")


# --------------------------------------------------------------------------- batches


def test_batches_in_order(cifar_dir: Path) -> None:
    task = load_task("cifar10", cifar_dir, val_size=60)
    batches = list(task.batches("train", 64))
    assert [len(y) for _, y in batches] == [64, 64, 64, 48]
    assert len(batches) == task.num_batches("train", 64)
    x_all, y_all = task.tensors("train")
    torch.testing.assert_close(torch.cat([x for x, _ in batches]), x_all)
    assert torch.equal(torch.cat([y for _, y in batches]), y_all)
    for x, y in batches:
        assert x.dtype == torch.float32 and tuple(x.shape[1:]) == (3, 32, 32)
        assert y.dtype == torch.int64
    dropped = list(task.batches("train", 64, drop_last=True))
    assert [len(y) for _, y in dropped] == [64, 64, 64]
    assert task.num_batches("train", 64, drop_last=True) == 3


def test_batches_shuffle_seeded(cifar_dir: Path) -> None:
    task = load_task("cifar10", cifar_dir, val_size=60)

    def labels(**kw) -> torch.Tensor:
        return torch.cat([y for _, y in task.batches("train", 50, shuffle=True, **kw)])

    a, b, c = labels(seed=1), labels(seed=1), labels(seed=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # a permutation of the split: every example exactly once
    assert torch.equal(a.sort().values, task.train.labels.sort().values)
    xa = torch.cat([x for x, _ in task.batches("train", 50, shuffle=True, seed=1)])
    xb = torch.cat([x for x, _ in task.batches("train", 50, shuffle=True, seed=1)])
    assert torch.equal(xa, xb)
    assert not torch.equal(labels(), labels())  # seed=None: fresh randomness (p≈0 of tie)


def test_batches_arguments_checked_eagerly(cifar_dir: Path) -> None:
    task = load_task("cifar10", cifar_dir, val_size=60)
    with pytest.raises(ValueError):
        task.batches("train", 0)
    with pytest.raises(ValueError):
        task.batches("dev", 8)


def _is_shifted_crop(out: np.ndarray, img: np.ndarray, pad: int, flips: bool) -> bool:
    c, h, w = img.shape
    padded = np.pad(img, ((0, 0), (pad, pad), (pad, pad)))
    for cand in [padded, padded[:, :, ::-1]] if flips else [padded]:
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                if np.array_equal(cand[:, dy : dy + h, dx : dx + w], out):
                    return True
    return False


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_random_crop_flip(name: str) -> None:
    spec = get_task(name)
    c, h, w = spec.input_shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (64, c, h, w), dtype=torch.uint8, generator=gen)
    out = random_crop_flip(x, spec.augment_pad, spec.augment_flip, torch.Generator().manual_seed(5))
    again = random_crop_flip(
        x, spec.augment_pad, spec.augment_flip, torch.Generator().manual_seed(5)
    )
    assert torch.equal(out, again) and out.dtype == torch.uint8 and out.shape == x.shape
    xs, outs = x.numpy(), out.numpy()
    for i in range(len(x)):
        assert _is_shifted_crop(outs[i], xs[i], spec.augment_pad, spec.augment_flip)
    # pixels of 0 only come from the padding (x has none): some crops are shifted
    assert (outs == 0).any()
    unflipped = [_is_shifted_crop(outs[i], xs[i], spec.augment_pad, False) for i in range(len(x))]
    if spec.augment_flip:
        assert not all(unflipped)  # some images were mirrored
    else:
        assert all(unflipped)  # digits are never mirrored
    assert torch.equal(random_crop_flip(x, 0, False), x)


def test_batches_augment(cifar_dir: Path) -> None:
    task = load_task("cifar10", cifar_dir, val_size=60)
    plain = torch.cat([x for x, _ in task.batches("train", 100, seed=3)])
    aug1 = torch.cat([x for x, _ in task.batches("train", 100, seed=3, augment=True)])
    aug2 = torch.cat([x for x, _ in task.batches("train", 100, seed=3, augment=True)])
    assert torch.equal(aug1, aug2)
    assert aug1.shape == plain.shape and not torch.equal(aug1, plain)


def test_task_data_is_frozen(cifar_dir: Path) -> None:
    task = load_task("cifar10", cifar_dir, val_size=60)
    assert isinstance(task, TaskData)
    with pytest.raises(AttributeError):
        task.train = task.val  # type: ignore[misc]
