"""A toy ``gcide-chars`` corpus: a dictd database with exactly the task's vocabulary, small enough
for tests (the installed GCIDE takes seconds to decode)."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

from nas_service.data import get_task
from nas_service.data.characters import GCIDE_FILE, UNKNOWN


def write_toy_gcide(folder: Path, repeats: int = 200) -> Path:
    """``folder/gcide.dict.dz`` and its index: one header entry, then one entry whose text holds
    every character of the task's vocabulary ``repeats`` times, shuffled, so each is frequent
    enough (in the first 90 %) to be in the vocabulary. Returns ``folder``."""
    symbols = [c for c in get_task("gcide-chars").class_names if c not in (UNKNOWN, "\n", " ")]
    rng = random.Random(0)
    text = symbols * repeats
    rng.shuffle(text)
    lines = ["".join(text[i:i + 40]) for i in range(0, len(text), 40)]
    # spaces inside lines (line edges are stripped) and newlines between them
    body = "\n".join(line[:20] + " " + line[20:] for line in lines) + "\n"
    write_dictd(folder / GCIDE_FILE, [("00-database-info", "toy header\n"), ("toy", body)])
    return folder


def write_dictd(path: Path, entries: list[tuple[str, str]]) -> Path:
    """A dictd database at ``path`` (gzip'd, as dictzip is) and its ``.index`` beside it (the
    name without ``.dict.dz``), like dict-gcide installs."""
    data, index = b"", []
    for headword, body in entries:
        raw = body.encode()
        index.append(f"{headword}\t{_b64(len(data))}\t{_b64(len(raw))}")
        data += raw
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(data)
    path.with_name(path.name.removesuffix(".dict.dz") + ".index").write_text(
        "\n".join(sorted(index)) + "\n")
    return path


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64(n: int) -> str:
    out = ""
    while True:
        out = _B64[n % 64] + out
        n //= 64
        if n == 0:
            return out
