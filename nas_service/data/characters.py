"""Character-level language-modelling corpora: GCIDE (Debian's ``dict-gcide``) or a text file.

The corpus is one long string, cut **by position** into train / validation / test
(:data:`SPLIT_FRACTIONS`: the first 90 %, the next 5 %, the last 5 %), and encoded with a
vocabulary fixed by the training split: every character that occurs at least ``min_count``
times in it, in code-point order after index 0, which is :data:`UNKNOWN` (every other
character, in any split, maps to it). The same file and ``min_count`` give the same corpus,
byte for byte.

**GCIDE** (the Collaborative International Dictionary of English, 0.48: Webster's 1913 plus
WordNet 1.5; about 40 M characters) is read from the installed dictd database
``/usr/share/dictd/gcide.dict.dz`` (dictzip, which gzip reads) and its index ``gcide.index``
beside it. Cleaning, in this order (docs/sequence.md):

1. decode as UTF-8; the few invalid byte sequences become U+FFFD (so :data:`UNKNOWN`);
2. drop the dictd header entries (``00-database-*``: licence and version text), i.e. every
   byte before the first entry that the index lists under another headword;
3. drop the lines that only name an entry's sources (``[1913 Webster]``, ``[WordNet 1.5]``,
   ``[PJC]``, ``[Webster 1913 Suppl. +PJC]``, ...): one in five lines, perfectly predictable;
   notes that share their line with other text stay (4,032 lines where the next headword
   leaked onto the source line, ``[1913 Webster] Thyrsoid``; a few hundred notes inside
   lines);
4. strip every line's leading and trailing spaces and tabs (the dictd indentation);
5. collapse runs of blank lines into one (entries end up separated by one blank line).

The dictionary's own markup (``\\Ca*lor"ic\\``, ``{cross references}``, ``[=a]`` accents) is
kept: it is part of the text a model must predict. Entries are in the dictionary's
alphabetical order, so the validation split runs from *Thyroid* to *Value* and the test split
from *Value* to *Zythum*.

A **text file** given by the user is decoded the same way (step 1) and used as it is.

Every problem (missing file, unreadable or corrupt data, a text too short to split) raises
:class:`~nas_service.data.errors.DatasetError`.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DatasetError
from .tasks import TaskSpec, get_task, resolve_root

__all__ = [
    "CHAR_SPLITS",
    "DEFAULT_GCIDE_PATH",
    "DEFAULT_MIN_COUNT",
    "SPLIT_FRACTIONS",
    "UNKNOWN",
    "CharCorpus",
    "clean_gcide",
    "load_char_corpus",
    "load_char_task",
]

DEFAULT_GCIDE_PATH = Path("/usr/share/dictd/gcide.dict.dz")
"""Where Debian's ``dict-gcide`` installs the dictionary."""
CHAR_SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.90, 0.05, 0.05)
UNKNOWN = "\ufffd"
"""Index 0 of every vocabulary: the characters that are not in it."""
DEFAULT_MIN_COUNT = 100
MIN_CHARACTERS = 100
"""Shortest text that is split (each split needs a few characters)."""

_DICTD_BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_SOURCE = r"(?:1913 Webster|Webster 1913 Suppl\.|WordNet 1\.5|PJC|AS)"
_SOURCE_LINE = re.compile(
    rf"^[ \t]*\[[ \t]*{_SOURCE}(?:[ \t]*\+[ \t]*{_SOURCE})*[ \t]*\][ \t]*(?:\n|\Z)", re.M)
_LINE_EDGES = re.compile(r"^[ \t]+|[ \t]+$", re.M)
_BLANK_RUNS = re.compile(r"\n{3,}")


@dataclass(frozen=True, eq=False)
class CharCorpus:
    """A character corpus, encoded. ``train``/``val``/``test``: ``(N,)`` integer tensors of
    vocabulary indices; ``vocabulary[i]`` is the character of index ``i`` (``vocabulary[0] ==
    UNKNOWN``)."""

    name: str
    source: Path
    vocabulary: str
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    min_count: int

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)

    def split(self, name: str) -> torch.Tensor:
        if name not in CHAR_SPLITS:
            raise DatasetError(f"unknown split {name!r}; splits are {', '.join(CHAR_SPLITS)}",
                               task=self.name)
        return getattr(self, name)

    def encode(self, text: str) -> torch.Tensor:
        """``text`` -> ``(len(text),)`` int64 indices (unknown characters -> 0)."""
        return torch.from_numpy(_encode(text, self.vocabulary).astype(np.int64))

    def decode(self, tokens: torch.Tensor) -> str:
        return "".join(self.vocabulary[i] for i in tokens.tolist())

    def describe(self) -> dict[str, object]:
        """What identifies the corpus, for result files."""
        return {"name": self.name, "source": str(self.source), "vocab_size": self.vocab_size,
                "min_count": self.min_count,
                "characters": {s: int(self.split(s).numel()) for s in CHAR_SPLITS}}


# ------------------------------------------------------------------------------------------------
# reading and cleaning
# ------------------------------------------------------------------------------------------------


def _read_bytes(path: Path, name: str) -> bytes:
    try:
        with path.open("rb") as f:
            magic = f.read(2)
        if magic == b"\x1f\x8b":  # gzip or dictzip
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise DatasetError("file not found", task=name, root=path.parent,
                           filename=path.name) from None
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"cannot read it: {e}", task=name, root=path.parent,
                           filename=path.name) from None


def _dictd_number(field: str) -> int:
    value = 0
    for ch in field:
        value = value * 64 + _DICTD_BASE64.index(ch)
    return value


def _first_entry_offset(index: Path, name: str) -> int:
    """Byte offset of the first entry that is not a dictd header (``00-database-*``)."""
    first: int | None = None
    try:
        with index.open(encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                fields = line.rstrip("\n").split("\t")
                if len(fields) < 3 or not fields[1]:
                    raise DatasetError(f"line {number} is not 'headword<TAB>offset<TAB>length'",
                                       task=name, root=index.parent, filename=index.name)
                if fields[0].startswith("00-"):
                    continue
                try:
                    offset = _dictd_number(fields[1])
                except ValueError:
                    raise DatasetError(f"line {number}: offset {fields[1]!r} is not dictd "
                                       "base64", task=name, root=index.parent,
                                       filename=index.name) from None
                first = offset if first is None else min(first, offset)
    except FileNotFoundError:
        raise DatasetError("the dictd index is missing beside the dictionary (reinstall "
                           "dict-gcide)", task=name, root=index.parent,
                           filename=index.name) from None
    except OSError as e:
        raise DatasetError(f"cannot read it: {e}", task=name, root=index.parent,
                           filename=index.name) from None
    if first is None:
        raise DatasetError("the index lists no entries", task=name, root=index.parent,
                           filename=index.name)
    return first


def clean_gcide(data: bytes, first_entry: int = 0) -> str:
    """Steps 1-5 of the module docstring on the dictd database's bytes ``data``."""
    text = data[first_entry:].decode("utf-8", errors="replace")
    text = _SOURCE_LINE.sub("", text)
    text = _LINE_EDGES.sub("", text)
    return _BLANK_RUNS.sub("\n\n", text).strip("\n") + "\n"


# ------------------------------------------------------------------------------------------------
# vocabulary and splits
# ------------------------------------------------------------------------------------------------


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def _encode(text: str, vocabulary: str) -> np.ndarray:
    points = _code_points(text)
    known = _code_points(vocabulary[1:])  # sorted by construction
    where = np.searchsorted(known, points)
    where_clipped = np.minimum(where, len(known) - 1)
    hit = known[where_clipped] == points
    dtype = np.uint8 if len(vocabulary) <= 256 else np.int32
    return np.where(hit, where_clipped + 1, 0).astype(dtype)


def _vocabulary(train_text: str, min_count: int) -> str:
    values, counts = np.unique(_code_points(train_text), return_counts=True)
    kept = values[(counts >= min_count) & (values != ord(UNKNOWN))]
    return UNKNOWN + "".join(map(chr, kept.tolist()))


def _corpus(name: str, source: Path, text: str, min_count: int) -> CharCorpus:
    if min_count < 1:
        raise ValueError(f"min_count must be at least 1, got {min_count}")
    if len(text) < MIN_CHARACTERS:
        raise DatasetError(f"{len(text)} characters are too few to split into "
                           f"train/val/test (at least {MIN_CHARACTERS})", task=name,
                           root=source.parent, filename=source.name)
    n_train = int(len(text) * SPLIT_FRACTIONS[0])
    n_val = int(len(text) * SPLIT_FRACTIONS[1])
    parts = text[:n_train], text[n_train:n_train + n_val], text[n_train + n_val:]
    vocabulary = _vocabulary(parts[0], min_count)
    if len(vocabulary) == 1:
        raise DatasetError(f"no character occurs {min_count} times in the training split; "
                           "lower min_count", task=name, root=source.parent,
                           filename=source.name)
    train, val, test = (torch.from_numpy(_encode(p, vocabulary)) for p in parts)
    return CharCorpus(name, source, vocabulary, train, val, test, min_count)


_CACHE: dict[tuple[str, int, int, int, str], CharCorpus] = {}


def load_char_corpus(path: str | os.PathLike[str] | None = None, *,
                     min_count: int = DEFAULT_MIN_COUNT) -> CharCorpus:
    """The GCIDE corpus (``path`` ``None``, or a dictd ``*.dict.dz``/``*.dict`` with its
    ``.index`` beside it) or the corpus of the text file at ``path`` (UTF-8, optionally
    gzip-compressed). Decoded once per process (per file, size, modification time and
    ``min_count``). Raises :class:`DatasetError` when the file is absent or unreadable."""
    source = Path(path) if path is not None else DEFAULT_GCIDE_PATH
    is_dictd = source.name.endswith((".dict.dz", ".dict"))
    name = "gcide" if is_dictd else "text"
    try:
        stat = source.stat()
    except FileNotFoundError:
        hint = (" (install Debian's dict-gcide: apt-get install dict-gcide, or give a text "
                "file)") if path is None or is_dictd else ""
        raise DatasetError("file not found" + hint, task=name, root=source.parent,
                           filename=source.name) from None
    except OSError as e:
        raise DatasetError(f"cannot read it: {e}", task=name, root=source.parent,
                           filename=source.name) from None
    if not source.is_file():
        raise DatasetError("not a file", task=name, root=source.parent, filename=source.name)
    key = (str(source.resolve()), stat.st_size, stat.st_mtime_ns, min_count, name)
    if key in _CACHE:
        return _CACHE[key]
    data = _read_bytes(source, name)
    if is_dictd:
        index = source.with_name(source.name.removesuffix(".dz").removesuffix(".dict")
                                 + ".index")
        text = clean_gcide(data, _first_entry_offset(index, name))
    else:
        text = data.decode("utf-8", errors="replace")
    corpus = _corpus(name, source, text, min_count)
    _CACHE[key] = corpus
    return corpus


GCIDE_FILE = "gcide.dict.dz"


def load_char_task(task: str | TaskSpec = "gcide-chars",
                   root: str | os.PathLike[str] | None = None) -> CharCorpus:
    """The corpus of a character task (``gcide-chars``): ``gcide.dict.dz`` in ``root``, else in
    ``$NAS_DATASETS_DIR/<task>``, else in the task's default folder (``/usr/share/dictd``),
    checked against the task: its vocabulary must be the task's ``class_names``, in order, so
    that token ids mean the same characters in every process. :class:`DatasetError` otherwise,
    or when ``task`` is not a character task."""
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    if not spec.is_language_model:
        raise DatasetError(f"{spec.name!r} is not a character task", task=spec.name)
    folder, _ = resolve_root(spec, root)
    corpus = load_char_corpus(folder / GCIDE_FILE)
    if corpus.vocabulary != "".join(spec.class_names):
        raise DatasetError(
            f"the corpus has a vocabulary of {corpus.vocab_size} characters that is not the "
            f"task's {spec.num_classes} (another dict-gcide version?): token ids would not "
            "mean the task's characters", task=spec.name, root=folder, filename=GCIDE_FILE)
    return corpus
