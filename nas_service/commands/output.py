"""What the commands print besides their own lines: the program's name, notes on stderr, plain
text tables and JSON.

Results go to stdout (so they can be piped); notes, progress and errors go to stderr.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nas_service.graph import ArchitectureGraph

PROG = "nas-service"


def print_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
          right: Sequence[int] = ()) -> str:
    """A plain text table; columns whose index is in ``right`` are right-aligned."""
    cells = [[str(h) for h in headers]] + [[("-" if v is None else str(v)) for v in r]
                                            for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [v.rjust(w) if i in right else v.ljust(w)
                 for i, (v, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def graph_counts(graph: ArchitectureGraph) -> str:
    """``"5 nodes, 1,234 parameters, 56,789 MACs"``."""
    return (f"{len(graph.nodes)} nodes, {graph.num_parameters:,} parameters, "
            f"{graph.flops:,} MACs")
