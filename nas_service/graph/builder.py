"""Programmatic construction of graphs (used by the search spaces, tests and users' scripts)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .architecture import FORMAT, ArchitectureGraph
from .limits import DEFAULT_LIMITS, GraphLimits


class GraphBuilder:
    """Appends nodes in topological order and returns their ids.

    >>> b = GraphBuilder((1, 28, 28))
    >>> x = b.add("conv2d", b.input, out_channels=8, kernel_size=3, padding=1)
    >>> x = b.add("relu", x)
    >>> x = b.add("global_avg_pool", x)
    >>> graph = b.build(b.add("linear", x, out_features=10), num_classes=10)
    """

    def __init__(self, input_shape: Sequence[int], name: str | None = None, input_id: str = "input"):
        self.name = name
        self._nodes: list[dict[str, Any]] = [
            {"id": input_id, "op": "input", "shape": [int(s) for s in input_shape]}]
        self._ids = {input_id}
        self._counters: dict[str, int] = {}

    @property
    def input(self) -> str:
        return self._nodes[0]["id"]

    def _fresh_id(self, op: str) -> str:
        while True:
            n = self._counters.get(op, 0)
            self._counters[op] = n + 1
            candidate = f"{op}_{n}"
            if candidate not in self._ids:
                return candidate

    def add(self, op: str, *inputs: str, id: str | None = None, **attrs: Any) -> str:
        """Appends a node and returns its id (``<op>_<n>`` unless ``id`` is given)."""
        node_id = id or self._fresh_id(op)
        if node_id in self._ids:
            raise ValueError(f"duplicate node id {node_id!r}")
        self._ids.add(node_id)
        node: dict[str, Any] = {"id": node_id, "op": op}
        if inputs:
            node["inputs"] = list(inputs)
        node.update(attrs)
        self._nodes.append(node)
        return node_id

    def to_dict(self, output: str, num_classes: int, output_id: str = "output",
                task: str = "classification") -> dict[str, Any]:
        doc: dict[str, Any] = {"format": FORMAT}
        if self.name:
            doc["name"] = self.name
        out: dict[str, Any] = {"id": output_id, "op": "output", "inputs": [output],
                               "num_classes": num_classes}
        if task != "classification":
            out["task"] = task
        doc["nodes"] = [*self._nodes, out]
        return doc

    def build(self, output: str, num_classes: int, limits: GraphLimits = DEFAULT_LIMITS,
              output_id: str = "output", task: str = "classification") -> ArchitectureGraph:
        """Adds the output node and validates the whole graph. ``task="next_token"`` makes a
        language model: ``output`` gives ``(T, num_classes)`` logits for a ``[T]`` token input."""
        return ArchitectureGraph.from_dict(
            self.to_dict(output, num_classes, output_id, task), limits)
