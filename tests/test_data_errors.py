"""Every malformed or missing input raises DatasetError with a message that helps fix it."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from data_files import (
    IDX_NAMES,
    cifar_batch_dict,
    idx_bytes,
    py2_pickle,
    write_cifar_binary,
    write_cifar_npz,
    write_cifar_python,
    write_idx_task,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nas_service.data import (
    DATASETS_DIR_ENV,
    DatasetError,
    clear_cache,
    get_task,
    load_task,
    restricted_unpickle,
)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATASETS_DIR_ENV, raising=False)
    clear_cache()


def load_error(name: str, root: Path, *fragments: str, val_size: int = 20) -> DatasetError:
    """Load, expect a DatasetError naming task + folder + every fragment; return it."""
    with pytest.raises(DatasetError) as info:
        load_task(name, root, val_size=val_size)
    err = info.value
    msg = str(err)
    assert f"'{get_task(name).name}'" in msg
    assert str(root) in msg
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"
    return err


# --------------------------------------------------------------------------- names, folders


def test_unknown_task_lists_known_names() -> None:
    with pytest.raises(DatasetError) as info:
        load_task("imagenet")
    msg = str(info.value)
    assert "imagenet" in msg
    for known in ("fashion-mnist", "mnist", "cifar10"):
        assert known in msg


def test_missing_folder(tmp_path: Path) -> None:
    load_error("mnist", tmp_path / "nope", "does not exist", "root argument")


def test_folder_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    load_error("mnist", tmp_path / "f", "not a folder")


def test_missing_folder_from_env_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATASETS_DIR_ENV, str(tmp_path))
    with pytest.raises(DatasetError) as info:
        load_task("cifar10")
    msg = str(info.value)
    assert str(tmp_path / "cifar10") in msg
    assert DATASETS_DIR_ENV in msg


def test_cifar_without_any_folder_setting() -> None:
    with pytest.raises(DatasetError, match=DATASETS_DIR_ENV):
        load_task("cifar10")


# --------------------------------------------------------------------------- idx


@pytest.mark.parametrize("role", list(IDX_NAMES))
def test_idx_missing_file_names_it_and_lists_expected(tmp_path: Path, role: str) -> None:
    write_idx_task(tmp_path, 60, 10)
    (tmp_path / f"{IDX_NAMES[role]}.gz").unlink()
    err = load_error("fashion-mnist", tmp_path, f"missing {IDX_NAMES[role]}(.gz)")
    for stem in IDX_NAMES.values():
        assert f"{stem}.gz" in str(err)


def test_idx_bad_magic(tmp_path: Path) -> None:
    write_idx_task(tmp_path, 60, 10, gz=False)
    path = tmp_path / IDX_NAMES["test_images"]
    data = bytearray(path.read_bytes())
    data[3] = 0x04  # 0x00000804: a 4-d idx file
    path.write_bytes(bytes(data))
    err = load_error("mnist", tmp_path, "bad idx magic number 2052", "2051")
    assert err.filename == IDX_NAMES["test_images"]


def test_idx_images_and_labels_swapped(tmp_path: Path) -> None:
    write_idx_task(tmp_path, 60, 10, gz=False)
    a, b = tmp_path / IDX_NAMES["train_images"], tmp_path / IDX_NAMES["train_labels"]
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)
    load_error("mnist", tmp_path, "2049", "swapped")


@pytest.mark.parametrize("cut", [10, 0.5, -9])
def test_idx_truncated_gzip(tmp_path: Path, cut: float) -> None:
    write_idx_task(tmp_path, 60, 10)
    path = tmp_path / f"{IDX_NAMES['train_images']}.gz"
    data = path.read_bytes()
    n = int(len(data) * cut) if isinstance(cut, float) else cut % len(data)
    path.write_bytes(data[:n])
    err = load_error("fashion-mnist", tmp_path, "gzip")
    assert err.filename == path.name


def test_idx_corrupt_gzip_crc(tmp_path: Path) -> None:
    write_idx_task(tmp_path, 60, 10)
    path = tmp_path / f"{IDX_NAMES['test_labels']}.gz"
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # CRC32 of the member
    path.write_bytes(bytes(data))
    load_error("fashion-mnist", tmp_path, "corrupt or truncated gzip", path.name)


def test_idx_gz_name_but_not_gzip(tmp_path: Path) -> None:
    write_idx_task(tmp_path, 60, 10)
    path = tmp_path / f"{IDX_NAMES['test_labels']}.gz"
    path.write_bytes(b"<html>404 not found</html>")
    load_error("fashion-mnist", tmp_path, "not gzip-compressed")


def test_idx_truncated_payload(tmp_path: Path) -> None:
    write_idx_task(tmp_path, 60, 10, gz=False)
    path = tmp_path / IDX_NAMES["train_images"]
    path.write_bytes(path.read_bytes()[:-100])
    load_error("mnist", tmp_path, "truncated", "60 images")


def test_idx_trailing_bytes(tmp_path: Path) -> None:
    write_idx_task(tmp_path, 60, 10, gz=False)
    path = tmp_path / IDX_NAMES["test_labels"]
    path.write_bytes(path.read_bytes() + b"\x00")
    load_error("mnist", tmp_path, "trailing bytes")


@pytest.mark.parametrize("size", [0, 3, 10])
def test_idx_short_header(tmp_path: Path, size: int) -> None:
    write_idx_task(tmp_path, 60, 10, gz=False)
    path = tmp_path / IDX_NAMES["train_labels"]
    path.write_bytes(path.read_bytes()[:size])
    load_error("mnist", tmp_path, IDX_NAMES["train_labels"])


def test_idx_count_mismatch(tmp_path: Path) -> None:
    write_idx_task(tmp_path, 60, 10)
    labels = np.zeros(59, dtype=np.uint8)
    (tmp_path / f"{IDX_NAMES['train_labels']}.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    load_error("fashion-mnist", tmp_path, "count mismatch", "60 images", "59 labels")


def test_idx_label_out_of_range(tmp_path: Path) -> None:
    write_idx_task(tmp_path, 60, 10)
    labels = np.zeros(10, dtype=np.uint8)
    labels[7] = 10
    (tmp_path / f"{IDX_NAMES['test_labels']}.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    load_error("fashion-mnist", tmp_path, "label out of range", "10 at index 7", "[0, 10)")


def test_idx_wrong_image_size(tmp_path: Path) -> None:
    write_idx_task(tmp_path, 60, 10, gz=False)
    images = np.zeros((10, 32, 32), dtype=np.uint8)
    (tmp_path / IDX_NAMES["test_images"]).write_bytes(idx_bytes(images))
    load_error("mnist", tmp_path, "32x32", "28x28")


def test_unreadable_file(tmp_path: Path) -> None:
    write_idx_task(tmp_path, 60, 10, gz=False)
    path = tmp_path / IDX_NAMES["test_labels"]
    path.unlink()
    path.mkdir()  # exists, but reading it fails: reported as missing (not a file)
    load_error("mnist", tmp_path, "missing")


def test_too_few_images_for_validation(tmp_path: Path) -> None:
    write_idx_task(tmp_path, 60, 10)
    with pytest.raises(DatasetError, match="too few"):
        load_task("fashion-mnist", tmp_path)  # default val_size 5000 > 60


# --------------------------------------------------------------------------- CIFAR


def test_cifar_nothing_found_lists_every_format(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hi")
    load_error(
        "cifar10",
        tmp_path,
        "no CIFAR-10 files found",
        "data_batch_1",
        "test_batch",
        "data_batch_1.bin",
        "test_batch.bin",
        "train.npz",
        "train_part0.npz",
        "test.npz",
        "cifar-10-batches-py",
    )


def test_cifar_python_incomplete(tmp_path: Path) -> None:
    write_cifar_python(tmp_path / "cifar-10-batches-py", 10, 5)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    load_error("cifar10", tmp_path, "incomplete cifar-python", "missing data_batch_3")


def test_cifar_binary_incomplete(tmp_path: Path) -> None:
    write_cifar_binary(tmp_path, 10, 5)
    (tmp_path / "test_batch.bin").unlink()
    load_error("cifar10", tmp_path, "incomplete cifar-binary", "missing test_batch.bin")


def test_cifar_binary_truncated(tmp_path: Path) -> None:
    write_cifar_binary(tmp_path, 10, 5)
    path = tmp_path / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[:-1])
    err = load_error("cifar10", tmp_path, "not a positive multiple of 3073")
    assert err.filename == "data_batch_2.bin"


def test_cifar_binary_label_out_of_range(tmp_path: Path) -> None:
    write_cifar_binary(tmp_path, 10, 5)
    path = tmp_path / "test_batch.bin"
    data = bytearray(path.read_bytes())
    data[3073 * 2] = 200  # label byte of record 2
    path.write_bytes(bytes(data))
    load_error("cifar10", tmp_path, "label out of range", "200 at index 2")


@pytest.mark.parametrize("cut", [0, 1, 100, -5])
def test_cifar_python_truncated_pickle(tmp_path: Path, cut: int) -> None:
    write_cifar_python(tmp_path, 10, 5)
    path = tmp_path / "data_batch_4"
    path.write_bytes(path.read_bytes()[:cut] if cut >= 0 else path.read_bytes()[:cut])
    err = load_error("cifar10", tmp_path, "pickle")
    assert err.filename == "data_batch_4"


def test_cifar_python_garbage(tmp_path: Path) -> None:
    write_cifar_python(tmp_path, 10, 5)
    (tmp_path / "test_batch").write_bytes(os.urandom(3000))
    load_error("cifar10", tmp_path, "test_batch")


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: d.pop(b"labels"), "needs keys b'data' and b'labels'"),
        (lambda d: d.__setitem__(b"labels", d[b"labels"][:-1]), "count mismatch"),
        (lambda d: d.__setitem__(b"labels", [11] * len(d[b"labels"])), "label out of range"),
        (lambda d: d.__setitem__(b"labels", [b"cat"] * len(d[b"labels"])), "flat list of ints"),
        (lambda d: d.__setitem__(b"data", d[b"data"][:, :3000]), "3000 values"),
        (lambda d: d.__setitem__(b"data", d[b"data"].astype(np.float32)), "uint8"),
        (lambda d: d.__setitem__(b"data", [1, 2, 3]), "got list"),
    ],
    ids=["no-labels", "count", "range", "str-labels", "row-size", "dtype", "not-array"],
)
def test_cifar_python_bad_contents(tmp_path: Path, mutate, fragment: str) -> None:
    write_cifar_python(tmp_path, 10, 5)
    path = tmp_path / "data_batch_5"
    batch = pickle.loads(path.read_bytes(), encoding="bytes")  # our own trusted file
    mutate(batch)
    path.write_bytes(pickle.dumps(batch, protocol=2))
    err = load_error("cifar10", tmp_path, fragment)
    assert err.filename == "data_batch_5"


def test_cifar_python_not_a_dict(tmp_path: Path) -> None:
    write_cifar_python(tmp_path, 10, 5)
    (tmp_path / "test_batch").write_bytes(py2_pickle([1, 2, 3]))
    load_error("cifar10", tmp_path, "expected a pickled dict, got list")


class _Evil:
    def __init__(self, func, arg) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


@pytest.mark.parametrize(
    "func", [os.system, eval, subprocess.getoutput], ids=["os.system", "eval", "subprocess"]
)
def test_restricted_unpickler_refuses_malicious_pickle(tmp_path: Path, func) -> None:
    marker = tmp_path / "pwned"
    command = f"open({str(marker)!r}, 'w')" if func is eval else f"touch {marker}"
    write_cifar_python(tmp_path, 10, 5)
    batch = cifar_batch_dict(np.zeros((5, 3072), np.uint8), np.zeros(5), b"evil")
    batch[b"batch_label"] = _Evil(func, command)
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    err = load_error("cifar10", tmp_path, "refusing to load global", func.__name__)
    assert err.filename == "test_batch"
    assert not marker.exists()


def test_restricted_unpickle_accepts_plain_data_and_refuses_globals() -> None:
    data = {b"a": [1, 2, b"x", "y"], "b": np.arange(6, dtype=np.uint8).reshape(2, 3)}
    for protocol in (2, 3, 4, 5):
        out = restricted_unpickle(pickle.dumps(data, protocol=protocol))
        assert out[b"a"] == data[b"a"]
        np.testing.assert_array_equal(out["b"], data["b"])
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system"):
        restricted_unpickle(pickle.dumps(_Evil(os.system, "true")))


# --------------------------------------------------------------------------- npz


def _rewrite_train_npz(tmp_path: Path, **arrays: object) -> None:
    np.savez(tmp_path / "train.npz", **arrays)


@pytest.mark.parametrize(
    ("arrays", "fragments"),
    [
        (
            {"x": np.zeros((60, 28, 28, 3), np.uint8), "y": np.zeros(60, int)},
            ["shape (60, 28, 28, 3)"],
        ),
        ({"x": np.zeros((60, 32, 32), np.uint8), "y": np.zeros(60, int)}, ["(N, 32, 32, 3)"]),
        ({"x": np.zeros((60, 32, 32, 3), np.float32), "y": np.zeros(60, int)}, ["dtype float32"]),
        (
            {"x": np.zeros((60, 32, 32, 3), np.uint8), "y": np.zeros(60, np.float64)},
            ["y has dtype float64"],
        ),
        ({"x": np.zeros((60, 32, 32, 3), np.uint8), "y": np.zeros((60, 2), int)}, ["(60, 2)"]),
        (
            {"x": np.zeros((60, 32, 32, 3), np.uint8), "y": np.zeros(59, int)},
            ["count mismatch", "59"],
        ),
        (
            {"x": np.zeros((60, 32, 32, 3), np.uint8), "y": np.full(60, -1)},
            ["label out of range", "-1"],
        ),
        (
            {"images": np.zeros((60, 32, 32, 3), np.uint8), "y": np.zeros(60, int)},
            ["lacks array(s) x", "images"],
        ),
        (
            {"x": np.zeros((60, 32, 32, 3), np.uint8), "y": np.array([{}] * 60, dtype=object)},
            ["needs pickle"],
        ),
    ],
    ids=["hw", "ndim", "x-dtype", "y-dtype", "y-shape", "count", "range", "key", "object"],
)
def test_npz_malformed(tmp_path: Path, arrays: dict, fragments: list[str]) -> None:
    write_cifar_npz(tmp_path, 60, 10)
    _rewrite_train_npz(tmp_path, **arrays)
    err = load_error("cifar10", tmp_path, *fragments)
    assert err.filename == "train.npz"


def test_npz_that_is_a_pickle(tmp_path: Path) -> None:
    write_cifar_npz(tmp_path, 60, 10)
    (tmp_path / "test.npz").write_bytes(pickle.dumps({"x": 1}))
    load_error("cifar10", tmp_path, "needs pickle which is refused", "test.npz")


def test_npz_that_is_a_single_npy(tmp_path: Path) -> None:
    write_cifar_npz(tmp_path, 60, 10)
    with open(tmp_path / "test.npz", "wb") as f:
        np.save(f, np.zeros(3))
    load_error("cifar10", tmp_path, "not an npz archive")


@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_npz_truncated_zip(tmp_path: Path, keep: float) -> None:
    write_cifar_npz(tmp_path, 60, 10)
    path = tmp_path / "train.npz"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    load_error("cifar10", tmp_path, "train.npz")


def test_npz_corrupt_member(tmp_path: Path) -> None:
    write_cifar_npz(tmp_path, 60, 10)
    path = tmp_path / "train.npz"
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(64)
    path.write_bytes(bytes(data))
    load_error("cifar10", tmp_path, "train.npz")


def test_npz_missing_test(tmp_path: Path) -> None:
    write_cifar_npz(tmp_path, 60, 10)
    (tmp_path / "test.npz").unlink()
    load_error("cifar10", tmp_path, "missing test.npz")


def test_npz_missing_train(tmp_path: Path) -> None:
    write_cifar_npz(tmp_path, 60, 10)
    (tmp_path / "train.npz").unlink()
    load_error("cifar10", tmp_path, "missing train.npz")


def test_npz_ambiguous_layout(tmp_path: Path) -> None:
    write_cifar_npz(tmp_path, 60, 10, parts=2)
    write_cifar_npz(tmp_path, 60, 10)
    load_error("cifar10", tmp_path, "ambiguous")


def test_npz_shard_gap(tmp_path: Path) -> None:
    write_cifar_npz(tmp_path, 90, 10, parts=3)
    (tmp_path / "train_part1.npz").unlink()
    load_error("cifar10", tmp_path, "not contiguous", "train_part1.npz")


def test_errors_carry_structured_fields(tmp_path: Path) -> None:
    write_cifar_binary(tmp_path, 10, 5)
    (tmp_path / "data_batch_1.bin").write_bytes(b"x")
    err = load_error("cifar10", tmp_path)
    assert err.task == "cifar10"
    assert err.root == tmp_path
    assert err.filename == "data_batch_1.bin"
    assert "3073" in err.reason


@pytest.mark.parametrize(
    "payload",
    [
        _Evil(bytes, 2**40),  # allowed global, but would allocate 1 TiB from a tiny file
        _Evil(np.ndarray, (2**20, 2**20)),
        _Evil(np.empty, (2**40,)),
    ],
    ids=["bytes-size", "ndarray-shape", "np.empty"],
)
def test_restricted_unpickler_refuses_memory_bombs(tmp_path: Path, payload: _Evil) -> None:
    write_cifar_python(tmp_path, 10, 5)
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(payload, protocol=2))
    load_error("cifar10", tmp_path, "data_batch_1")


def test_restricted_unpickler_refuses_forged_reconstruct() -> None:
    # _reconstruct itself is allowed (every numpy pickle needs it), but only with the
    # (ndarray, (0,), ...) arguments numpy writes; a huge initial shape is refused.
    forged = (
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        b"J\x00\x00\x00\x40\x85U\x01b\x87R."
    )
    with pytest.raises(pickle.UnpicklingError, match="_reconstruct"):
        restricted_unpickle(forged)


# --------------------------------------------------------------------------- fuzzing

_FUZZ_WRITERS = {
    "idx-gz": ("mnist", lambda d: write_idx_task(d, 30, 5, gz=True)),
    "idx-raw": ("mnist", lambda d: write_idx_task(d, 30, 5, gz=False)),
    "cifar-python": ("cifar10", lambda d: write_cifar_python(d, 6, 5, protocol=2)),
    "cifar-py2": ("cifar10", lambda d: write_cifar_python(d, 6, 5, protocol="py2")),
    "cifar-binary": ("cifar10", lambda d: write_cifar_binary(d, 6, 5)),
    "npz": ("cifar10", lambda d: write_cifar_npz(d, 30, 5)),
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(sorted(_FUZZ_WRITERS)),
    file_pick=st.integers(0, 100),
    edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=0, max_size=4),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
def test_fuzzed_files_raise_only_dataset_error(
    tmp_path_factory: pytest.TempPathFactory,
    fmt: str,
    file_pick: int,
    edits: list[tuple[float, int]],
    cut: float | None,
) -> None:
    """Random byte edits/truncations either still load or raise DatasetError, nothing else."""
    folder = tmp_path_factory.mktemp(fmt)
    name, writer = _FUZZ_WRITERS[fmt]
    writer(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    path = files[file_pick % len(files)]
    data = bytearray(path.read_bytes())
    for pos, value in edits:
        data[min(int(pos * len(data)), len(data) - 1)] = value
    if cut is not None:
        data = data[: int(cut * len(data))]
    path.write_bytes(bytes(data))
    clear_cache()
    try:
        task = load_task(name, folder, val_size=10)
    except DatasetError as err:
        assert err.task == name and err.root == folder
    else:
        labels = torch.cat([task.train.labels, task.val.labels, task.test.labels])
        assert int(labels.min()) >= 0 and int(labels.max()) < 10


def test_npz_forged_huge_header(tmp_path: Path) -> None:
    """An .npy header declaring a 1 TiB array inside a tiny archive is a bad file."""
    write_cifar_npz(tmp_path, 60, 10)
    member = io.BytesIO()
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.uint8))
    header["shape"] = (2**40,)
    np.lib.format.write_array_header_1_0(member, header)
    member.write(b"\x00" * 100)
    with zipfile.ZipFile(tmp_path / "test.npz", "w") as zf:
        zf.writestr("x.npy", member.getvalue())
        zf.writestr("y.npy", member.getvalue())
    load_error("cifar10", tmp_path, "test.npz")
