"""``from_module``: an :class:`ArchitectureGraph` from a ``torch.nn.Module``, by ``torch.fx``.

The module is traced symbolically (``torch.fx.Tracer``): nothing runs on data, the module is never
modified, and it works under ``torch.no_grad()``. The fx graph is then interpreted abstractly: each
fx node becomes zero or more ``nas-graph/1`` nodes, with per-sample shapes inferred by the graph's
own op specs as the conversion goes, so layout questions ("is this ``flatten`` a classifier input
or the first half of a patch embedding?") are answered from shapes, not guessed from names.

What a value can be while converting:

* a tensor computed by the graph (:class:`_Tensor`), possibly seen through a pending reshape or a
  channels-last permute that only a later call resolves (``x.flatten(2).transpose(1, 2)`` is a
  ``to_tokens``, and a ``to_tokens`` of a patch-sized strided convolution is a ``patch_embed``);
* a parameter or buffer of the module (:class:`_Param`, from ``get_attr``: class tokens,
  positional embeddings, weights of functional calls);
* sizes: Python ints, or :data:`_BATCH`, the symbolic batch size (``x.size(0)``, ``x.shape[0]``).

Unsupported layers are collected, not raised one at a time: :class:`UnsupportedModuleError` lists
every one that contributes to the output.
"""

from __future__ import annotations

import copy
import inspect
import math
import operator
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import fx, nn

from .architecture import FORMAT, ArchitectureGraph
from .errors import ShapeError
from .limits import DEFAULT_LIMITS, GraphLimits
from .network import GraphNetwork
from .ops import OPS, Attrs, OpSpec, Shape

__all__ = ["UnsupportedModuleError", "from_module", "map_state_dict"]


class UnsupportedModuleError(ValueError):
    """The module uses layers or calls that ``nas-graph/1`` cannot express, or fx cannot trace it.

    ``unsupported`` lists every offending layer (``"<qualified name> (<type>): <reason>"``) or
    call, all at once, so a user fixes a model in one round trip.
    """

    def __init__(self, message: str, unsupported: Sequence[str] = ()):
        self.unsupported = list(unsupported)
        if self.unsupported:
            message += "".join(f"\n  - {u}" for u in self.unsupported)
        super().__init__(message)


# ------------------------------------------------------------------------------------------------
# Abstract values
# ------------------------------------------------------------------------------------------------


class _Batch:
    """The batch size: known to exist, never known in value."""

    def __repr__(self) -> str:
        return "B"


_BATCH = _Batch()


@dataclass(frozen=True, slots=True)
class _Tensor:
    """Output of graph node ``node`` (per-sample ``shape``; ``None`` when unknown because an
    unsupported node feeds it), seen as ``phys``: a row-major reshape of it, or, with ``nhwc``,
    the ``(H, W, C)`` permute of a ``(C, H, W)`` map."""

    node: str
    shape: Shape | None
    phys: Shape | None = None
    nhwc: bool = False

    @property
    def known(self) -> bool:
        return self.shape is not None

    @property
    def plain(self) -> bool:
        return self.shape is not None and self.phys == self.shape and not self.nhwc

    def full_shape(self) -> tuple[Any, ...]:
        return (_BATCH, *self.phys)  # type: ignore[misc]


def _tensor(node: str, shape: Shape) -> _Tensor:
    return _Tensor(node, shape, shape)


@dataclass(frozen=True, slots=True)
class _Param:
    """A parameter or buffer of the module (``get_attr``), optionally expanded over the batch."""

    target: str
    tensor: torch.Tensor
    batched: bool = False

    def full_shape(self) -> tuple[Any, ...]:
        shape = tuple(self.tensor.shape)
        return (_BATCH, *shape[1:]) if self.batched else shape


@dataclass(frozen=True, slots=True)
class _AttentionResult:
    """``nn.MultiheadAttention`` returns ``(output, weights)``; only the output is a graph value."""

    output: _Tensor


class _Unsupported(Exception):
    """Raised by a conversion rule: this call cannot be expressed (the message says why)."""


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


_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")

# ------------------------------------------------------------------------------------------------
# Tracing
# ------------------------------------------------------------------------------------------------


class _Tracer(fx.Tracer):
    """``torch.fx.Tracer`` that never writes to the traced module.

    The stock tracer stores tensor constants it meets (``x * torch.ones(3)``) as attributes of
    the root module; this one keeps them in :attr:`constants` instead.
    """

    def __init__(self) -> None:
        super().__init__()
        self.constants: dict[str, torch.Tensor] = {}

    def create_arg(self, a: Any) -> Any:
        # Fast paths for what nearly every call passes; the base class checks a long list of
        # special types first.
        kind = type(a)
        if kind in _SCALARS:
            return a
        if isinstance(a, fx.Proxy):
            return a.node
        if kind is tuple:
            return tuple([self.create_arg(x) for x in a])
        if kind is list:
            return [self.create_arg(x) for x in a]
        if (isinstance(a, torch.Tensor) and not isinstance(a, nn.Parameter)
                and a not in self.tensor_attrs
                and not any(a is b for b in self.root.buffers())):
            name = f"_tensor_constant{len(self.constants)}"
            self.constants[name] = a
            self.tensor_attrs[a] = name  # the base class then emits get_attr without setattr
        return super().create_arg(a)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        # The base class also keeps per-node copies of the module stack for node.meta, which
        # nothing here reads and which costs a third of the tracing time.
        path = self.path_of_module(m)
        scope = self.scope
        saved = scope.module_path, scope.module_type
        scope.module_path, scope.module_type = path, type(m)
        try:
            if self.is_leaf_module(m, path):
                return self.create_proxy("call_module", path, args, kwargs)
            return forward(*args, **kwargs)
        finally:
            scope.module_path, scope.module_type = saved

    def create_node(self, kind: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                    name: str | None = None, type_expr: Any | None = None) -> fx.Node:
        node = self.graph.create_node(kind, target, args, kwargs, name, type_expr)
        node.meta["scope"] = self.scope.module_path, self.scope.module_type
        return node


_SCALARS = frozenset({int, float, bool, str, type(None)})
# fx patches torch.nn.Module.__call__ (and some torch functions) process-wide while it traces.
_TRACE_LOCK = threading.Lock()


def _trace(module: nn.Module) -> tuple[fx.Graph, _Tracer]:
    name = type(module).__name__
    try:
        params = list(inspect.signature(type(module).forward).parameters.values())[1:]
    except (TypeError, ValueError):
        params = []
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p.name for p in positional if p.default is p.empty]
    if len(required) > 1:
        raise UnsupportedModuleError(
            f"{name}.forward takes {len(required)} required inputs ({', '.join(required)}); "
            "from_module converts networks with one input tensor")
    # Optional arguments are traced at their defaults, so `if mask is not None:` stays Python.
    concrete = {p.name: p.default for p in positional[1:] if p.default is not p.empty}
    tracer = _Tracer()
    try:
        with _TRACE_LOCK:
            graph = tracer.trace(module, concrete_args=concrete or None)
    except Exception as e:
        raise UnsupportedModuleError(
            f"torch.fx cannot trace {name}: {type(e).__name__}: {e}. from_module needs a forward "
            "without Python control flow on tensor values or shapes (if/for/len on a tensor); "
            "mark such helpers with torch.fx.wrap or move them into a leaf torch.nn layer"
        ) from e
    return graph, tracer


# ------------------------------------------------------------------------------------------------
# Conversion
# ------------------------------------------------------------------------------------------------

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


class _Converter:
    def __init__(self, module: nn.Module, tracer: _Tracer, fx_graph: fx.Graph,
                 input_shape: Shape, skip_unsupported: bool, limits: GraphLimits):
        self.root = module
        self.constants = tracer.constants
        self.skip_unsupported = skip_unsupported
        self.max_id = limits.max_id_length
        self.entries: dict[str, _Entry] = {
            "input": _Entry("input", [], {"shape": list(input_shape)})}
        self.taken = {"input", "output"}
        self.reserved = {n.name for n in fx_graph.nodes}
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
            nid = self.fresh_id(node.name)
            self.entries[nid] = _Entry("identity", [x.node], {}, problem=description,
                                       skippable=True)
            return _tensor(nid, shape)
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


def _not_plain(t: _Tensor) -> str:
    if t.nhwc:
        return ("its input is a channels-last permute (x.permute(0, 2, 3, 1)) of a map, which "
                "nas-graph/1 only supports around LayerNorm over channels")
    return (f"its input is a {list(t.phys or ())} reshape of a {list(t.shape or ())} tensor, "
            "which nas-graph/1 cannot express")


def _match_state(op: str, expected: dict[str, Shape],
                 sources: dict[str, tuple[str, torch.Tensor]]) -> dict[str, str]:
    """Checks a module's tensors against the op's parameters; returns graph name -> source name
    in ``state_dict`` order (parameters, then batch-norm buffers)."""
    buffers = _BN_BUFFERS if op == "batch_norm" else ()
    wanted = [*expected, *buffers]
    bad = set(sources) != set(wanted) or any(
        tuple(sources[k][1].shape) != s for k, s in expected.items())
    if bad:
        have = {k: list(t.shape) for k, (_, t) in sources.items()}
        want = {k: list(s) for k, s in expected.items()} | {k: "buffer" for k in buffers}
        raise _Unsupported(f"its tensors {have} do not match what nas-graph op {op!r} needs "
                           f"({want})")
    return {k: sources[k][0] for k in wanted}


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


# ------------------------------------------------------------------------------------------------
# Argument helpers
# ------------------------------------------------------------------------------------------------


def _x(v: Any, what: str = "input") -> _Tensor:
    if isinstance(v, _Tensor):
        return v
    if isinstance(v, _Param):
        raise _Unsupported(f"its {what} is the module tensor {v.target!r}, not a computed value")
    raise _Unsupported(f"its {what} is {v!r}, not a tensor")


def _plain(v: Any, what: str = "input") -> _Tensor:
    t = _x(v, what)
    if not t.plain:
        raise _Unsupported(_not_plain(t))
    return t


def _int(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Unsupported(f"{what} must be a constant integer, got {v!r}")
    return v


def _dims(v: Any) -> list[Any]:
    """``view(a, b)``, ``view((a, b))`` and ``view([a, b])`` all give ``[a, b]``."""
    if len(v) == 1 and isinstance(v[0], tuple | list | torch.Size):
        return list(v[0])
    return list(v)


def _norm_dim(d: Any, rank: int) -> int:
    d = _int(d, "dim")
    if not -rank <= d < rank:
        raise _Unsupported(f"dim {d} is out of range for a rank-{rank} tensor")
    return d + rank if d < 0 else d


def _pair(v: Any) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, tuple | list) else (v, v)


def _bind(signature: Callable[..., dict[str, Any]], args: tuple, kwargs: dict) -> dict[str, Any]:
    try:
        return signature(*args, **kwargs)
    except TypeError as e:
        raise _Unsupported(f"unexpected arguments ({e})") from None


# ------------------------------------------------------------------------------------------------
# Rules: layers (call_module)
# ------------------------------------------------------------------------------------------------


def _inplace_result(cx: _Converter, node: fx.Node, inplace: bool, value: Any) -> Any:
    return cx.inplace(node, value) if inplace else value


@_module_rule(nn.Conv2d)
def _conv2d_layer(cx: _Converter, node: fx.Node, m: nn.Conv2d, args: tuple, kwargs: dict) -> Any:
    x = _plain(args[0] if args else kwargs.get("input"))
    if m.padding_mode != "zeros":
        raise _Unsupported(f"padding_mode={m.padding_mode!r} (only zero padding is supported)")
    padding = _conv_padding(m.padding, m.kernel_size, m.dilation)
    return cx.add("conv2d", [x], node.name, _module_state(node.target, m),
                  out_channels=m.out_channels, kernel_size=m.kernel_size, stride=m.stride,
                  padding=padding, dilation=m.dilation, groups=m.groups, bias=m.bias is not None)


def _conv_padding(padding: Any, kernel: Sequence[int], dilation: Sequence[int]) -> tuple[int, ...]:
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        span = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
        if any(s % 2 for s in span):
            raise _Unsupported("padding='same' with an even (dilated) kernel pads "
                               "asymmetrically, which nas-graph/1 cannot express")
        return tuple(s // 2 for s in span)
    return _pair(padding)


@_module_rule(nn.Linear)
def _linear_layer(cx: _Converter, node: fx.Node, m: nn.Linear, args: tuple, kwargs: dict) -> Any:
    x = _plain(args[0] if args else kwargs.get("input"))
    return cx.add("linear", [x], node.name, _module_state(node.target, m),
                  out_features=m.out_features, bias=m.bias is not None)


@_module_rule(nn.BatchNorm1d, nn.BatchNorm2d)
def _batch_norm_layer(cx: _Converter, node: fx.Node, m: nn.modules.batchnorm._BatchNorm,
                      args: tuple, kwargs: dict) -> Any:
    x = _plain(args[0] if args else kwargs.get("input"))
    rank = 3 if isinstance(m, nn.BatchNorm2d) else 1
    if len(x.shape) != rank:
        raise _Unsupported(f"{type(m).__name__} over a per-sample shape {list(x.shape)} "
                           f"(nas-graph/1 batch-normalises {'maps' if rank == 3 else 'vectors'})")
    if not m.track_running_stats:
        raise _Unsupported("track_running_stats=False (batch statistics at evaluation)")
    if m.momentum is None:
        raise _Unsupported("momentum=None (cumulative moving average)")
    return cx.add("batch_norm", [x], node.name, _module_state(node.target, m), eps=m.eps,
                  momentum=m.momentum, affine=m.affine)


@_module_rule(nn.LayerNorm)
def _layer_norm_layer(cx: _Converter, node: fx.Node, m: nn.LayerNorm, args: tuple,
                      kwargs: dict) -> Any:
    x = _x(args[0] if args else kwargs.get("input"))
    return _layer_norm(cx, node, x, tuple(m.normalized_shape), m.eps,
                       m.elementwise_affine, _module_state(node.target, m))


def _layer_norm(cx: _Converter, node: fx.Node, x: _Tensor, normalized: tuple[int, ...],
                eps: float, affine: bool, sources: dict[str, tuple[str, torch.Tensor]]) -> Any:
    assert x.shape is not None
    if x.nhwc and normalized == (x.shape[0],):
        # x.permute(0, 2, 3, 1) -> LayerNorm(C) is nas-graph's layer norm over channels.
        y = cx.add("layer_norm", [_tensor(x.node, x.shape)], node.name, sources, eps=eps,
                   affine=affine)
        return _Tensor(y.node, x.shape, x.phys, nhwc=True)
    x = _plain(x)
    if len(x.shape) == 3 or normalized != x.shape[-1:]:
        raise _Unsupported(f"normalized_shape {list(normalized)} over a per-sample shape "
                           f"{list(x.shape)} (nas-graph/1 normalises the last axis of tokens and "
                           "vectors, or the channels of a channels-last map)")
    return cx.add("layer_norm", [x], node.name, sources, eps=eps, affine=affine)


@_module_rule(nn.GroupNorm)
def _group_norm_layer(cx: _Converter, node: fx.Node, m: nn.GroupNorm, args: tuple,
                      kwargs: dict) -> Any:
    x = _plain(args[0] if args else kwargs.get("input"))
    return cx.add("group_norm", [x], node.name, _module_state(node.target, m),
                  num_groups=m.num_groups, eps=m.eps, affine=m.affine)


_ACTIVATION_LAYERS: dict[type, tuple[str, Callable[[Any], dict[str, Any]]]] = {
    nn.ReLU: ("relu", lambda m: {}),
    nn.ReLU6: ("relu6", lambda m: {}),
    nn.LeakyReLU: ("leaky_relu", lambda m: {"negative_slope": m.negative_slope}),
    nn.ELU: ("elu", lambda m: {"alpha": m.alpha}),
    nn.GELU: ("gelu", lambda m: {"approximate": m.approximate}),
    nn.SiLU: ("silu", lambda m: {}),
    nn.Mish: ("mish", lambda m: {}),
    nn.Tanh: ("tanh", lambda m: {}),
    nn.Sigmoid: ("sigmoid", lambda m: {}),
    nn.Hardswish: ("hardswish", lambda m: {}),
    nn.Hardsigmoid: ("hardsigmoid", lambda m: {}),
}


@_module_rule(*_ACTIVATION_LAYERS)
def _activation_layer(cx: _Converter, node: fx.Node, m: nn.Module, args: tuple,
                      kwargs: dict) -> Any:
    op, attrs = _ACTIVATION_LAYERS[type(m)]
    x = _x(args[0] if args else kwargs.get("input"))
    y = _elementwise(cx, op, x, node.name, **attrs(m))
    return _inplace_result(cx, node, getattr(m, "inplace", False), y)


def _elementwise(cx: _Converter, op: str, x: _Tensor, hint: str, **attrs: Any) -> _Tensor:
    """A shape-preserving op: it applies to whatever view the value is seen through."""
    y = cx.add(op, [_tensor(x.node, x.shape)], hint, **attrs)  # type: ignore[arg-type]
    return _Tensor(y.node, x.shape, x.phys, x.nhwc)


@_module_rule(nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
def _dropout_layer(cx: _Converter, node: fx.Node, m: nn.modules.dropout._DropoutNd,
                   args: tuple, kwargs: dict) -> Any:
    x = _x(args[0] if args else kwargs.get("input"))
    return _inplace_result(cx, node, m.inplace, _elementwise(cx, "dropout", x, node.name, p=m.p))


@_module_rule(nn.Identity)
def _identity_layer(cx: _Converter, node: fx.Node, m: nn.Module, args: tuple,
                    kwargs: dict) -> Any:
    # No node: an identity only renames a value, and the edges already show the skip.
    return args[0] if args else kwargs.get("input")


@_module_rule(nn.MaxPool2d)
def _max_pool_layer(cx: _Converter, node: fx.Node, m: nn.MaxPool2d, args: tuple,
                    kwargs: dict) -> Any:
    x = _plain(args[0] if args else kwargs.get("input"))
    return _max_pool(cx, node, x, m.kernel_size, m.stride, m.padding, m.dilation,
                     m.ceil_mode, m.return_indices)


def _max_pool(cx: _Converter, node: fx.Node, x: _Tensor, kernel: Any, stride: Any,
              padding: Any, dilation: Any, ceil_mode: bool, return_indices: bool) -> Any:
    if _pair(dilation) != (1, 1):
        raise _Unsupported(f"dilation={dilation!r}")
    if return_indices:
        raise _Unsupported("return_indices=True")
    return cx.add("max_pool", [x], node.name, kernel_size=_pair(kernel),
                  stride=_pair(stride) if stride else None, padding=_pair(padding),
                  ceil_mode=bool(ceil_mode))


@_module_rule(nn.AvgPool2d)
def _avg_pool_layer(cx: _Converter, node: fx.Node, m: nn.AvgPool2d, args: tuple,
                    kwargs: dict) -> Any:
    x = _plain(args[0] if args else kwargs.get("input"))
    return _avg_pool(cx, node, x, m.kernel_size, m.stride, m.padding, m.ceil_mode,
                     m.count_include_pad, m.divisor_override)


def _avg_pool(cx: _Converter, node: fx.Node, x: _Tensor, kernel: Any, stride: Any, padding: Any,
              ceil_mode: bool, count_include_pad: bool, divisor_override: Any) -> Any:
    if divisor_override is not None:
        raise _Unsupported(f"divisor_override={divisor_override!r}")
    return cx.add("avg_pool", [x], node.name, kernel_size=_pair(kernel),
                  stride=_pair(stride) if stride else None, padding=_pair(padding),
                  ceil_mode=bool(ceil_mode), count_include_pad=bool(count_include_pad))


@_module_rule(nn.AdaptiveAvgPool2d)
def _adaptive_avg_layer(cx: _Converter, node: fx.Node, m: nn.AdaptiveAvgPool2d, args: tuple,
                        kwargs: dict) -> Any:
    return _adaptive_pool(cx, node, _plain(args[0] if args else kwargs.get("input")),
                          m.output_size, "avg")


@_module_rule(nn.AdaptiveMaxPool2d)
def _adaptive_max_layer(cx: _Converter, node: fx.Node, m: nn.AdaptiveMaxPool2d, args: tuple,
                        kwargs: dict) -> Any:
    if m.return_indices:
        raise _Unsupported("return_indices=True")
    return _adaptive_pool(cx, node, _plain(args[0] if args else kwargs.get("input")),
                          m.output_size, "max")


def _adaptive_pool(cx: _Converter, node: fx.Node, x: _Tensor, output_size: Any,
                   mode: str) -> Any:
    assert x.shape is not None
    if len(x.shape) != 3:
        raise _Unsupported(f"needs a (C, H, W) map, got per-sample shape {list(x.shape)}")
    size = tuple(x.shape[1 + i] if s is None else s for i, s in enumerate(_pair(output_size)))
    if size == (1, 1):
        return cx.add(f"global_{mode}_pool", [x], node.name, keepdim=True)
    if mode == "max":
        raise _Unsupported(f"output_size={output_size!r} (only 1 is supported for max)")
    return cx.add("adaptive_avg_pool", [x], node.name, output_size=size)


@_module_rule(nn.Flatten)
def _flatten_layer(cx: _Converter, node: fx.Node, m: nn.Flatten, args: tuple,
                   kwargs: dict) -> Any:
    return _flatten(cx, node, _x(args[0] if args else kwargs.get("input")), m.start_dim,
                    m.end_dim)


@_module_rule(nn.MultiheadAttention)
def _attention_layer(cx: _Converter, node: fx.Node, m: nn.MultiheadAttention, args: tuple,
                     kwargs: dict) -> Any:
    def signature(query: Any, key: Any, value: Any, key_padding_mask: Any = None,
                  need_weights: bool = True, attn_mask: Any = None,
                  average_attn_weights: bool = True, is_causal: bool = False) -> dict[str, Any]:
        return locals()

    a = _bind(signature, args, kwargs)
    q = _plain(a["query"], "query")
    if not (a["key"] == q and a["value"] == q):
        raise _Unsupported("cross-attention (query, key and value must be the same tensor: "
                           "attn(x, x, x))")
    if a["key_padding_mask"] is not None or a["attn_mask"] is not None or a["is_causal"]:
        raise _Unsupported("attention masks (key_padding_mask, attn_mask, is_causal)")
    if not m.batch_first:
        raise _Unsupported("batch_first=False (nas-graph/1 attends over (B, T, D) tokens)")
    if m.bias_k is not None or m.add_zero_attn or not m._qkv_same_embed_dim:
        raise _Unsupported("add_bias_kv, add_zero_attn or kdim/vdim different from embed_dim")
    assert q.shape is not None
    if len(q.shape) != 2:
        raise _Unsupported(f"needs (T, D) tokens, got per-sample shape {list(q.shape)}")
    y = cx.add("self_attention", [q], node.name, _module_state(node.target, m),
               num_heads=m.num_heads, bias=m.in_proj_bias is not None, dropout=m.dropout)
    return _AttentionResult(y)


# ------------------------------------------------------------------------------------------------
# Rules: functions and tensor methods
# ------------------------------------------------------------------------------------------------


def _sig_unary(input: Any, inplace: bool = False) -> dict[str, Any]:
    return {"input": input, "inplace": inplace, "attrs": {}}


def _sig_leaky_relu(input: Any, negative_slope: float = 0.01, inplace: bool = False
                    ) -> dict[str, Any]:
    return {"input": input, "inplace": inplace, "attrs": {"negative_slope": negative_slope}}


def _sig_elu(input: Any, alpha: float = 1.0, inplace: bool = False) -> dict[str, Any]:
    return {"input": input, "inplace": inplace, "attrs": {"alpha": alpha}}


def _sig_gelu(input: Any, approximate: str = "none") -> dict[str, Any]:
    return {"input": input, "inplace": False, "attrs": {"approximate": approximate}}


def _sig_tensor_unary(input: Any, *, out: Any = None) -> dict[str, Any]:
    if out is not None:
        raise _Unsupported("out= arguments")
    return {"input": input, "inplace": False, "attrs": {}}


_ACTIVATION_FUNCTIONS: dict[Any, tuple[str, Callable[..., dict[str, Any]], bool]] = {
    F.relu: ("relu", _sig_unary, False),
    torch.relu: ("relu", _sig_tensor_unary, False),
    F.relu_: ("relu", _sig_tensor_unary, True),
    torch.relu_: ("relu", _sig_tensor_unary, True),
    F.relu6: ("relu6", _sig_unary, False),
    F.leaky_relu: ("leaky_relu", _sig_leaky_relu, False),
    F.elu: ("elu", _sig_elu, False),
    F.gelu: ("gelu", _sig_gelu, False),
    F.silu: ("silu", _sig_unary, False),
    F.mish: ("mish", _sig_unary, False),
    F.hardswish: ("hardswish", _sig_unary, False),
    F.hardsigmoid: ("hardsigmoid", _sig_unary, False),
    torch.tanh: ("tanh", _sig_tensor_unary, False),
    torch.sigmoid: ("sigmoid", _sig_tensor_unary, False),
}
_ACTIVATION_METHODS = {"relu": "relu", "relu_": "relu", "tanh": "tanh", "tanh_": "tanh",
                       "sigmoid": "sigmoid", "sigmoid_": "sigmoid"}


@_call_rule(functions=list(_ACTIVATION_FUNCTIONS), methods=list(_ACTIVATION_METHODS))
def _activation_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    if node.op == "call_method":
        op, signature = _ACTIVATION_METHODS[node.target], _sig_tensor_unary
        forced_inplace = node.target.endswith("_")
    else:
        op, signature, forced_inplace = _ACTIVATION_FUNCTIONS[node.target]
    a = _bind(signature, args, kwargs)
    y = _elementwise(cx, op, _x(a["input"]), node.name, **a["attrs"])
    return _inplace_result(cx, node, forced_inplace or a["inplace"], y)


def _sig_dropout(input: Any, p: float = 0.5, training: bool = True, inplace: bool = False
                 ) -> dict[str, Any]:
    return locals()


@_call_rule(functions=[F.dropout, F.dropout1d, F.dropout2d, F.dropout3d])
def _dropout_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    a = _bind(_sig_dropout, args, kwargs)
    # The graph records the architecture: dropout is a node whatever `training` was at trace time.
    y = _elementwise(cx, "dropout", _x(a["input"]), node.name, p=a["p"])
    return _inplace_result(cx, node, a["inplace"], y)


def _sig_binary(input: Any, other: Any, *, alpha: Any = 1, out: Any = None) -> dict[str, Any]:
    if alpha != 1 or out is not None:
        raise _Unsupported("alpha= or out= arguments")
    return {"input": input, "other": other}


_BINARY_FUNCTIONS = {operator.add: "add", operator.iadd: "add", torch.add: "add",
                     operator.mul: "mul", operator.imul: "mul", torch.mul: "mul"}
_BINARY_METHODS = {"add": "add", "add_": "add", "mul": "mul", "mul_": "mul"}


@_call_rule(functions=list(_BINARY_FUNCTIONS), methods=list(_BINARY_METHODS))
def _binary_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    if node.op == "call_method":
        op, inplace = _BINARY_METHODS[node.target], node.target.endswith("_")
    else:
        op, inplace = _BINARY_FUNCTIONS[node.target], node.target in (operator.iadd,
                                                                      operator.imul)
    a = _bind(_sig_binary, args, kwargs)
    x, y = a["input"], a["other"]
    if isinstance(x, int | float) and isinstance(y, int | float):
        return x + y if op == "add" else x * y  # sizes
    if op == "add" and isinstance(x, _Param) and isinstance(y, _Tensor):
        x, y = y, x
    if op == "add" and isinstance(x, _Tensor) and isinstance(y, _Param):
        result = _pos_embed(cx, x, y)
    elif isinstance(x, _Tensor) and isinstance(y, _Tensor):
        if x.plain and y.plain:
            result = cx.add(op, [x, y], node.name)
        elif (x.phys, x.nhwc, x.shape) == (y.phys, y.nhwc, y.shape):
            z = cx.add(op, [_tensor(x.node, x.shape), _tensor(y.node, y.shape)],  # type: ignore
                       node.name)
            result = _Tensor(z.node, x.shape, x.phys, x.nhwc)
        else:
            raise _Unsupported(_not_plain(x if not x.plain else y))
    else:
        what = "a constant" if isinstance(x, _Tensor) or isinstance(y, _Tensor) else "values"
        raise _Unsupported(f"{op} of {what} ({_describe(x)}, {_describe(y)}); nas-graph/1 "
                           f"{'adds' if op == 'add' else 'multiplies'} computed tensors only")
    return _inplace_result(cx, node, inplace, result)


def _describe(v: Any) -> str:
    if isinstance(v, _Tensor):
        return f"tensor {list(v.phys or ())}"
    if isinstance(v, _Param):
        what = "tensor constant" if v.target.startswith("_tensor_constant") else \
            f"module tensor {v.target!r}"
        return f"{what} {list(v.tensor.shape)}"
    return repr(v)


def _pos_embed(cx: _Converter, x: _Tensor, p: _Param) -> _Tensor:
    """``tokens + self.pos_embed`` with a ``(1, T, D)`` parameter is a positional embedding."""
    x = _plain(x)
    assert x.shape is not None
    if not isinstance(p.tensor, nn.Parameter) or p.batched:
        raise _Unsupported(f"adds the module tensor {p.target!r}, which is not a learned "
                           "nn.Parameter positional embedding")
    if len(x.shape) != 2 or tuple(p.tensor.shape) != (1, *x.shape):
        raise _Unsupported(f"adds {p.target!r} of shape {list(p.tensor.shape)} to per-sample "
                           f"shape {list(x.shape)} (a positional embedding is (1, T, D) added to "
                           "(T, D) tokens)")
    return cx.add("pos_embed", [x], _hint(p.target), {"weight": (p.target, p.tensor)})


def _hint(target: str) -> str:
    return target.replace(".", "_")


def _sig_cat(tensors: Any, dim: int = 0, *, axis: Any = None, out: Any = None) -> dict[str, Any]:
    if out is not None:
        raise _Unsupported("out= arguments")
    return {"tensors": tensors, "dim": dim if axis is None else axis}


@_call_rule(functions=[torch.cat, torch.concat, torch.concatenate])
def _cat_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    a = _bind(_sig_cat, args, kwargs)
    items = list(a["tensors"])
    if len(items) == 2 and isinstance(items[0], _Param) and isinstance(items[1], _Tensor):
        return _class_token(cx, items[0], items[1], a["dim"])
    xs = [_plain(t) for t in items]
    if len(xs) == 1:
        return xs[0]
    rank = len(xs[0].shape) + 1  # type: ignore[arg-type]
    dim = _norm_dim(a["dim"], rank)
    if dim == 0:
        raise _Unsupported("concatenation along the batch dimension")
    return cx.add("concat", xs, node.name, axis=dim - 1)


def _class_token(cx: _Converter, p: _Param, x: _Tensor, dim: Any) -> _Tensor:
    """``torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)`` prepends a class token."""
    x = _plain(x)
    assert x.shape is not None
    if not p.batched or not isinstance(p.tensor, nn.Parameter):
        raise _Unsupported(f"concatenates the module tensor {p.target!r} (a class token is an "
                           "nn.Parameter expanded over the batch: p.expand(B, -1, -1))")
    if len(x.shape) != 2 or tuple(p.tensor.shape) != (1, 1, x.shape[1]) or \
            _norm_dim(dim, 3) != 1:
        raise _Unsupported(f"concatenates {p.target!r} of shape {list(p.tensor.shape)} with "
                           f"per-sample shape {list(x.shape)} along dim {dim} (a class token is "
                           "(1, 1, D) prepended to (T, D) tokens along dim 1)")
    return cx.add("class_token", [x], _hint(p.target), {"weight": (p.target, p.tensor)})


@_call_rule(methods=["expand"])
def _expand_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    p, sizes = args[0], _dims(args[1:] or (kwargs.get("size"),))
    if not isinstance(p, _Param) or p.batched:
        raise _Unsupported("expand of anything but a class-token parameter")
    shape = tuple(p.tensor.shape)
    ok = (len(sizes) == len(shape) and sizes[0] is _BATCH and shape[0] == 1
          and all(s in (-1, d) for s, d in zip(sizes[1:], shape[1:], strict=True)))
    if not ok:
        raise _Unsupported(f"expand of {p.target!r} {list(shape)} to {sizes} (only "
                           "p.expand(B, -1, -1) over the batch is supported)")
    return _Param(p.target, p.tensor, batched=True)


# ---- shapes -----------------------------------------------------------------------------------


def _full_shape(v: Any) -> tuple[Any, ...]:
    if isinstance(v, _Tensor | _Param):
        return v.full_shape()
    raise _Unsupported(f"size of {v!r}")


@_call_rule(methods=["size"])
def _size_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    shape = _full_shape(args[0])
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    return shape if dim is None else shape[_norm_dim(dim, len(shape))]


@_call_rule(methods=["dim"])
def _dim_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    return len(_full_shape(args[0]))


@_call_rule(functions=[getattr])
def _getattr_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    v, name = args[0], args[1]
    if name == "shape":
        return _full_shape(v)
    if name == "ndim":
        return len(_full_shape(v))
    raise _Unsupported(f"attribute {name!r} of a tensor")


@_call_rule(functions=[operator.getitem])
def _getitem_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    v, index = args
    if isinstance(v, tuple | list | torch.Size):
        return v[index]
    if isinstance(v, _AttentionResult):
        if index == 0:
            return v.output
        raise _Unsupported("attention weights (only attn(x, x, x)[0] is supported)")
    x = _plain(v)
    assert x.shape is not None
    if not isinstance(index, tuple):
        index = (index,)
    # x[:, i] (or x[:, i, :]) on (B, T, D) tokens picks one token.
    full = slice(None, None, None)
    if (len(x.shape) == 2 and len(index) in (2, 3) and index[0] == full
            and isinstance(index[1], int) and not isinstance(index[1], bool)
            and all(i == full for i in index[2:])):
        return cx.add("select_token", [x], node.name, index=index[1])
    raise _Unsupported(f"indexing with {index!r} (only x[:, i] on (B, T, D) tokens is "
                       "supported)")


def _sig_flatten(input: Any, start_dim: int = 0, end_dim: int = -1) -> dict[str, Any]:
    return locals()


@_call_rule(functions=[torch.flatten], methods=["flatten"])
def _flatten_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    a = _bind(_sig_flatten, args, kwargs)
    return _flatten(cx, node, _x(a["input"]), a["start_dim"], a["end_dim"])


def _flatten(cx: _Converter, node: fx.Node, x: _Tensor, start: Any, end: Any) -> Any:
    full = x.full_shape()
    s, e = _norm_dim(start, len(full)), _norm_dim(end, len(full))
    if s == 0:
        raise _Unsupported("flattening the batch dimension")
    if s >= e:
        return x
    phys = (*full[1:s], math.prod(full[s:e + 1]), *full[e + 1:])
    return _reshape(cx, node, x, phys)


def _reshape(cx: _Converter, node: fx.Node, x: _Tensor, phys: tuple[int, ...]) -> Any:
    """``x`` seen as the row-major reshape ``phys`` (per sample): a graph node when that is one
    (flatten, or to_tokens of a channels-last map), else a pending view for later calls."""
    assert x.shape is not None and x.phys is not None
    if phys == x.phys:
        return x
    if x.nhwc:
        h, w, c = x.phys
        if phys == (h * w, c):  # x.permute(0, 2, 3, 1).reshape(B, -1, C)
            return cx.add("to_tokens", [_tensor(x.node, x.shape)], node.name)
        raise _Unsupported(_not_plain(x))
    if phys == x.shape:
        return _tensor(x.node, x.shape)
    if len(phys) == 1:
        return cx.add("flatten", [_tensor(x.node, x.shape)], node.name)
    return _Tensor(x.node, x.shape, phys)


def _reshape_dims(x: _Tensor, dims: list[Any]) -> tuple[int, ...]:
    """Per-sample target of ``x.view(*dims)``; the batch must stay first (``B`` or ``-1``)."""
    assert x.phys is not None
    if not dims or not (dims[0] is _BATCH or (dims[0] == -1 and -1 not in dims[1:])):
        raise _Unsupported(f"reshape to {dims} (the batch must stay the first dimension: "
                           "x.view(x.size(0), ...) or x.view(-1, ...))")
    rest = dims[1:]
    if any(d is _BATCH for d in rest) or any(not isinstance(d, int) for d in rest):
        raise _Unsupported(f"reshape to {dims}")
    n = math.prod(x.phys)
    if rest.count(-1) > 1:
        raise _Unsupported(f"reshape to {dims}")
    if -1 in rest:
        known = math.prod(d for d in rest if d != -1)
        if known <= 0 or n % known:
            raise _Unsupported(f"reshape of {list(x.phys)} to {dims}")
        rest = [n // known if d == -1 else d for d in rest]
    if math.prod(rest) != n:
        raise _Unsupported(f"reshape of {list(x.phys)} to {dims}")
    return tuple(rest)


@_call_rule(methods=["view", "reshape"])
def _view_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    x = _x(args[0])
    dims = _dims(args[1:]) if len(args) > 1 else _dims((kwargs.get("shape", kwargs.get("size")),))
    return _reshape(cx, node, x, _reshape_dims(x, dims))


@_call_rule(functions=[torch.reshape])
def _reshape_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    a = dict(zip(("input", "shape"), args, strict=False)) | kwargs
    x = _x(a["input"])
    return _reshape(cx, node, x, _reshape_dims(x, list(a["shape"])))


@_call_rule(functions=[torch.squeeze], methods=["squeeze"])
def _squeeze_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    x = _x(args[0])
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    full = x.full_shape()
    if dim is None:
        dims = {i for i, d in enumerate(full) if d == 1}
    else:
        dims = {_norm_dim(d, len(full)) for d in (dim if isinstance(dim, tuple | list) else [dim])}
        dims = {d for d in dims if full[d] == 1}
    if 0 in dims:
        raise _Unsupported("squeezing the batch dimension")
    return _reshape(cx, node, x, tuple(d for i, d in enumerate(full) if i and i not in dims))


@_call_rule(functions=[torch.unsqueeze], methods=["unsqueeze"])
def _unsqueeze_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    x = _x(args[0])
    full = list(x.full_shape())
    dim = _int(args[1] if len(args) > 1 else kwargs.get("dim"), "dim")
    dim = dim + len(full) + 1 if dim < 0 else dim
    if dim == 0:
        raise _Unsupported("a new dimension before the batch")
    full.insert(dim, 1)
    return _reshape(cx, node, x, tuple(full[1:]))


@_call_rule(methods=["contiguous", "clone", "detach"])
def _alias_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    return _x(args[0])


def _permute(cx: _Converter, node: fx.Node, x: _Tensor, perm: tuple[int, ...]) -> Any:
    assert x.shape is not None and x.phys is not None
    rank = len(x.phys) + 1
    if sorted(perm) != list(range(rank)) or perm[0] != 0:
        raise _Unsupported(f"permutation {list(perm)} (the batch must stay first)")
    if perm == tuple(range(rank)):
        return x
    if x.plain and len(x.shape) == 3 and perm == (0, 2, 3, 1):
        return _Tensor(x.node, x.shape, (x.shape[1], x.shape[2], x.shape[0]), nhwc=True)
    if x.nhwc and perm == (0, 3, 1, 2):
        return _tensor(x.node, x.shape)
    c, h, w = x.shape if len(x.shape) == 3 else (0, 0, 0)
    if not x.nhwc and x.phys == (c, h * w) and perm == (0, 2, 1):
        # x.flatten(2).transpose(1, 2): every position becomes a token.
        return cx.add("to_tokens", [_tensor(x.node, x.shape)], node.name)
    raise _Unsupported(f"permutation {list(perm)} of a {list(x.phys)} tensor (nas-graph/1 "
                       "permutes only x.flatten(2).transpose(1, 2) into tokens and channels-last "
                       "around LayerNorm)")


@_call_rule(functions=[torch.transpose, torch.swapaxes], methods=["transpose", "swapaxes"])
def _transpose_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    a = dict(zip(("input", "dim0", "dim1"), args, strict=False)) | kwargs
    x = _x(a["input"])
    rank = len(x.full_shape())
    d0, d1 = _norm_dim(a.get("dim0", a.get("axis0")), rank), \
        _norm_dim(a.get("dim1", a.get("axis1")), rank)
    perm = list(range(rank))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return _permute(cx, node, x, tuple(perm))


@_call_rule(functions=[torch.permute], methods=["permute"])
def _permute_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    x = _x(args[0])
    dims = _dims(args[1:]) if len(args) > 1 else list(kwargs["dims"])
    rank = len(x.full_shape())
    return _permute(cx, node, x, tuple(_norm_dim(d, rank) for d in dims))


def _sig_reduce(input: Any, dim: Any = None, keepdim: bool = False, *, dtype: Any = None,
                out: Any = None) -> dict[str, Any]:
    return locals()


@_call_rule(functions=[torch.mean, torch.amax], methods=["mean", "amax"])
def _mean_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    a = _bind(_sig_reduce, args, kwargs)
    mode = "max" if node.target in ("amax", torch.amax) else "avg"
    x = _plain(a["input"])
    assert x.shape is not None
    if a["dim"] is None:
        raise _Unsupported("a reduction over every dimension, the batch included")
    dims = a["dim"] if isinstance(a["dim"], tuple | list) else [a["dim"]]
    rank = len(x.shape) + 1
    dims = {_norm_dim(d, rank) for d in dims}
    keepdim = bool(a["keepdim"])
    if len(x.shape) == 3 and dims == {2, 3}:
        return cx.add(f"global_{mode}_pool", [x], node.name, keepdim=keepdim)
    if len(x.shape) == 2 and dims == {1} and mode == "avg" and not keepdim:
        return cx.add("global_avg_pool", [x], node.name)
    raise _Unsupported(f"reduction over dims {sorted(dims)} of per-sample shape {list(x.shape)} "
                       "(supported: the spatial dims (2, 3) of a map, the tokens (1) of a "
                       "sequence)")


def _sig_adaptive(input: Any, output_size: Any, return_indices: bool = False) -> dict[str, Any]:
    return locals()


@_call_rule(functions=[F.adaptive_avg_pool2d, F.adaptive_max_pool2d])
def _adaptive_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    a = _bind(_sig_adaptive, args, kwargs)
    if a["return_indices"]:
        raise _Unsupported("return_indices=True")
    mode = "avg" if node.target is F.adaptive_avg_pool2d else "max"
    return _adaptive_pool(cx, node, _plain(a["input"]), a["output_size"], mode)


def _sig_max_pool(input: Any, kernel_size: Any, stride: Any = None, padding: Any = 0,
                  dilation: Any = 1, ceil_mode: bool = False, return_indices: bool = False
                  ) -> dict[str, Any]:
    return locals()


def _sig_avg_pool(input: Any, kernel_size: Any, stride: Any = None, padding: Any = 0,
                  ceil_mode: bool = False, count_include_pad: bool = True,
                  divisor_override: Any = None) -> dict[str, Any]:
    return locals()


@_call_rule(functions=[F.max_pool2d])
def _max_pool_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    a = _bind(_sig_max_pool, args, kwargs)
    return _max_pool(cx, node, _plain(a["input"]), a["kernel_size"], a["stride"], a["padding"],
                     a["dilation"], a["ceil_mode"], a["return_indices"])


@_call_rule(functions=[F.avg_pool2d])
def _avg_pool_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    a = _bind(_sig_avg_pool, args, kwargs)
    return _avg_pool(cx, node, _plain(a["input"]), a["kernel_size"], a["stride"], a["padding"],
                     a["ceil_mode"], a["count_include_pad"], a["divisor_override"])


# ---- functional layers with module parameters (traced-through subclasses of torch.nn layers) --


def _param_source(v: Any, name: str) -> tuple[str, torch.Tensor]:
    if not isinstance(v, _Param) or v.batched:
        raise _Unsupported(f"its {name} is not a parameter of the module")
    return v.target, v.tensor


def _sig_linear(input: Any, weight: Any, bias: Any = None) -> dict[str, Any]:
    return locals()


@_call_rule(functions=[F.linear])
def _linear_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    a = _bind(_sig_linear, args, kwargs)
    w = _param_source(a["weight"], "weight")
    sources = {"weight": w}
    if a["bias"] is not None:
        sources["bias"] = _param_source(a["bias"], "bias")
    return cx.add("linear", [_plain(a["input"])], node.name, sources,
                  out_features=w[1].shape[0], bias=a["bias"] is not None)


def _sig_conv2d(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
                dilation: Any = 1, groups: int = 1) -> dict[str, Any]:
    return locals()


@_call_rule(functions=[F.conv2d])
def _conv2d_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    a = _bind(_sig_conv2d, args, kwargs)
    w = _param_source(a["weight"], "weight")
    sources = {"weight": w}
    if a["bias"] is not None:
        sources["bias"] = _param_source(a["bias"], "bias")
    kernel = tuple(w[1].shape[2:])
    return cx.add("conv2d", [_plain(a["input"])], node.name, sources,
                  out_channels=w[1].shape[0], kernel_size=kernel, stride=_pair(a["stride"]),
                  padding=_conv_padding(a["padding"], kernel, _pair(a["dilation"])),
                  dilation=_pair(a["dilation"]), groups=a["groups"], bias=a["bias"] is not None)


def _sig_layer_norm(input: Any, normalized_shape: Any, weight: Any = None, bias: Any = None,
                    eps: float = 1e-5) -> dict[str, Any]:
    return locals()


@_call_rule(functions=[F.layer_norm])
def _layer_norm_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    a = _bind(_sig_layer_norm, args, kwargs)
    sources = {}
    if a["weight"] is not None:
        sources["weight"] = _param_source(a["weight"], "weight")
    if a["bias"] is not None:
        sources["bias"] = _param_source(a["bias"], "bias")
    shape = a["normalized_shape"]
    shape = tuple(shape) if isinstance(shape, tuple | list | torch.Size) else (shape,)
    return _layer_norm(cx, node, _x(a["input"]), shape, a["eps"], bool(sources), sources)


# ------------------------------------------------------------------------------------------------
# Assembly
# ------------------------------------------------------------------------------------------------


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
