"""Does a graph fit a task? The one place that compares an architecture's input shape and class
count with a task's, for the API (which turns each mismatch into a problem+json field error) and
the scorer (which refuses to score a graph that does not fit).
"""

from __future__ import annotations

from dataclasses import dataclass

from nas_service.data import TaskSpec
from nas_service.graph import ArchitectureGraph


@dataclass(frozen=True)
class TaskMismatch:
    """One way a graph does not fit a task: which node and attribute, and why."""

    node: str
    field: str  # "shape" of the input node or "num_classes" of the output node
    message: str


class GraphDoesNotFitTask(ValueError):
    """The graph's input shape or class count is not the task's; ``mismatches`` says where."""

    def __init__(self, task: str, mismatches: list[TaskMismatch]) -> None:
        super().__init__("; ".join(m.message for m in mismatches))
        self.task = task
        self.mismatches = mismatches


def task_mismatches(graph: ArchitectureGraph, spec: TaskSpec) -> list[TaskMismatch]:
    """Every way ``graph`` does not fit ``spec`` (empty when it fits)."""
    mismatches = []
    if tuple(graph.input_shape) != tuple(spec.input_shape):
        node = graph.input_node
        mismatches.append(TaskMismatch(
            node.id, "shape",
            f"task {spec.name!r} has inputs of shape {list(spec.input_shape)}, the graph's input "
            f"node {node.id!r} has {list(graph.input_shape)}"))
    if graph.num_classes != spec.num_classes:
        node = graph.output_node
        mismatches.append(TaskMismatch(
            node.id, "num_classes",
            f"task {spec.name!r} has {spec.num_classes} classes, the graph's output node "
            f"{node.id!r} has {graph.num_classes}"))
    return mismatches


def check_graph_fits_task(graph: ArchitectureGraph, spec: TaskSpec) -> None:
    """Raises :class:`GraphDoesNotFitTask` unless ``graph`` fits ``spec``."""
    mismatches = task_mismatches(graph, spec)
    if mismatches:
        raise GraphDoesNotFitTask(spec.name, mismatches)
