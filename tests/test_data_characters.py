"""Character corpora (nas_service.data.characters): cleaning, fixed vocabulary, splits, errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch
from char_task import write_dictd

from nas_service.data import DatasetError
from nas_service.data.characters import (
    DEFAULT_GCIDE_PATH,
    UNKNOWN,
    clean_gcide,
    load_char_corpus,
)


def _write_dictd(folder: Path, entries: list[tuple[str, str]]) -> Path:
    return write_dictd(folder / "toy.dict.dz", entries)


def test_text_file_corpus_splits_by_position_with_a_fixed_vocabulary(tmp_path: Path) -> None:
    text = "abcab" * 180 + "zz"  # 'z' appears only at the end: in the test split, unknown
    path = tmp_path / "t.txt"
    path.write_text(text)
    corpus = load_char_corpus(path, min_count=2)
    assert corpus.vocabulary == UNKNOWN + "abc"
    n = len(text)
    assert [corpus.train.numel(), corpus.val.numel(), corpus.test.numel()] == \
        [int(0.9 * n), int(0.05 * n), n - int(0.9 * n) - int(0.05 * n)]
    assert corpus.decode(corpus.train) == text[:int(0.9 * n)]
    assert corpus.test[-2:].tolist() == [0, 0]
    again = load_char_corpus(path, min_count=2)
    assert all(torch.equal(corpus.split(s), again.split(s)) for s in ("train", "val", "test"))
    assert torch.equal(corpus.encode("cab?"), torch.tensor([3, 1, 2, 0]))


def test_rare_characters_become_the_unknown_symbol(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("aaaab" * 40)
    corpus = load_char_corpus(path, min_count=50)  # 'b' occurs 36 times in train
    assert corpus.vocabulary == UNKNOWN + "a"
    assert (corpus.train == 0).sum().item() == corpus.decode(corpus.train).count(UNKNOWN) > 0


def test_gcide_cleaning_drops_headers_and_source_lines(tmp_path: Path) -> None:
    header = "00-database-short\n   The Collaborative International Dictionary\n"
    entry = ("Calotte \\Ca*lotte\"\\, n. [F. calotte.]\n   A close cap.\n   [1913 Webster]\n\n\n\n"
             "   {To assume the calotte}, to become a priest.\n      [1913 Webster +PJC]\n")
    other = "Cap \\Cap\\, n.\n   A covering for the head. [Obs.]\n   [Obs.]\n   [WordNet 1.5]\n"
    path = _write_dictd(tmp_path, [("00-database-short", header), ("Calotte", entry),
                                   ("Cap", other * 3)])
    text = clean_gcide(gzip.decompress(path.read_bytes()), len(header.encode()))
    assert text.startswith("Calotte \\Ca*lotte\"\\, n. [F. calotte.]\nA close cap.\n\n"
                           "{To assume the calotte}, to become a priest.\nCap")
    assert "Webster" not in text and "WordNet" not in text and "Collaborative" not in text
    assert "[Obs.]\n" in text  # a usage note on its own line is text, not a source
    assert "\n\n\n" not in text
    corpus = load_char_corpus(path, min_count=1)
    assert corpus.name == "gcide"
    assert corpus.decode(torch.cat([corpus.train, corpus.val, corpus.test])) == text


def test_missing_files_raise_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dict-gcide"):
        load_char_corpus(tmp_path / "gcide.dict.dz")
    with pytest.raises(DatasetError, match="file not found"):
        load_char_corpus(tmp_path / "missing.txt")
    short = tmp_path / "short.txt"
    short.write_text("too short")
    with pytest.raises(DatasetError, match="too few"):
        load_char_corpus(short)
    path = _write_dictd(tmp_path, [("Cap", "Cap, n. a covering for the head.\n" * 10)])
    (tmp_path / "toy.index").unlink()
    with pytest.raises(DatasetError, match="index is missing"):
        load_char_corpus(path)
    corrupt = tmp_path / "corrupt.txt"
    corrupt.write_bytes(b"\x1f\x8b" + b"\x00" * 50)
    with pytest.raises(DatasetError, match="cannot read"):
        load_char_corpus(corrupt)


@pytest.mark.skipif(not DEFAULT_GCIDE_PATH.exists(), reason="dict-gcide is not installed")
def test_installed_gcide_corpus() -> None:
    corpus = load_char_corpus()
    assert corpus.vocabulary[0] == UNKNOWN and 60 < corpus.vocab_size < 120
    assert corpus.train.numel() > 20_000_000
    lines = corpus.decode(corpus.val[:200_000]).splitlines()
    assert "[1913 Webster]" not in lines and "[WordNet 1.5]" not in lines
    assert not any(line != line.strip() for line in lines)
