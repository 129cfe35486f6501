"""GHN-2's sequential propagation, kept as the baseline of the propagation ablation.

GHN-2 (Knyazev et al. 2021) updates nodes one at a time: a forward traversal in topological
order, each node's GRU reading the messages of its predecessors *as already updated in this
traversal* (over real and virtual edges), then a backward traversal in reverse order over the
reversed edges. Its cost grows with nodes x edges and cannot be batched across nodes.

Nodes of the same topological level (longest path from an input) have no edge between them, so
updating a level at once gives exactly the node-by-node result in ``depth`` steps instead of
``|V|``; that is how this module runs it. It is still sequential in depth, and each step is a
gather of one message per incoming edge: the work GHN-2 does.

``GHNConfig(propagation="sequential")`` builds a GHN with these layers instead of the
synchronous :class:`~nas_service.ghn.model.GHNLayer` rounds; ``bench/propagation_ablation.py``
trains both the same way and compares quality and speed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .features import (
    EDGE_BACKWARD,
    EDGE_FORWARD,
    EDGE_VIRTUAL_BACKWARD,
    EDGE_VIRTUAL_FORWARD,
    NUM_EDGE_TYPES,
)


@dataclass(frozen=True)
class _Step:
    """The nodes one step updates and the edges into them."""

    nodes: torch.Tensor  # (k,) node indices
    sources: torch.Tensor  # (e,) source node of each incoming edge
    targets: torch.Tensor  # (e,) position of its target in ``nodes``
    types: torch.Tensor  # (e,) edge type
    weights: torch.Tensor  # (e,) edge weight (mean over the type, 1/d on virtual edges)


@dataclass(frozen=True)
class Schedule:
    """A forward traversal (levels ascending) and a backward one (levels descending)."""

    forward: tuple[_Step, ...]
    backward: tuple[_Step, ...]


def topological_levels(edge_index: torch.Tensor, edge_type: torch.Tensor, num_nodes: int
                       ) -> torch.Tensor:
    """Longest-path depth of every node over the forward edges (inputs are level 0): one
    vectorised relaxation per level, so ``depth`` passes over the edges."""
    forward = edge_type == EDGE_FORWARD
    src, dst = edge_index[0][forward], edge_index[1][forward]
    level = torch.zeros(num_nodes, dtype=torch.long, device=edge_index.device)
    for _ in range(num_nodes):
        new = level.scatter_reduce(0, dst, level[src] + 1, reduce="amax")
        if torch.equal(new, level):
            return level
        level = new
    raise ValueError("the graph has a cycle")


def sequential_schedule(edge_index: torch.Tensor, edge_type: torch.Tensor,
                        edge_weight: torch.Tensor, num_nodes: int) -> Schedule:
    level = topological_levels(edge_index, edge_type, num_nodes)
    depth = int(level.max()) if num_nodes else 0
    target_level = level[edge_index[1]]

    def steps(types: tuple[int, int], levels: range) -> tuple[_Step, ...]:
        wanted = (edge_type == types[0]) | (edge_type == types[1])
        out = []
        for lv in levels:
            edges = torch.nonzero(wanted & (target_level == lv)).flatten()
            # Only nodes that receive a message update: GHN-2 leaves the others as they are
            # (an input in the forward pass, an output in the backward one).
            nodes = torch.unique(edge_index[1][edges])
            if nodes.numel() == 0:
                continue
            position = torch.full((num_nodes,), -1, dtype=torch.long, device=nodes.device)
            position[nodes] = torch.arange(nodes.numel(), device=nodes.device)
            out.append(_Step(nodes, edge_index[0][edges], position[edge_index[1][edges]],
                             edge_type[edges], edge_weight[edges]))
        return tuple(out)

    return Schedule(steps((EDGE_FORWARD, EDGE_VIRTUAL_FORWARD), range(1, depth + 1)),
                    steps((EDGE_BACKWARD, EDGE_VIRTUAL_BACKWARD), range(depth - 1, -1, -1)))


class SequentialGHNLayer(nn.Module):
    r"""One GHN-2 propagation: a forward then a backward traversal, level by level.

    .. math::
        m_v = \sum_{t} \sum_{u \in \mathcal{N}_t(v)} \alpha_{uv} W_t h_u, \qquad
        h_v \leftarrow \mathrm{GRU}(m_v, h_v)

    with ``h_u`` already updated in this traversal, then a layer norm of the result (the
    synchronous layers' normalisation, so that the two variants differ only in propagation).
    """

    def __init__(self, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.message_proj = nn.Linear(hidden, NUM_EDGE_TYPES * hidden, bias=False)
        self.gru = nn.GRUCell(hidden, hidden)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor, schedule: Schedule) -> torch.Tensor:
        for step in (*schedule.forward, *schedule.backward):
            # One message per edge, W_t h_u, from the sources' current states (all four types
            # projected, the edge's own picked: simpler than grouping, same result).
            projected = self.message_proj(x[step.sources]).view(-1, NUM_EDGE_TYPES, self.hidden)
            messages = projected[torch.arange(step.types.numel(), device=x.device), step.types]
            m = torch.zeros(step.nodes.numel(), self.hidden, dtype=x.dtype, device=x.device)
            m = m.index_add(0, step.targets, messages * step.weights.unsqueeze(-1).to(x.dtype))
            x = x.index_copy(0, step.nodes, self.gru(m, x[step.nodes]))
        return self.norm(x)
