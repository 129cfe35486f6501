"""The conversion: each traced or recorded call becomes ``nas-graph/1`` nodes.

Owns the one rule registry: ``@_module_rule(LayerType, ...)`` registers a rule for the layer
types of ``call_module`` nodes (matched by exact type), ``@_call_rule(functions=..., methods=...)``
one for ``call_function`` nodes (matched by the function object) and ``call_method`` nodes
(matched by the method name). The rule modules of this package fill it when they are imported.
:meth:`_Converter.run` walks an fx graph with it; :mod:`.recorder` calls the same rules with the
calls of a recorded run.

:class:`_Converter` owns what one conversion builds: node ids (from fx node names or module
paths, unique and within the id length limit), nodes whose attributes are validated and whose
shapes are inferred by the op specs as they are added, ``opaque`` nodes, the mapping of each
node's parameters and batch-norm buffers to their names in the module's ``state_dict``, and the
record of every call that no rule converts. Walking an fx graph never runs the module on data:
the output shape of a refused call is found on the meta device, on a structural copy of the layer
whose tensors are meta tensors.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import ValidationError
from torch import fx, nn

from ..errors import ShapeError
from ..limits import GraphLimits
from ..ops import OPS, Attrs, OpSpec, Shape
from .errors import _Unsupported
from .values import _BATCH, _AttentionResult, _not_plain, _Param, _Tensor, _tensor

ModuleRule = Callable[["_Converter", fx.Node, Any, tuple, dict], Any]
CallRule = Callable[["_Converter", fx.Node, tuple, dict], Any]
_MODULE_RULES: dict[type, ModuleRule] = {}
_FUNCTION_RULES: dict[Any, CallRule] = {}
_METHOD_RULES: dict[str, CallRule] = {}


def _module_rule(*types: type) -> Callable[[ModuleRule], ModuleRule]:
    def register(rule: ModuleRule) -> ModuleRule:
        for t in types:
            _MODULE_RULES[t] = rule
        return rule
    return register


def _call_rule(functions: Sequence[Any] = (), methods: Sequence[str] = ()
               ) -> Callable[[CallRule], CallRule]:
    def register(rule: CallRule) -> CallRule:
        for f in functions:
            _FUNCTION_RULES[f] = rule
        for m in methods:
            _METHOD_RULES[m] = rule
        return rule
    return register


@dataclass(slots=True)
class _Entry:
    """A node of the graph being built (``op`` is ``None`` for an unsupported node, or for one
    downstream of it; ``problem`` says what is wrong with a node that is itself the cause)."""

    op: str | None
    inputs: list[str]
    attrs: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)
    problem: str | None = None
    skippable: bool = False


class _Converter:
    """One conversion: walks an fx graph in order, keeps each fx node's abstract value in
    :attr:`env`, and builds :attr:`entries`, the nodes of the ``nas-graph/1`` document."""

    def __init__(self, module: nn.Module, input_shape: Shape, skip_unsupported: bool,
                 limits: GraphLimits, constants: Mapping[str, torch.Tensor] | None = None,
                 reserved: set[str] | None = None):
        self.root = module
        self.constants = dict(constants or {})
        self.skip_unsupported = skip_unsupported
        self.max_id = limits.max_id_length
        self.entries: dict[str, _Entry] = {
            "input": _Entry("input", [], {"shape": list(input_shape)})}
        self.taken = {"input", "output"}
        self.reserved = reserved or set()
        self.env: dict[fx.Node, Any] = {}
        self.attrs_cache: dict[tuple[Any, ...], Attrs] = {}
        self.input_shape = input_shape
        self.seen_input = False

    # ---- node ids ------------------------------------------------------------------------------

    def fresh_id(self, hint: str) -> str:
        """``hint`` (an fx node name, so already an identifier) if free, else ``hint_<k>``."""
        hint = hint[: self.max_id - 8] or "node"
        if hint not in self.taken:
            self.taken.add(hint)
            return hint
        k = 1
        while f"{hint}_{k}" in self.taken or f"{hint}_{k}" in self.reserved:
            k += 1
        self.taken.add(f"{hint}_{k}")
        return f"{hint}_{k}"

    # ---- building --------------------------------------------------------------------------------

    def add(self, op: str, inputs: Sequence[_Tensor], hint: str,
            sources: Mapping[str, tuple[str, torch.Tensor]] | None = None,
            **attrs: Any) -> _Tensor:
        """Appends a node, inferring its shape; raises :class:`_Unsupported` if the op rejects
        its attributes or input shapes, or if the module's tensors do not fit the op's."""
        spec = OPS[op]
        a = self.attrs(spec, attrs)
        for t in inputs:
            if not t.plain:
                raise _Unsupported(_not_plain(t))
        ins = [t.shape for t in inputs]
        try:
            out = spec.infer_shape(a, ins)  # type: ignore[arg-type]
        except ShapeError as e:
            raise _Unsupported(str(e)) from None
        expected = spec.parameter_shapes(a, ins, out)  # type: ignore[arg-type]
        names = _match_state(op, expected, dict(sources)) if expected or sources else {}
        nid = self.fresh_id(hint)
        self.entries[nid] = _Entry(op, [t.node for t in inputs], attrs, names)
        return _tensor(nid, out)

    def attrs(self, spec: OpSpec, attrs: dict[str, Any]) -> Attrs:
        """Validated attributes, memoised: a network repeats a few layer configurations."""
        key = (spec.name, *attrs.items())
        try:
            return self.attrs_cache[key]
        except KeyError:
            pass
        except TypeError:  # an unhashable value: validation will say what is wrong with it
            key = None
        try:
            a = spec.attrs.model_validate(attrs)
        except ValidationError as e:
            raise _Unsupported("; ".join(
                f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            ) from None
        if key is not None:
            self.attrs_cache[key] = a
        return a

    def opaque(self, hint: str, inputs: Sequence[str], params: Sequence[tuple[str, torch.Tensor]],
               shape: Shape, label: str, reason: str) -> _Tensor:
        """Appends an ``opaque`` node: ``inputs`` (graph node ids), the output ``shape`` of one
        sample, and the parameters ``(source name, tensor)`` the computation owns."""
        parameters, sources = _opaque_parameters(params)
        nid = self.fresh_id(hint)
        self.entries[nid] = _Entry("opaque", list(dict.fromkeys(inputs)),
                                   {"shape": list(shape), "parameters": parameters,
                                    "label": _short_label(label)}, sources, problem=reason)
        return _tensor(nid, shape)

    def skipped(self, hint: str, x: _Tensor, description: str) -> _Tensor:
        """An ``identity`` node in place of a call that keeps ``x``'s shape
        (``skip_unsupported``)."""
        nid = self.fresh_id(hint)
        self.entries[nid] = _Entry("identity", [x.node], {}, problem=description, skippable=True)
        return _tensor(nid, x.shape)  # type: ignore[arg-type]

    def problem(self, hint: str, description: str | None, inputs: Sequence[str]) -> _Tensor:
        nid = self.fresh_id(hint)
        self.entries[nid] = _Entry(None, list(dict.fromkeys(inputs)), {}, problem=description)
        return _Tensor(nid, None)

    # ---- the walk ----------------------------------------------------------------------------------

    def run(self, fx_graph: fx.Graph) -> Any:
        env = self.env
        for node in fx_graph.nodes:
            if node.op == "output":
                return self.resolve(node.args[0], [])
            env[node] = self.convert(node)
        raise AssertionError("an fx graph always ends with an output node")

    def resolve(self, a: Any, tensors: list[_Tensor]) -> Any:
        """fx arguments to abstract values; collects the tensors met into ``tensors``."""
        if isinstance(a, fx.Node):
            v = self.env[a]
            if isinstance(v, _Tensor):
                tensors.append(v)
            elif isinstance(v, _AttentionResult):
                tensors.append(v.output)
            return v
        if isinstance(a, tuple):  # fx stores lists as its own immutable_list
            return tuple(self.resolve(x, tensors) for x in a)
        if isinstance(a, list):
            return [self.resolve(x, tensors) for x in a]
        if isinstance(a, dict):
            return {k: self.resolve(v, tensors) for k, v in a.items()}
        if isinstance(a, slice):
            return slice(self.resolve(a.start, tensors), self.resolve(a.stop, tensors),
                         self.resolve(a.step, tensors))
        return a

    def convert(self, node: fx.Node) -> Any:
        op = node.op
        if op == "placeholder":
            if not self.seen_input:
                self.seen_input = True
                return _tensor("input", self.input_shape)
            return node.args[0] if node.args else self.problem(
                node.name, f"second input {node.target!r} of forward", [])
        if op == "get_attr":
            return self.get_attr(node)

        tensors: list[_Tensor] = []
        args = self.resolve(node.args, tensors)
        kwargs = self.resolve(node.kwargs, tensors)
        module = None
        if op == "call_module":
            module = self.root.get_submodule(node.target)
            rule = _MODULE_RULES.get(type(module))
            where = f"{node.target} ({type(module).__name__})"
        elif op == "call_function":
            if node.target in _IGNORED_FUNCTIONS:
                return None
            rule = _FUNCTION_RULES.get(node.target)
            where = f"{_function_name(node.target)}{_location(node)}"
        else:
            rule = _METHOD_RULES.get(node.target)
            where = f"Tensor.{node.target}(){_location(node)}"

        unknown = [t.node for t in tensors if not t.known]
        if rule is None:
            if op == "call_function" and _is_shape_arithmetic(node.target, args, kwargs):
                return node.target(*args, **kwargs)
            reason = "not supported by nas-graph/1"
        elif unknown:
            return self.problem(node.name, None, [t.node for t in tensors])  # not a cause
        else:
            try:
                if module is not None:
                    return rule(self, node, module, args, kwargs)
                return rule(self, node, args, kwargs)
            except _Unsupported as e:
                reason = str(e)
        return self.unsupported(node, module, args, kwargs, tensors, f"{where}: {reason}")

    def get_attr(self, node: fx.Node) -> Any:
        target = node.target
        assert isinstance(target, str)
        if target in self.constants:
            return _Param(target, self.constants[target])
        try:
            return _Param(target, self.root.get_parameter(target))
        except AttributeError:
            pass
        try:
            return _Param(target, self.root.get_buffer(target))
        except AttributeError:
            pass
        return self.problem(node.name, f"attribute {target!r}: not a parameter or buffer", [])

    def unsupported(self, node: fx.Node, module: nn.Module | None, args: tuple, kwargs: dict,
                    tensors: list[_Tensor], description: str) -> _Tensor:
        """Records a node nas-graph cannot express.

        Its output shape is found by running the call on the meta device (no data, and never on
        the module itself: on a structural copy whose tensors are meta tensors). Knowing it lets
        the conversion go on, so that later problems are reported too; and with
        ``skip_unsupported`` a call that keeps its input's shape becomes an identity node.
        """
        inputs = [t.node for t in tensors]
        out = None
        if tensors and all(t.known for t in tensors):
            try:
                out = _run_on_meta(node, module, args, kwargs)
            except Exception:
                out = None
        if not (isinstance(out, torch.Tensor) and 2 <= out.dim() <= 4
                and out.shape[0] == _META_BATCH):
            if self.skip_unsupported and tensors and all(t.known for t in tensors):
                description += (" (it cannot be skipped: it does not return one tensor of a "
                                "shape found without data)")
            return self.problem(node.name, description, inputs)
        shape = tuple(out.shape[1:])
        x = tensors[0]
        if self.skip_unsupported and x.plain and shape == x.shape:
            return self.skipped(node.name, x, description)
        if self.skip_unsupported:
            description += (f" (it cannot be skipped: it changes the shape {list(x.phys or ())} "
                            f"to {list(shape)})")
        return _tensor(self.problem(node.name, description, inputs).node, shape)

    def inplace(self, node: fx.Node, value: Any) -> Any:
        """An in-place op also changes what its input's fx node holds for later readers."""
        target = node.args[0] if node.args else node.kwargs.get("input")
        if isinstance(target, fx.Node):
            self.env[target] = value
        return value


# Checks fx inserts for arguments traced at their defaults (concrete_args).
_IGNORED_FUNCTIONS = {torch._assert,
                      getattr(fx._symbolic_trace, "_assert_is_none", torch._assert)}
_META_BATCH = 3


def _function_name(target: Any) -> str:
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", repr(target))
    if module.startswith("torch.nn.functional") or module == "torch._C._nn":
        return f"F.{name}"
    if module in ("_operator", "operator"):
        return f"operator.{name}"
    if module.startswith("torch") or isinstance(target, type(torch.relu)):
        return f"torch.{name}"
    return f"{module}.{name}" if module else name


def _location(node: fx.Node) -> str:
    path, cls = node.meta.get("scope", ("", None))
    return f" in {path} ({cls.__name__})" if path and isinstance(cls, type) else ""


def _is_shape_arithmetic(target: Any, args: Any, kwargs: dict) -> bool:
    """Arithmetic on concrete sizes (``C // 2``): evaluated directly."""
    if getattr(target, "__module__", None) not in ("_operator", "operator", "builtins"):
        return False

    def concrete(v: Any) -> bool:
        if isinstance(v, tuple | list):
            return all(concrete(x) for x in v)
        return isinstance(v, int | float | bool | str | slice | type(None))
    return concrete(args) and concrete(kwargs)


def _run_on_meta(node: fx.Node, module: nn.Module | None, args: tuple, kwargs: dict) -> Any:
    def meta(v: Any) -> Any:
        if isinstance(v, _Tensor):
            return torch.empty((_META_BATCH, *v.phys), device="meta")  # type: ignore[misc]
        if isinstance(v, _Param):
            return torch.empty(v.full_shape(), device="meta") if not v.batched else None
        if v is _BATCH:
            return _META_BATCH
        if isinstance(v, tuple | list):
            return type(v)(meta(x) for x in v)
        if isinstance(v, dict):
            return {k: meta(x) for k, x in v.items()}
        return v

    margs, mkwargs = meta(args), meta(kwargs)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's performance hints are about real runs
        return _call(node, module, margs, mkwargs)


def _call(node: fx.Node, module: nn.Module | None, margs: Any, mkwargs: Any) -> Any:
    if module is not None:
        if any(isinstance(p, nn.parameter.UninitializedTensorMixin)
               for p in [*module.parameters(), *module.buffers()]):
            raise ValueError("lazy modules are materialised by their first call")
        memo: dict[int, Any] = {}
        for t in [*module.parameters(), *module.buffers()]:
            m = torch.empty_like(t, device="meta")
            memo[id(t)] = nn.Parameter(m, t.requires_grad) if isinstance(t, nn.Parameter) else m
        return copy.deepcopy(module, memo)(*margs, **mkwargs)
    if node.op == "call_method":
        return getattr(margs[0], node.target)(*margs[1:], **mkwargs)
    return node.target(*margs, **mkwargs)


def _short_label(label: str) -> str:
    label = "".join(ch if ch.isprintable() else " " for ch in label)
    return label if len(label) <= 256 else label[:253] + "..."


def _opaque_parameters(params: Sequence[tuple[str, torch.Tensor]]
                       ) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Names for an opaque node's parameters (the last part of each source name, longer where
    two would clash) with their shapes, and the name -> source mapping."""
    shapes: dict[str, list[int]] = {}
    sources: dict[str, str] = {}
    seen: set[str] = set()
    for source, tensor in params:
        if source in seen:
            continue
        seen.add(source)
        parts = source.split(".")
        name = parts[-1]
        for k in range(2, len(parts) + 1):
            if name not in shapes:
                break
            name = "_".join(parts[-k:])
        base, k = name, 1
        while name in shapes:
            name = f"{base}_{k}"
            k += 1
        shapes[name[:128]] = list(tensor.shape)
        sources[name[:128]] = source
    return shapes, sources


_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _match_state(op: str, expected: dict[str, Shape],
                 sources: dict[str, tuple[str, torch.Tensor]]) -> dict[str, str]:
    """Checks a module's tensors against the op's parameters; returns graph name -> source name
    in ``state_dict`` order (parameters, then batch-norm buffers)."""
    buffers = _BN_BUFFERS if op == "batch_norm" else ()
    if op == "batch_norm" and "num_batches_tracked" not in sources:
        buffers = _BN_BUFFERS[:2]  # F.batch_norm is given the statistics only
    wanted = [*expected, *buffers]
    # A tensor may differ from the op's by axes of size 1: a layer scale kept as (C, 1, 1),
    # a 1x1 convolution's weight applied as a linear layer's.
    bad = set(sources) != set(wanted) or any(
        _squeezed(sources[k][1].shape) != _squeezed(s) for k, s in expected.items())
    if bad:
        have = {k: list(t.shape) for k, (_, t) in sources.items()}
        want = {k: list(s) for k, s in expected.items()} | {k: "buffer" for k in buffers}
        raise _Unsupported(f"its tensors {have} do not match what nas-graph op {op!r} needs "
                           f"({want})")
    return {k: sources[k][0] for k in wanted}


def _squeezed(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def _module_state(target: str, module: nn.Module, prefix: str = "",
                  state: dict[str, tuple[str, torch.Tensor]] | None = None
                  ) -> dict[str, tuple[str, torch.Tensor]]:
    """``{name: (qualified name, tensor)}`` for the parameters and buffers of a layer.

    Walks ``_parameters``/``_buffers`` directly: ``named_parameters()`` costs a generator
    stack per call, which adds up over the hundreds of layers of a cell network.
    """
    state = {} if state is None else state
    for tensors in (module._parameters, module._buffers):
        for k, t in tensors.items():
            if t is not None:
                state[prefix + k] = (f"{target}.{prefix}{k}", t)
    for k, child in module._modules.items():
        if child is not None:
            _module_state(target, child, f"{prefix}{k}.", state)
    return state
