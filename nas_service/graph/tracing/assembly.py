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
from typing import Any, Literal

import torch
from torch import nn

from ..architecture import FORMAT, ArchitectureGraph
from ..limits import DEFAULT_LIMITS, GraphLimits
from ..network import GraphNetwork
from ..ops import Shape
from .converter import _Converter, _Entry, _opaque_parameters, _short_label
from .errors import UnsupportedModuleError
from .fx_tracer import _trace
from .recorder import _record
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


Trace = Literal["auto", "symbolic", "run"]


def from_module(module: nn.Module, input_shape: Sequence[int], *,
                skip_unsupported: bool = False, name: str | None = None,
                num_classes: int | None = None, limits: GraphLimits = DEFAULT_LIMITS,
                exact: bool = False, trace: Trace = "auto") -> ArchitectureGraph:
    """The architecture of ``module`` as a validated :class:`ArchitectureGraph`.

    ``input_shape`` is one sample's shape (``(C, H, W)``, ``(T, D)`` or ``(F,)``).

    How it traces (``trace``): ``"symbolic"`` uses ``torch.fx`` only (nothing runs, and control
    flow that depends on ``self.training`` follows the module's current mode); ``"run"`` records
    one forward pass on a batch of 2 random inputs in eval mode (:mod:`.recorder`: control flow
    is decided by the run); ``"auto"`` (the default) tries ``torch.fx`` first, the fast path,
    and records a run when fx cannot trace the module or meets a call no rule converts. The
    module is never modified (a run sets eval mode and restores every training flag).

    Guarantees:

    * every part of the network that ``nas-graph/1`` cannot express exactly becomes an
      ``opaque`` node that keeps its inputs, its output shape and the parameters it reads, so a
      graph hypernetwork still predicts them; ``graph.opaque_nodes`` lists them, and
      ``to_module`` refuses such a graph. With ``exact=True`` there are none:
      :class:`UnsupportedModuleError` lists every such call instead, each named by its layer
      (module path and type) and the function it calls;
    * ``parameter_sources`` maps every parameter of the graph, and every batch-norm buffer, to
      its name in ``module.state_dict()``, so :func:`map_state_dict` moves weights across, and
      a graph without opaque nodes rebuilt by ``to_module`` computes what ``module`` computes;
    * node ids derive from fx node names or module paths (``layer1_0_conv1``);
    * nodes that do not contribute to the output (auxiliary heads) are left out;
    * ``num_classes`` defaults to the size of the output vector; the output must be
      ``(B, num_classes)`` logits, or, for ``(T,)`` token ids in (``input_shape``), per-token
      logits ``(B, T, vocabulary)``: a language model, whose graph's output has
      ``task="next_token"``.

    ``skip_unsupported=True`` replaces a call that keeps its input's shape (a softmax, say) by
    an ``identity`` node instead, with a warning. Raises :class:`UnsupportedModuleError` when
    the module cannot be traced nor run on such inputs, or does not return logits, and
    :class:`~nas_service.graph.GraphValidationError` when the graph exceeds ``limits``.

    While it traces, ``torch.fx`` (and the recorder) patch ``torch.nn.Module.__call__`` for the
    whole process: calls are serialised, and other threads' modules run unaffected but slower
    (a server should convert in a worker process, or in the thread that runs its models).
    """
    input_shape = tuple(int(s) for s in input_shape)
    if isinstance(module, GraphNetwork):
        return _from_graph_network(module, input_shape, name, num_classes, limits)
    if trace not in ("auto", "symbolic", "run"):
        raise ValueError(f"trace must be 'auto', 'symbolic' or 'run', not {trace!r}")
    module_name = type(module).__name__
    graph_name = name if name is not None else module_name
    if trace != "run":
        try:
            fx_graph, tracer = _trace(module)
        except UnsupportedModuleError:
            if trace == "symbolic":
                raise
        else:
            cx = _Converter(module, input_shape, skip_unsupported, limits, tracer.constants,
                            {n.name for n in fx_graph.nodes})
            out = _output(cx, cx.run(fx_graph), module_name)
            if trace == "symbolic" or not _causes(cx.entries, out.node, skippable=False):
                return _assemble(cx, out, module_name, graph_name, num_classes, limits,
                                 exact=True)
    cx = _Converter(module, input_shape, skip_unsupported, limits)
    out = _output(cx, _record(module, input_shape, cx), module_name)
    return _assemble(cx, out, module_name, graph_name, num_classes, limits, exact=exact)


def _output(cx: _Converter, result: Any, module_name: str) -> _Tensor:
    """The node of the logits; a problem node where the output is not a logits vector."""
    if isinstance(result, _Tensor) and result.known and not result.plain:
        return cx.problem("output_value", f"output: {_not_plain(result)}", [result.node])
    if isinstance(result, _Tensor) and result.known and len(result.shape) != 1 \
            and not _per_token(cx.input_shape, result.shape):  # type: ignore[arg-type]
        return cx.problem("output_value", f"output: per-sample shape {list(result.shape)} "
                          "(the network must return (B, num_classes) logits, or (B, T, vocabulary) "
                          "logits for (B, T) token ids)", [result.node])
    if not isinstance(result, _Tensor):
        kind = type(result).__name__ if not isinstance(result, _Param) else "a module tensor"
        raise UnsupportedModuleError(
            f"{module_name}.forward returns {kind}; from_module needs it to return one "
            "(B, num_classes) logits tensor")
    return result


def _per_token(input_shape: Sequence[int], shape: Sequence[int]) -> bool:
    """Whether ``shape`` is a language model's output: logits ``(T, V)`` for ``[T]`` tokens."""
    return len(input_shape) == 1 and len(shape) == 2 and shape[0] == input_shape[0]


def _causes(entries: dict[str, _Entry], output: str, skippable: bool) -> list[_Entry]:
    """The live nodes that are problems (``skippable``: those replaced by identity too)."""
    live = _live(entries, output)
    return [e for nid, e in entries.items() if nid in live and e.problem is not None
            and e.op != "opaque" and (skippable or not e.skippable)]


def _assemble(cx: _Converter, out: _Tensor, module_name: str, name: str,
              num_classes: int | None, limits: GraphLimits, exact: bool) -> ArchitectureGraph:
    entries = cx.entries
    live = _live(entries, out.node)
    problems = _causes(entries, out.node, skippable=True)
    hard = [e.problem for e in problems if not e.skippable]
    opaque = [e.problem for nid, e in entries.items() if nid in live and e.op == "opaque"]
    if hard or (exact and opaque):
        causes = [*hard, *opaque] if exact else hard
        raise UnsupportedModuleError(
            f"cannot convert {module_name}: {len(causes)} unsupported layer(s) or call(s)"
            + ("" if cx.skip_unsupported else
               " (skip_unsupported=True replaces those that keep their input's shape by "
               "identity)"), causes)  # type: ignore[arg-type]
    if problems:
        warnings.warn(f"from_module({module_name}): replaced {len(problems)} unsupported "
                      "layer(s) by identity: " + "; ".join(str(e.problem) for e in problems),
                      stacklevel=3)

    order = _fuse_patch_embeddings(entries, [nid for nid in entries if nid in live])
    order = _merge_opaque_chains(entries, order, out.node)
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
    output: dict[str, Any] = {"id": "output", "op": "output", "inputs": [out.node],
                              "num_classes": out.shape[-1] if num_classes is None else num_classes}
    if _per_token(cx.input_shape, out.shape):
        output["task"] = "next_token"
    nodes.append(output)
    doc: dict[str, Any] = {"format": FORMAT, "name": name, "nodes": nodes}
    if sources:
        doc["parameter_sources"] = sources
    return ArchitectureGraph.from_dict(doc, limits)


def _merge_opaque_chains(entries: dict[str, _Entry], order: list[str], output: str
                         ) -> list[str]:
    """An opaque node whose only consumer is an opaque node is folded into it: a run of calls
    nas-graph/1 cannot express (attention written with matmul and softmax) is one node."""
    consumers: dict[str, list[str]] = {nid: [] for nid in order}
    for nid in order:
        for i in dict.fromkeys(entries[nid].inputs):
            consumers[i].append(nid)
    consumers[output].append("output")
    merged: set[str] = set()
    for nid in order:
        e = entries[nid]
        users = consumers[nid]
        if e.op != "opaque" or len(users) != 1 or users[0] == "output" \
                or entries[users[0]].op != "opaque":
            continue
        c = entries[users[0]]
        inputs: list[str] = []
        for i in c.inputs:
            inputs.extend(e.inputs if i == nid else [i])
        c.inputs = list(dict.fromkeys(inputs))
        params = [(e.sources[k], shape) for k, shape in e.attrs["parameters"].items()]
        params += [(c.sources[k], shape) for k, shape in c.attrs["parameters"].items()]
        shapes, c.sources = _opaque_parameters(
            [(src, _Shape(shape)) for src, shape in params])  # type: ignore[misc]
        c.attrs = {**c.attrs, "parameters": shapes,
                   "label": _short_label("; ".join(dict.fromkeys(
                       [*e.attrs["label"].split("; "), *c.attrs["label"].split("; ")])))}
        c.problem = f"{e.problem}; {c.problem}"
        for i in dict.fromkeys(e.inputs):
            consumers[i] = list(dict.fromkeys(users[0] if u == nid else u
                                              for u in consumers[i]))
        merged.add(nid)
    return [nid for nid in order if nid not in merged]


class _Shape:
    """Stands in for a tensor where only its shape is read (:func:`_opaque_parameters`)."""

    def __init__(self, shape: Sequence[int]):
        self.shape = list(shape)


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
    accepts it. Tensors are shared, not copied (a tensor that differs from the graph's shape by
    axes of size 1 is viewed in the graph's shape). Raises ``KeyError`` naming every source missing
    from ``state_dict``, and ``ValueError`` for a graph without ``parameter_sources``.
    """
    sources = graph.parameter_sources
    if not sources and graph.num_parameters:
        raise ValueError("the graph has no parameter_sources (it was not made by from_module)")
    missing = [src for src in sources.values() if src not in state_dict]
    if missing:
        raise KeyError(f"{len(missing)} tensor(s) missing from the state_dict: "
                       + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
    shapes = graph.parameter_shapes()
    out = {}
    for k, src in sources.items():
        t = state_dict[src]
        # A layer scale kept as (C, 1, 1) is the graph's (C,): the same values, viewed.
        out[k] = t.view(shapes[k]) if k in shapes and tuple(t.shape) != shapes[k] else t
    for node in graph.nodes:
        counter = f"{node.id}.num_batches_tracked"
        if node.op == "batch_norm" and f"{node.id}.running_mean" in out and counter not in out:
            out[counter] = torch.tensor(0)  # F.batch_norm is given no counter
    return out
