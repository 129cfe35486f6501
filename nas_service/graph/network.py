"""``to_module``: a runnable ``torch.nn.Module`` for an :class:`ArchitectureGraph`."""

from __future__ import annotations

import torch
from torch import nn

from .architecture import ArchitectureGraph


class GraphNetwork(nn.Module):
    """Runs an architecture graph.

    Each node with state is a child module registered under the node's id, so ``state_dict``
    keys are ``"<node id>.<parameter>"`` and line up with :meth:`ArchitectureGraph.parameter_shapes`
    and with weights predicted by a graph hypernetwork.

    Input: ``(B, *graph.input_shape)``; output: ``(B, graph.num_classes)`` logits, or
    ``(B, T, graph.num_classes)`` for a ``next_token`` graph (``(B, T)`` token ids in).
    A graph with ``opaque`` nodes is refused with a ``ValueError`` naming them.
    """

    def __init__(self, graph: ArchitectureGraph):
        opaque = graph.opaque_nodes
        if opaque:
            listed = "; ".join(f"{n.id} ({n.attrs.label or 'no label'})"  # type: ignore[attr-defined]
                               for n in opaque[:20])
            raise ValueError(f"the graph has {len(opaque)} opaque node(s), which nas-graph/1 "
                             f"cannot run: {listed}")
        super().__init__()
        self.graph = graph
        index = {n.id: i for i, n in enumerate(graph.nodes)}
        last_use = {n.id: i for i, n in enumerate(graph.nodes)}
        for i, n in enumerate(graph.nodes):
            for src in n.inputs:
                last_use[src] = i
        # Node ids may coincide with nn.Module attribute names ("eval", "to", ...): write into
        # _modules directly, which is what add_module does minus that attribute check. Forward
        # never looks modules up by attribute, so nothing is shadowed.
        plan = []
        for i, n in enumerate(graph.nodes[1:], start=1):
            module = n.spec.build(n.attrs, list(n.input_shapes), n.shape)
            self._modules[n.id] = module  # registered even when stateless: train()/eval() reach it
            free = tuple(index[s] for s in dict.fromkeys(n.inputs) if last_use[s] == i)
            plan.append((module, tuple(index[s] for s in n.inputs), free))
        self._plan = plan
        self._num_values = len(graph.nodes)

    def __setattr__(self, name: str, value: object) -> None:
        # Node ids live in _modules and may equal plain attribute names ("training", "_plan"):
        # nn.Module would refuse to shadow a child module with a non-module value.
        if isinstance(value, nn.Module | torch.Tensor):
            super().__setattr__(name, value)
        else:
            object.__setattr__(self, name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = self.graph.input_shape
        if tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"expected input of shape (batch, {', '.join(map(str, expected))}), "
                f"got {tuple(x.shape)}")
        values: list[torch.Tensor | None] = [None] * self._num_values
        values[0] = x
        out = x
        for i, (module, inputs, free) in enumerate(self._plan, start=1):
            out = module(*[values[j] for j in inputs])
            values[i] = out
            for j in free:  # drop activations nobody needs any more
                values[j] = None
        return out

    def extra_repr(self) -> str:
        return f"graph={self.graph!r}"


def to_module(graph: ArchitectureGraph, *, initialize: bool = True,
              device: torch.device | str | None = None) -> GraphNetwork:
    """Builds a runnable network for ``graph``.

    With ``initialize=True`` parameters get PyTorch's default initialisation. With ``False``
    they are allocated but left uninitialised (batch-norm statistics are still reset): the fast
    path when every parameter is about to be overwritten, e.g. by GHN predictions, since random
    initialisation dominates building a large network (ResNet-50: ~90 % of the time).
    """
    if initialize:
        return GraphNetwork(graph).to(device) if device is not None else GraphNetwork(graph)
    return materialize(meta_network(graph), device or "cpu")


def meta_network(graph: ArchitectureGraph) -> GraphNetwork:
    """The network for ``graph`` with every tensor on the ``meta`` device: no memory, built in a
    few milliseconds, and cheap to pickle (GHN training builds these in worker processes)."""
    with torch.device("meta"):
        return GraphNetwork(graph)


def materialize(net: GraphNetwork, device: torch.device | str) -> GraphNetwork:
    """Allocates a :func:`meta_network` on ``device``: parameters uninitialised, batch-norm
    statistics reset (they are buffers the predicted weights do not overwrite)."""
    net = net.to_empty(device=device)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
            m.reset_running_stats()
    return net
