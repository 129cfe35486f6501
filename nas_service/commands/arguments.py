"""What the commands read: argument value types for argparse, and the files arguments name
(``-`` is standard input).

A value argparse rejects is a usage error (exit status 2); a file that cannot be read raises
:class:`~nas_service.commands.errors.CommandError` (exit status 1).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from nas_service.commands.errors import CommandError

if TYPE_CHECKING:
    from nas_service.graph import ArchitectureGraph

STDIN = "-"

AddParser = Callable[..., argparse.ArgumentParser]
"""``add_parser`` of an argparse sub-parsers object: what each ``add_<name>`` receives."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def sample_shape(text: str) -> tuple[int, ...]:
    """One sample's shape: ``"1,28,28"`` -> ``(1, 28, 28)``."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated sizes such as 1,28,28, got {text!r}") from None
    if not 1 <= len(shape) <= 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"expected 1 to 3 positive sizes (C,H,W / T,D / F), got {text!r}")
    return shape


def read_input(path: str) -> bytes:
    """The bytes of ``path`` (``-``: standard input). Raises :class:`CommandError` if unreadable."""
    if path == STDIN:
        # Tests swap sys.stdin for a StringIO, which has no binary buffer.
        stream = getattr(sys.stdin, "buffer", sys.stdin)
        data = stream.read()
        return data.encode() if isinstance(data, str) else data
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise CommandError(f"{path}: cannot read: {e.strerror or e}") from None


def display_name(path: str) -> str:
    return "<stdin>" if path == STDIN else path


def load_graph(path: str) -> ArchitectureGraph:
    """Reads and validates one ``nas-graph/1`` file; problems are raised, not printed."""
    from nas_service.graph import ArchitectureGraph

    return ArchitectureGraph.from_json(read_input(path))
