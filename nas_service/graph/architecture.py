"""``ArchitectureGraph``: the one representation of a neural architecture.

A graph is built from a ``nas-graph/1`` document (a dict or JSON text), validated completely (every
problem is reported, each with its node id), and is immutable afterwards. It knows the shape of
every node's output, the shape of every parameter, and parameter and multiply-accumulate counts.
"""

from __future__ import annotations

import difflib
import hashlib
import heapq
import json
import math
import re
import reprlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from .errors import GraphProblem, GraphValidationError, ShapeError
from .limits import DEFAULT_LIMITS, GraphLimits
from .ops import OPS, Attrs, OpSpec, Shape

FORMAT = "nas-graph/1"
# Messages quote the offending value; keep it short and safe for deeply nested values.
_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60
_short.maxlevel = 3


def _count(n: int) -> str:
    """``n`` with thousands separators; Python refuses to print ints over 4300 digits."""
    return f"{n:,}" if n.bit_length() <= 100 else f"more than 2^{n.bit_length() - 1}"


_ID_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]*")
_NODE_KEYS = ("id", "op", "inputs")
_DOC_KEYS = {"format", "name", "nodes", "parameter_sources"}


@dataclass(frozen=True)
class GraphNode:
    """One validated node: its op, inputs, typed attributes and inferred shapes."""

    id: str
    op: str
    inputs: tuple[str, ...]
    attrs: Attrs
    input_shapes: tuple[Shape, ...]
    shape: Shape
    """Shape of this node's output for one sample."""
    parameter_shapes: dict[str, Shape] = field(default_factory=dict)
    flops: int = 0

    @property
    def spec(self) -> OpSpec:
        return OPS[self.op]

    @property
    def num_parameters(self) -> int:
        return sum(math.prod(s) for s in self.parameter_shapes.values())

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": self.id, "op": self.op}
        if self.inputs:
            doc["inputs"] = list(self.inputs)
        written = self.attrs.written()
        doc.update(self.attrs.model_dump(mode="json", include=set(written)))
        return doc

    def hash_fields(self) -> dict[str, Any]:
        """:meth:`to_dict` as ``json.dumps`` writes it, 30x faster: the attributes' own values
        (ints, floats, strings, tuples) instead of pydantic's JSON-mode dump, whose tuples
        become lists, which ``json.dumps`` writes alike. Graph hashing is on the path of every
        prediction."""
        doc: dict[str, Any] = {"id": self.id, "op": self.op}
        if self.inputs:
            doc["inputs"] = self.inputs
        doc.update(self.attrs.written())
        return doc


class ArchitectureGraph:
    """A validated, immutable architecture graph.

    Build one with :meth:`from_dict`, :meth:`from_json`, :class:`~nas_service.graph.GraphBuilder`
    or :func:`~nas_service.graph.from_module`; each raises :class:`GraphValidationError` listing
    every problem found.

    ``parameter_sources`` optionally maps graph parameter names (``"<node id>.<name>"``) to the
    names they had in the module a graph was traced from; it is not part of the content hash.
    """

    __slots__ = ("name", "nodes", "parameter_sources", "_by_id", "_hash")

    def __init__(self, nodes: list[GraphNode], name: str | None = None,
                 parameter_sources: Mapping[str, str] | None = None):
        # Callers go through _validate(); this constructor trusts its arguments.
        self.name = name
        self.nodes: tuple[GraphNode, ...] = tuple(nodes)
        self.parameter_sources: dict[str, str] = dict(parameter_sources or {})
        self._by_id = {n.id: n for n in self.nodes}
        self._hash: str | None = None

    # ---- construction ------------------------------------------------------------------------

    @classmethod
    def from_json(cls, text: str | bytes, limits: GraphLimits = DEFAULT_LIMITS) -> ArchitectureGraph:
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError) as e:  # ValueError: also >4300-digit integers
            raise GraphValidationError([GraphProblem(f"not valid JSON: {e}")]) from None
        return cls.from_dict(doc, limits)

    @classmethod
    def from_dict(cls, doc: Any, limits: GraphLimits = DEFAULT_LIMITS) -> ArchitectureGraph:
        return _validate(doc, limits)

    # ---- serialisation -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The document with every attribute written out (defaults included)."""
        doc: dict[str, Any] = {"format": FORMAT}
        if self.name is not None:
            doc["name"] = self.name
        doc["nodes"] = [n.to_dict() for n in self.nodes]
        if self.parameter_sources:
            doc["parameter_sources"] = dict(self.parameter_sources)
        return doc

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def content_hash(self) -> str:
        """SHA-256 of the canonical document (nodes only: name and sources do not count).

        Two documents that differ only in defaults written out or key order hash the same.
        """
        if self._hash is None:
            canonical = json.dumps([n.hash_fields() for n in self.nodes], sort_keys=True,
                                   separators=(",", ":"))
            self._hash = hashlib.sha256(canonical.encode()).hexdigest()
        return self._hash

    # ---- queries -----------------------------------------------------------------------------

    def __getitem__(self, node_id: str) -> GraphNode:
        return self._by_id[node_id]

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._by_id

    def __iter__(self) -> Iterator[GraphNode]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ArchitectureGraph) and self.content_hash() == other.content_hash()

    def __hash__(self) -> int:
        return hash(self.content_hash())

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        return (f"<ArchitectureGraph{name}: {len(self.nodes)} nodes, "
                f"{self.num_parameters:,} parameters, input {list(self.input_shape)}, "
                f"{self.num_classes} classes>")

    @property
    def input_node(self) -> GraphNode:
        return self.nodes[0]

    @property
    def output_node(self) -> GraphNode:
        return next(n for n in self.nodes if n.op == "output")

    @property
    def input_shape(self) -> Shape:
        return self.input_node.shape

    @property
    def num_classes(self) -> int:
        """Classes of a classifier; the vocabulary of a next-token predictor."""
        return self.output_node.attrs.num_classes  # type: ignore[attr-defined]

    @property
    def task(self) -> str:
        """What the output predicts: ``classification`` (``(num_classes,)`` logits per sample)
        or ``next_token`` (``(T, num_classes)`` logits for a ``[T]`` token input)."""
        return self.output_node.attrs.task  # type: ignore[attr-defined]

    @property
    def num_parameters(self) -> int:
        return sum(n.num_parameters for n in self.nodes)

    @property
    def flops(self) -> int:
        """Multiply-accumulates of one forward pass of one sample (conv, linear, attention)."""
        return sum(n.flops for n in self.nodes)

    @property
    def opaque_nodes(self) -> tuple[GraphNode, ...]:
        """The ``opaque`` nodes: computations the format cannot express exactly. A graph with
        any cannot be built (:func:`~nas_service.graph.to_module` refuses it), but a GHN still
        predicts their parameters."""
        return tuple(n for n in self.nodes if n.op == "opaque")

    def parameter_shapes(self) -> dict[str, Shape]:
        """``{"<node id>.<name>": shape}`` in the order of the built module's ``state_dict``."""
        return {f"{n.id}.{k}": s for n in self.nodes for k, s in n.parameter_shapes.items()}

    def consumers(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {n.id: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                out[i].append(n.id)
        return out

    def summary(self) -> str:
        """A table of nodes with shapes and counts, like ``torchinfo``."""
        rows = [("node", "op", "inputs", "output shape", "params", "MACs")]
        for n in self.nodes:
            rows.append((n.id, n.op, ",".join(n.inputs), str(list(n.shape)),
                         f"{n.num_parameters:,}", f"{n.flops:,}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.append(f"total: {len(self.nodes)} nodes, {self.num_parameters:,} parameters, "
                     f"{self.flops:,} MACs")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------


@dataclass
class _RawNode:
    index: int
    id: str
    op: str
    inputs: list[str]
    attrs: Attrs | None
    inputs_ok: bool = True


def _pydantic_problems(e: ValidationError, node: str, index: int) -> list[GraphProblem]:
    out = []
    for err in e.errors(include_url=False):
        loc = [str(x) for x in err["loc"]]
        field_name = loc[0] if loc else None
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown attribute for this op"
        elif len(loc) > 1:
            msg = f"{msg} (at {'.'.join(loc)})"
        out.append(GraphProblem(msg, node=node, field=field_name, index=index))
    return out


def _parse_nodes(nodes: list[Any], limits: GraphLimits,
                 problems: list[GraphProblem]) -> list[_RawNode]:
    raw: list[_RawNode] = []
    seen: set[str] = set()
    for index, item in enumerate(nodes):
        if not isinstance(item, dict):
            problems.append(GraphProblem(f"a node must be an object, got {type(item).__name__}",
                                         index=index))
            continue
        node_id = item.get("id")
        if not isinstance(node_id, str):
            problems.append(GraphProblem("missing or non-string 'id'", field="id", index=index))
            continue
        if len(node_id) > limits.max_id_length or not _ID_PATTERN.fullmatch(node_id):
            problems.append(GraphProblem(
                f"id must be 1-{limits.max_id_length} characters of letters, digits, '_' and "
                f"'-' (not starting with '-')", node=node_id[:64], field="id", index=index))
            continue
        if node_id in seen:
            problems.append(GraphProblem("duplicate node id", node=node_id, field="id",
                                         index=index))
            continue
        seen.add(node_id)

        op = item.get("op")
        spec = OPS.get(op) if isinstance(op, str) else None
        if spec is None:
            hint = ""
            if isinstance(op, str):
                close = difflib.get_close_matches(op, OPS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(GraphProblem(
                f"unknown op {_short.repr(op)}{hint} (see docs/graph-format.md for the vocabulary)",
                node=node_id, field="op", index=index))

        inputs = item.get("inputs", [])
        inputs_ok = True
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            problems.append(GraphProblem("'inputs' must be a list of node ids", node=node_id,
                                         field="inputs", index=index))
            inputs, inputs_ok = [], False
        elif spec is not None:
            lo, hi = spec.min_inputs, spec.max_inputs
            hi_eff = limits.max_inputs_per_node if hi is None else min(hi, limits.max_inputs_per_node)
            if not lo <= len(inputs) <= hi_eff:
                want = f"exactly {lo}" if lo == hi_eff else f"{lo} to {hi_eff}"
                problems.append(GraphProblem(
                    f"op {op!r} takes {want} input(s), got {len(inputs)}", node=node_id,
                    field="inputs", index=index))
                inputs_ok = False
            elif len(set(inputs)) != len(inputs) and op not in ("add", "mul", "concat"):
                problems.append(GraphProblem("the same input is listed twice", node=node_id,
                                             field="inputs", index=index))

        attrs = None
        if spec is not None:
            values = {k: v for k, v in item.items() if k not in _NODE_KEYS}
            try:
                attrs = spec.attrs.model_validate(values)
            except ValidationError as e:
                problems.extend(_pydantic_problems(e, node_id, index))
        raw.append(_RawNode(index, node_id, op if isinstance(op, str) else "", inputs, attrs,
                            inputs_ok))
    return raw


def _topological_order(raw: list[_RawNode], problems: list[GraphProblem]) -> list[_RawNode] | None:
    """Kahn's algorithm. ``None`` when there is a cycle."""
    by_id = {n.id: n for n in raw}
    for n in raw:
        for i in n.inputs:
            if i not in by_id:
                problems.append(GraphProblem(f"input {i!r} does not name a node of this graph",
                                             node=n.id, field="inputs", index=n.index))
    indegree = {n.id: len({i for i in n.inputs if i in by_id}) for n in raw}
    consumers: dict[str, list[str]] = {n.id: [] for n in raw}
    for n in raw:
        for i in dict.fromkeys(n.inputs):
            if i in by_id:
                consumers[i].append(n.id)
    # A heap on document position: a document already in topological order keeps its order.
    ready = [(n.index, n.id) for n in raw if indegree[n.id] == 0]
    heapq.heapify(ready)
    order: list[_RawNode] = []
    while ready:
        _, nid = heapq.heappop(ready)
        order.append(by_id[nid])
        for c in consumers[nid]:
            indegree[c] -= 1
            if indegree[c] == 0:
                heapq.heappush(ready, (by_id[c].index, c))
    if len(order) == len(raw):
        return order
    # Report one cycle explicitly: follow inputs among the nodes left over until one repeats.
    left = {nid for nid, d in indegree.items() if d > 0}
    start = min(left, key=lambda x: by_id[x].index)
    path, seen = [start], {start: 0}
    while True:
        nxt = next(i for i in by_id[path[-1]].inputs if i in left)
        if nxt in seen:
            cycle = path[seen[nxt]:] + [nxt]
            break
        seen[nxt] = len(path)
        path.append(nxt)
    cycle.reverse()  # report in data-flow direction
    problems.append(GraphProblem("the graph has a cycle: " + " -> ".join(cycle), node=cycle[0],
                                 field="inputs", index=by_id[cycle[0]].index))
    return None


def _validate(doc: Any, limits: GraphLimits) -> ArchitectureGraph:
    problems: list[GraphProblem] = []
    if not isinstance(doc, dict):
        raise GraphValidationError(
            [GraphProblem(f"the document must be a JSON object, got {type(doc).__name__}")])
    if doc.get("format") != FORMAT:
        problems.append(GraphProblem(
            f"'format' must be {FORMAT!r}, got {_short.repr(doc.get('format'))}", field="format"))
    for key in doc:
        if key not in _DOC_KEYS:
            problems.append(GraphProblem(f"unknown top-level key {key!r}", field=str(key)[:64]))
    name = doc.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > 256
                             or any(ord(ch) < 32 or ord(ch) == 127 for ch in name)
                             or not _is_utf8(name)):
        problems.append(GraphProblem(
            "'name' must be a string of at most 256 characters without control characters "
            "or lone surrogates", field="name"))
        name = None
    sources = doc.get("parameter_sources")
    if sources is not None and not (isinstance(sources, dict) and all(
            isinstance(k, str) and isinstance(v, str) and _is_utf8(k) and _is_utf8(v)
            and "\x00" not in k + v for k, v in sources.items())):
        problems.append(GraphProblem("'parameter_sources' must map strings to strings (UTF-8, "
                                     "no NUL)", field="parameter_sources"))
        sources = None
    nodes = doc.get("nodes")
    if not isinstance(nodes, list) or not nodes:
        problems.append(GraphProblem("'nodes' must be a non-empty list", field="nodes"))
        raise GraphValidationError(problems)
    if len(nodes) > limits.max_nodes:
        # Stop before looking at the nodes: this is the cheap guard against huge documents.
        problems.append(GraphProblem(
            f"the graph has {len(nodes)} nodes; the limit is {limits.max_nodes}", field="nodes"))
        raise GraphValidationError(problems)

    raw = _parse_nodes(nodes, limits, problems)
    inputs = [n for n in raw if n.op == "input"]
    outputs = [n for n in raw if n.op == "output"]
    if len(inputs) != 1:
        problems.append(GraphProblem(
            f"a graph needs exactly one 'input' node, found {len(inputs)}"
            + (": " + ", ".join(n.id for n in inputs) if inputs else ""), field="nodes"))
    if len(outputs) != 1:
        problems.append(GraphProblem(
            f"a graph needs exactly one 'output' node, found {len(outputs)}"
            + (": " + ", ".join(n.id for n in outputs) if outputs else ""), field="nodes"))
    order = _topological_order(raw, problems)
    if order is None:
        raise GraphValidationError(problems)

    # Every node must feed the output: dead branches are almost always a mistake in the document.
    if len(outputs) == 1:
        by_id = {n.id: n for n in raw}
        live, stack = set(), [outputs[0].id]
        while stack:
            nid = stack.pop()
            if nid in live or nid not in by_id:
                continue
            live.add(nid)
            stack.extend(by_id[nid].inputs)
        for n in raw:
            if n.id not in live:
                problems.append(GraphProblem("this node does not contribute to the output",
                                             node=n.id, index=n.index))

    graph_nodes = _infer_shapes(order, limits, problems)
    _check_next_token(graph_nodes, problems)
    if problems:
        raise GraphValidationError(problems)
    return ArchitectureGraph(graph_nodes, name=name, parameter_sources=sources)


def _check_next_token(nodes: list[GraphNode], problems: list[GraphProblem]) -> None:
    """A ``next_token`` output predicts a token per input position: the input must be ``[T]``
    token ids and the logits ``(T, vocabulary)``."""
    output = next((n for n in nodes if n.op == "output"), None)
    if output is None or output.attrs.task != "next_token":  # type: ignore[attr-defined]
        return
    first = nodes[0]
    if first.op != "input" or len(first.shape) != 1:
        problems.append(GraphProblem(
            f"a next_token output needs an input of [T] token ids, got shape "
            f"{list(first.shape) if first.op == 'input' else '?'}", node=output.id,
            field="task"))
    elif output.shape[0] != first.shape[0]:
        problems.append(GraphProblem(
            f"a next_token output needs logits for each of the {first.shape[0]} input tokens, "
            f"got {output.shape[0]}", node=output.id, field="task"))


def _is_utf8(text: str) -> bool:
    """Whether UTF-8 can encode ``text``: JSON's ``"\\ud800"`` escapes decode to lone
    surrogates, which it cannot, so a document holding one could be stored but not sent back."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _infer_shapes(order: list[_RawNode], limits: GraphLimits,
                  problems: list[GraphProblem]) -> list[GraphNode]:
    shapes: dict[str, Shape] = {}
    result: list[GraphNode] = []
    total_params = total_flops = 0
    for n in order:
        if n.attrs is None or not n.op or not n.inputs_ok:
            continue  # already reported; its consumers are skipped below
        if any(i not in shapes for i in n.inputs):
            continue  # an input failed: do not cascade errors downstream
        spec = OPS[n.op]
        ins = [shapes[i] for i in n.inputs]
        try:
            if n.op == "input":
                _check_input(n.attrs, limits)
            out = spec.infer_shape(n.attrs, ins)
            pshapes = spec.parameter_shapes(n.attrs, ins, out)
            flops = spec.flops(n.attrs, ins, out)
        except ShapeError as e:
            problems.append(GraphProblem(str(e), node=n.id, field=e.field, index=n.index))
            continue
        over = _check_node_limits(n.attrs, out, pshapes, limits)
        if over:
            problems.append(GraphProblem(over, node=n.id, index=n.index))
            continue
        total_params += sum(math.prod(s) for s in pshapes.values())
        total_flops += flops
        shapes[n.id] = out
        result.append(GraphNode(n.id, n.op, tuple(n.inputs), n.attrs, tuple(ins), out,
                                pshapes, flops))
    if total_params > limits.max_parameters:
        problems.append(GraphProblem(
            f"the graph has {total_params:,} parameters; the limit is {limits.max_parameters:,}",
            field="nodes"))
    if total_flops > limits.max_flops:
        problems.append(GraphProblem(
            f"the graph needs {total_flops:,} multiply-accumulates per sample; the limit is "
            f"{limits.max_flops:,}", field="nodes"))
    return result


def _check_input(attrs: Any, limits: GraphLimits) -> None:
    shape = attrs.shape
    if len(shape) == 3 and shape[0] > limits.max_input_channels:
        raise ShapeError(f"input channels {shape[0]} exceed the limit of "
                         f"{limits.max_input_channels}", "shape")
    spatial = shape[1:] if len(shape) == 3 else shape[:1] if len(shape) == 2 else ()
    if any(s > limits.max_input_size for s in spatial):
        raise ShapeError(f"input size {list(shape)} exceeds the limit of "
                         f"{limits.max_input_size} per axis", "shape")


def _check_node_limits(attrs: Any, out: Shape, pshapes: dict[str, Shape],
                       limits: GraphLimits) -> str | None:
    for key in ("kernel_size", "patch_size"):
        # A dict lookup: getattr on a pydantic model raises (slowly) inside for a missing name.
        k = attrs.__dict__.get(key)
        if k is None:
            continue
        if isinstance(k, int):
            k = (k,)  # a 1-D kernel
        if max(k) > limits.max_kernel_size:
            return f"{key} {list(k)} exceeds the limit of {limits.max_kernel_size}"
    width = out[0] if len(out) != 2 else out[1]
    if width > limits.max_channels:
        return f"{width} channels/features exceed the limit of {limits.max_channels}"
    if math.prod(out) > limits.max_activation_elements:
        return (f"output of {_count(math.prod(out))} elements per sample exceeds the limit of "
                f"{limits.max_activation_elements:,}")
    params = sum(math.prod(s) for s in pshapes.values())
    if params > limits.max_parameters_per_node:
        return (f"{_count(params)} parameters in one node exceed the limit of "
                f"{limits.max_parameters_per_node:,}")
    return None
