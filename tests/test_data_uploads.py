"""Uploaded datasets: each standard format decodes to the same arrays, every bad upload is a
DatasetError that names the file and what is wrong, and a stored task loads by name."""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from data_files import cifar_batch_dict, idx_bytes, py2_pickle

from nas_service.data import (
    DatasetError,
    UploadLimits,
    clear_cache,
    decode_upload,
    forget_task,
    get_task,
    load_task,
    read_stored_task,
    register_task,
    store_task,
)
from nas_service.data.uploads import check_task_name, task_spec_for

LIMITS = UploadLimits(min_per_class=3, max_bytes=4 * 1024 * 1024)


def dataset(n: int = 60, shape: tuple[int, ...] = (1, 12, 12), classes: int = 3,
            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, *shape), dtype=np.uint8),
            np.arange(n, dtype=np.int64) % classes)


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def tar_bytes(members: dict[str, bytes], gz: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def error(files: list[tuple[str, bytes]], *fragments: str, **kwargs: object) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        decode_upload(files, LIMITS, **kwargs)  # type: ignore[arg-type]
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {info.value}"
    return info.value


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_npz_layouts_decode_to_nchw(layout: str) -> None:
    x, y = dataset()
    stored = {"NHW": x[:, 0], "NHWC": x.transpose(0, 2, 3, 1), "NCHW": x}[layout]
    upload = decode_upload([("mine.npz", npz_bytes(x=stored, y=y))], LIMITS)
    assert upload.format == "npz" and upload.input_shape == (1, 12, 12)
    assert np.array_equal(upload.train_images, x) and np.array_equal(upload.train_labels, y)
    assert upload.num_classes == 3 and upload.test_images is None


def test_npz_with_a_test_split_and_rgb_images() -> None:
    x, y = dataset(shape=(3, 10, 10))
    xt, yt = dataset(n=9, shape=(3, 10, 10), seed=1)
    upload = decode_upload([("d.npz", npz_bytes(x=x.transpose(0, 2, 3, 1), y=y,
                                                 x_test=xt.transpose(0, 2, 3, 1), y_test=yt))],
                           LIMITS)
    assert upload.input_shape == (3, 10, 10)
    assert np.array_equal(upload.test_images, xt) and np.array_equal(upload.test_labels, yt)


def test_idx_pairs_with_and_without_gzip() -> None:
    x, y = dataset()
    xt, yt = dataset(n=12, seed=2)
    files = [("train-images-idx3-ubyte.gz", gzip.compress(idx_bytes(x[:, 0]))),
             ("train-labels-idx1-ubyte", idx_bytes(y)),
             ("t10k-images-idx3-ubyte", idx_bytes(xt[:, 0])),
             ("t10k-labels-idx1-ubyte.gz", gzip.compress(idx_bytes(yt)))]
    upload = decode_upload(files, LIMITS)
    assert upload.format == "idx"
    assert np.array_equal(upload.train_images, x) and np.array_equal(upload.test_labels, yt)


def cifar_members(n: int = 30, side: int = 8) -> tuple[dict[str, bytes], np.ndarray]:
    x, y = dataset(n=n, shape=(3, side, side), classes=3)
    half = n // 2
    members = {
        "data_batch_1": py2_pickle(cifar_batch_dict(x[:half], y[:half], b"b1")),
        "data_batch_2": py2_pickle(cifar_batch_dict(x[half:], y[half:], b"b2")),
        "test_batch": py2_pickle(cifar_batch_dict(x[:6], y[:6], b"t")),
        "batches.meta": py2_pickle({b"label_names": [b"cat", b"dog", b"emu"]}),
    }
    return members, x


def test_cifar_python_batches_as_files_and_as_a_tar() -> None:
    members, x = cifar_members()
    as_files = decode_upload(list(members.items()), LIMITS)
    as_tar = decode_upload([("cifar.tar.gz", tar_bytes(
        {f"cifar-10-batches-py/{k}": v for k, v in members.items()}))], LIMITS)
    for upload in (as_files, as_tar):
        assert upload.format == "cifar-python" and upload.input_shape == (3, 8, 8)
        assert np.array_equal(upload.train_images, x)
        assert upload.class_names == ("cat", "dog", "emu")
        assert len(upload.test_labels) == 6


# --------------------------------------------------------------------------- bad uploads


def test_wrong_shapes_dtypes_nan_and_labels() -> None:
    x, y = dataset()
    error([("a.npz", npz_bytes(x=x.astype(np.float32) / 255, y=y))], "dtype float32", "a.npz")
    nan = x.astype(np.float32)
    nan[3, 0, 2, 2] = np.nan
    error([("a.npz", npz_bytes(x=nan, y=y))], "NaN", "flat index")
    error([("a.npz", npz_bytes(x=x[:, :, :, :, None], y=y))], "shape")
    error([("a.npz", npz_bytes(x=x, y=y[:-1]))], "60 images but 59 labels")
    bad = y.copy()
    bad[7] = -1
    error([("a.npz", npz_bytes(x=x, y=bad))], "label -1 at index 7", "out of range")
    error([("a.npz", npz_bytes(x=x, y=y))], "label 2 at index 2", num_classes=2)
    error([("a.npz", npz_bytes(x=x, y=y.astype(np.float64)))], "labels have dtype float64")
    error([("a.npz", npz_bytes(x=x, y=np.zeros(60, np.int64)))], "1 classes")
    error([("a.npz", npz_bytes(x=x[:, :, :4, :4], y=y))], "height 4", "outside [8, 64]")
    error([("a.npz", npz_bytes(x=x[:8], y=y[:8]))], "class 2 has 2 training images")
    error([("a.npz", npz_bytes(x=x))], "lacks array(s) y")
    error([("a.npz", npz_bytes(x=x, y=y)), ("b.txt", b"")], "one file")


def test_truncated_and_corrupt_files() -> None:
    x, y = dataset()
    data = npz_bytes(x=x, y=y)
    error([("a.npz", data[: len(data) // 2])], "a.npz")
    data = idx_bytes(x[:, 0])
    error([("train-images-idx3-ubyte", data[:-5]), ("train-labels-idx1-ubyte", idx_bytes(y))],
          "truncated", "train-images-idx3-ubyte")
    error([("train-images-idx3-ubyte.gz", gzip.compress(data)[:-20]),
           ("train-labels-idx1-ubyte", idx_bytes(y))], "gzip")
    error([("x.bin", b"\0\0\0\0\0\0\0\0")], "magic number 0", "x.bin")
    members, _ = cifar_members()
    error([("data_batch_1", members["data_batch_1"][:-40])], "corrupt pickle", "data_batch_1")
    error([("c.tar.gz", tar_bytes(members)[:200])], "c.tar.gz")


def test_archives_with_paths_outside_their_folder_or_links() -> None:
    members, _ = cifar_members()
    error([("c.tar", tar_bytes({"../data_batch_1": members["data_batch_1"]}, gz=False))],
          "outside the archive's folder", "c.tar")
    error([("c.tar", tar_bytes({"/etc/data_batch_1": members["data_batch_1"]}))],
          "outside the archive's folder")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as archive:
        link = tarfile.TarInfo("data_batch_1")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    error([("c.tar", buf.getvalue())], "link or a device")


def test_huge_declared_sizes_are_refused_before_allocating() -> None:
    # A zip bomb: 8 MiB of zeros compress to a few KiB but declare more than the limit.
    x = np.zeros((8 * 1024, 32, 32), np.uint8)
    error([("bomb.npz", npz_bytes(x=x, y=np.zeros(len(x), np.int64)))], "upload limit")
    # An .npy header declaring a shape far beyond what its member holds.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "|u1", "fortran_order": False, "shape": (10**9, 28, 28)})
        archive.writestr("x.npy", header.getvalue() + b"\0" * 100)
        archive.writestr("y.npy", header.getvalue())
    error([("forged.npz", buf.getvalue())], "declares shape (1000000000, 28, 28)")
    # A gzip stream that inflates past the limit.
    error([("train-images-idx3-ubyte.gz", gzip.compress(b"\0" * (5 * 1024 * 1024))),
           ("train-labels-idx1-ubyte", b"")], "inflates to more than")
    # An idx header that declares more images than the file holds.
    error([("train-images-idx3-ubyte", idx_bytes(np.zeros((1, 12, 12), np.uint8))[:8]
            + (10**6).to_bytes(4, "big") + (12).to_bytes(4, "big") + b"\0" * 144),
           ("train-labels-idx1-ubyte", idx_bytes(np.zeros(1, np.uint8)))], "truncated")


def test_unsafe_pickles_are_refused() -> None:
    import pickle

    class Evil:
        def __reduce__(self) -> tuple:
            return (print, ("pwned",))

    error([("data_batch_1", pickle.dumps({"data": Evil(), "labels": [0]}))],
          "refusing to load global builtins.print")


def test_task_names() -> None:
    assert check_task_name("my-task-2") == "my-task-2"
    for bad in ("", "Upper", "a/b", "-lead", "x" * 64, "fashion-mnist", "cifar-10", "a_b"):
        with pytest.raises(DatasetError):
            check_task_name(bad)


# --------------------------------------------------------------------------- stored tasks


def test_a_stored_task_loads_by_name(tmp_path: Path) -> None:
    x, y = dataset(n=90)
    upload = decode_upload([("d.npz", npz_bytes(x=x, y=y))], LIMITS)
    spec = task_spec_for("tiny-upload", upload, tmp_path / "tiny-upload")
    store_task(spec, upload)
    assert read_stored_task(tmp_path / "tiny-upload") == spec
    register_task(spec)
    try:
        clear_cache()
        assert get_task("tiny-upload") is spec
        data = load_task("tiny-upload")
        assert len(data.test) == 15 and len(data.train) + len(data.val) == 75
        assert data.val.images.shape[1:] == (1, 12, 12)
        seen = torch.cat([data.train.images, data.val.images, data.test.images])
        assert sorted(map(bytes, seen.numpy())) == sorted(map(bytes, x))
        with pytest.raises(DatasetError, match="another task"):
            register_task(task_spec_for("tiny-upload", upload, tmp_path / "elsewhere"))
    finally:
        forget_task("tiny-upload")
        clear_cache()
    with pytest.raises(DatasetError, match="unknown task"):
        get_task("tiny-upload")
