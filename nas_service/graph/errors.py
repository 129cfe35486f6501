"""The one error type of the graph layer.

Validation never stops at the first problem: it collects every problem it can find (each with the
node id and, where it applies, the attribute) so that a user fixes a document in one round trip.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GraphProblem:
    """One thing wrong with a graph document.

    ``node`` is the offending node's id (``None`` for document-level problems), ``field`` the
    attribute or key inside the node (``None`` when the whole node is at fault), ``index`` the
    node's position in the ``nodes`` list (useful when the id itself is missing or malformed).
    """

    message: str
    node: str | None = None
    field: str | None = None
    index: int | None = None

    def location(self) -> str:
        """A JSON-pointer-like path to the problem, e.g. ``/nodes/3/kernel_size``."""
        if self.index is None:
            return "/" + (self.field or "")
        path = f"/nodes/{self.index}"
        return f"{path}/{self.field}" if self.field else path

    def __str__(self) -> str:
        where = f"node {self.node!r}" if self.node is not None else self.location()
        if self.field and self.node is not None:
            where += f", field {self.field!r}"
        return f"{where}: {self.message}"

    def to_dict(self) -> dict:
        return {
            "node": self.node,
            "field": self.field,
            "index": self.index,
            "location": self.location(),
            "message": self.message,
        }


class GraphValidationError(ValueError):
    """Raised when a graph document is malformed, inconsistent or over the configured limits."""

    def __init__(self, problems: list[GraphProblem]):
        if not problems:
            raise ValueError("GraphValidationError needs at least one problem")
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems[:50])
        more = len(self.problems) - 50
        if more > 0:
            lines += f"\n  ... and {more} more"
        super().__init__(f"invalid architecture graph ({len(self.problems)} problem(s)):\n{lines}")


class ShapeError(ValueError):
    """Raised by an op's shape inference; turned into a :class:`GraphProblem` for its node."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field
