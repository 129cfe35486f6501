"""What one forward pass of a graph's network holds in memory, per sample, read off the inferred
shapes alone (no tensor is allocated): the input of admission control, which multiplies it by
the batch sizes a caller will run (:mod:`nas_service.scoring.cost`).

The count follows the order :class:`~nas_service.graph.GraphNetwork` runs nodes in (the
topological order of the document). While node *i* runs, memory holds

- every earlier output some node at or after *i* still reads (liveness: an output is freed after
  its last consumer ran; the output node's input lives to the end),
- node *i*'s own output, and
- its workspace: what the op allocates besides its output. A convolution, a linear layer or a
  patch embedding gets ``layer_workspace`` more outputs' worth (1 by default: oneDNN reorders
  its input and output; measured at batch 128 on CPU: about 2x the output, with no im2col
  buffer; a caller that transforms each layer's output, as the scoring protocol does for
  networks without batch norm, asks for more); self-attention its query, key and value
  (3 x tokens x width) and two score matrices per head (2 x heads x tokens^2: the attention
  weights and their softmax, as the unfused kernel holds them); every other op none.

``peak_elements`` is the largest such sum over the nodes; ``largest_elements`` the largest single
tensor among outputs and workspaces (one allocation: what fails first when memory is short).
Everything is in elements of one sample; the dtype and the batch size are the caller's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .architecture import ArchitectureGraph, GraphNode

_REORDERED_OPS = frozenset({"conv2d", "linear", "patch_embed"})


@dataclass(frozen=True)
class Footprint:
    """Per-sample memory of one forward pass, in elements, and the graph's fixed costs."""

    peak_elements: int
    """Elements live at once at the worst node (outputs still needed, plus the node's output
    and workspace)."""
    largest_elements: int
    """Elements of the largest single tensor (an output or a workspace)."""
    parameters: int
    macs: int
    """Multiply-accumulates of one forward pass of one sample."""
    peak_node: str
    """The node at which ``peak_elements`` is reached."""
    saved_elements: int = 0
    """Elements of every output and workspace of the pass: what autograd may keep for a
    backward pass (an upper bound: some operations save less)."""


def footprint(graph: ArchitectureGraph, *, layer_workspace: int = 1) -> Footprint:
    """The :class:`Footprint` of ``graph``: O(nodes + edges), plain integers."""
    position = {n.id: i for i, n in enumerate(graph.nodes)}
    last_use = list(range(len(graph.nodes)))
    for i, n in enumerate(graph.nodes):
        for source in n.inputs:
            j = position[source]
            last_use[j] = max(last_use[j], i)
    # Outputs freed after node i: a sweep keeps the live total without rescanning.
    freed_after: list[list[int]] = [[] for _ in graph.nodes]
    for j, last in enumerate(last_use):
        freed_after[last].append(j)
    sizes = [math.prod(n.shape) for n in graph.nodes]
    live = peak = largest = saved = 0
    peak_node = graph.nodes[0].id
    for i, n in enumerate(graph.nodes):
        tensors = _workspace(n, layer_workspace)
        saved += sizes[i] + sum(tensors)
        here = live + sizes[i] + sum(tensors)
        largest = max(largest, sizes[i], *tensors)
        if here > peak:
            peak, peak_node = here, n.id
        live += sizes[i]
        for j in freed_after[i]:
            live -= sizes[j]
    return Footprint(peak_elements=peak, largest_elements=largest,
                     parameters=graph.num_parameters, macs=graph.flops, peak_node=peak_node,
                     saved_elements=saved)


def _workspace(node: GraphNode, layer_workspace: int) -> list[int]:
    """The tensors ``node`` allocates besides its output, in elements per sample."""
    if node.op in _REORDERED_OPS:
        return [math.prod(node.shape)] * layer_workspace
    if node.op == "self_attention":
        shape = node.input_shapes[0]
        tokens, width = (shape[1] * shape[2], shape[0]) if len(shape) == 3 else shape
        heads = node.attrs.num_heads  # type: ignore[attr-defined]
        scores = heads * tokens * tokens
        return [3 * tokens * width, scores, scores]
    return []
