"""``from_module`` and ``map_state_dict``: from a traced, converted module to a validated graph.

:func:`from_module` runs the trace and the conversion, keeps the nodes that reach the output,
raises :class:`UnsupportedModuleError` for every problem among them (or turns the shape-keeping
ones into ``identity`` with ``skip_unsupported``), fuses ``conv2d -> to_tokens`` into
``patch_embed``, and validates the resulting document. A :class:`GraphNetwork` is not traced: its
own graph is returned. :func:`map_state_dict` carries the traced module's weights over to
``to_module(graph)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..architecture import FORMAT, ArchitectureGraph
from ..limits import DEFAULT_LIMITS, GraphLimits
from ..network import GraphNetwork
from ..ops import Shape
from .converter import _Converter, _Entry
from .errors import UnsupportedModuleError
from .fx_tracer import _trace
from .values import _not_plain, _Param, _Tensor


def _live(entries: dict[str, _Entry], output: str) -> set[str]:
    live, stack = set(), [output]
    while stack:
        nid = stack.pop()
        if nid not in live:
            live.add(nid)
            stack.extend(entries[nid].inputs)
    return live


def _fuse_patch_embeddings(entries: dict[str, _Entry], order: list[str]) -> list[str]:
    """conv2d (kernel == stride, no padding) -> to_tokens becomes one patch_embed node."""
    uses: dict[str, int] = {}
    for nid in order:
        for i in entries[nid].inputs:
            uses[i] = uses.get(i, 0) + 1
    renamed: dict[str, str] = {}
    for nid in order:
        e = entries[nid]
        if renamed:
            e.inputs = [renamed.get(i, i) for i in e.inputs]
        if e.op != "to_tokens":
            continue
        conv = entries[e.inputs[0]]
        a = conv.attrs
        if (conv.op == "conv2d" and uses[e.inputs[0]] == 1
                and tuple(a["kernel_size"]) == tuple(a["stride"])
                and tuple(a["padding"]) == (0, 0) and tuple(a["dilation"]) == (1, 1)
                and a["groups"] == 1):
            conv.op = "patch_embed"
            conv.attrs = {"embed_dim": a["out_channels"], "patch_size": a["kernel_size"],
                          "bias": a["bias"]}
            renamed[nid] = e.inputs[0]
    return [nid for nid in order if nid not in renamed]


def from_module(module: nn.Module, input_shape: Sequence[int], *,
                skip_unsupported: bool = False, name: str | None = None,
                num_classes: int | None = None,
                limits: GraphLimits = DEFAULT_LIMITS) -> ArchitectureGraph:
    """The architecture of ``module`` as a validated :class:`ArchitectureGraph`.

    ``input_shape`` is one sample's shape (``(C, H, W)``, ``(T, D)`` or ``(F,)``). The module
    is traced with ``torch.fx`` and never run on data nor modified; control flow that depends on
    ``self.training`` follows the module's current mode.

    Guarantees:

    * node ids derive from fx node names (``layer1_0_conv1``), and ``parameter_sources`` maps
      every entry of ``to_module(graph).state_dict()`` — parameters and batch-norm buffers —
      to its name in ``module.state_dict()``, so :func:`map_state_dict` moves weights across
      and the rebuilt network computes what ``module`` computes;
    * nodes that do not contribute to the output (auxiliary heads) are left out;
    * ``num_classes`` defaults to the size of the output vector; the output must be
      ``(B, num_classes)`` logits.

    Raises :class:`UnsupportedModuleError` listing every layer or call that ``nas-graph/1``
    cannot express (or when fx cannot trace the module). With ``skip_unsupported=True`` those
    that keep their input's shape (a softmax, say) become ``identity`` nodes, with a warning.
    Raises :class:`~nas_service.graph.GraphValidationError` when the graph exceeds ``limits``.

    While it traces, ``torch.fx`` patches ``torch.nn.Module.__call__`` for the whole process:
    calls are serialised, but other threads must not run modules at the same time (a server
    should convert in a worker process, or in the thread that runs its models).
    """
    input_shape = tuple(int(s) for s in input_shape)
    if isinstance(module, GraphNetwork):
        return _from_graph_network(module, input_shape, name, num_classes, limits)
    fx_graph, tracer = _trace(module)
    cx = _Converter(module, tracer, fx_graph, input_shape, skip_unsupported, limits)
    result = cx.run(fx_graph)
    entries = cx.entries
    module_name = type(module).__name__

    out = result
    if isinstance(result, _Tensor) and result.known and not result.plain:
        out = cx.problem("output_value", f"output: {_not_plain(result)}", [result.node])
    elif isinstance(result, _Tensor) and result.known and len(result.shape) != 1:  # type: ignore
        out = cx.problem("output_value", f"output: per-sample shape {list(result.shape)} "
                         "(the network must return (B, num_classes) logits)", [result.node])
    elif not isinstance(result, _Tensor):
        kind = type(result).__name__ if not isinstance(result, _Param) else "a module tensor"
        raise UnsupportedModuleError(
            f"{module_name}.forward returns {kind}; from_module needs it to return one "
            "(B, num_classes) logits tensor")

    live = _live(entries, out.node)
    problems = [e for nid, e in entries.items() if nid in live and e.problem is not None]
    hard = [e.problem for e in problems if not e.skippable]
    if hard:
        raise UnsupportedModuleError(
            f"cannot convert {module_name}: {len(hard)} unsupported layer(s) or call(s)"
            + ("" if skip_unsupported else
               " (skip_unsupported=True replaces those that keep their input's shape by "
               "identity)"), hard)
    if problems:
        warnings.warn(f"from_module({module_name}): replaced {len(problems)} unsupported "
                      "layer(s) by identity: " + "; ".join(str(e.problem) for e in problems),
                      stacklevel=2)

    order = _fuse_patch_embeddings(entries, [nid for nid in entries if nid in live])
    assert out.shape is not None
    nodes: list[dict[str, Any]] = []
    sources: dict[str, str] = {}
    for nid in order:
        e = entries[nid]
        node = {"id": nid, "op": e.op}
        if e.inputs:
            node["inputs"] = e.inputs
        node.update(e.attrs)
        nodes.append(node)
        for k, src in e.sources.items():
            sources[f"{nid}.{k}"] = src
    nodes.append({"id": "output", "op": "output", "inputs": [out.node],
                  "num_classes": out.shape[0] if num_classes is None else num_classes})
    doc: dict[str, Any] = {"format": FORMAT, "name": name if name is not None else module_name,
                           "nodes": nodes}
    if sources:
        doc["parameter_sources"] = sources
    return ArchitectureGraph.from_dict(doc, limits)


def _from_graph_network(module: GraphNetwork, input_shape: Shape, name: str | None,
                        num_classes: int | None, limits: GraphLimits) -> ArchitectureGraph:
    graph = module.graph
    if input_shape != graph.input_shape:
        raise ValueError(f"this GraphNetwork takes per-sample inputs {list(graph.input_shape)}, "
                         f"not {list(input_shape)}")
    if num_classes is not None and num_classes != graph.num_classes:
        raise ValueError(f"this GraphNetwork has {graph.num_classes} classes, not {num_classes}")
    doc = graph.to_dict()
    doc["name"] = name if name is not None else (graph.name or type(module).__name__)
    doc["parameter_sources"] = {k: k for k in module.state_dict()}
    return ArchitectureGraph.from_dict(doc, limits)


def map_state_dict(graph: ArchitectureGraph,
                   state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames the ``state_dict`` of the module ``graph`` was traced from to graph names.

    The result has exactly the keys of ``to_module(graph).state_dict()`` (parameters and
    batch-norm buffers, via ``graph.parameter_sources``), so ``load_state_dict(..., strict=True)``
    accepts it. Tensors are shared, not copied. Raises ``KeyError`` naming every source missing
    from ``state_dict``, and ``ValueError`` for a graph without ``parameter_sources``.
    """
    sources = graph.parameter_sources
    if not sources and graph.num_parameters:
        raise ValueError("the graph has no parameter_sources (it was not made by from_module)")
    missing = [src for src in sources.values() if src not in state_dict]
    if missing:
        raise KeyError(f"{len(missing)} tensor(s) missing from the state_dict: "
                       + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
    return {k: state_dict[src] for k, src in sources.items()}
