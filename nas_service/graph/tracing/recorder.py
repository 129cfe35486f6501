"""Trace by running: one real forward pass, recorded call by call and converted as it goes.

This is the path for modules ``torch.fx`` cannot trace (Python control flow on shapes or values)
or whose traced calls do not all convert: a ``torch.overrides.TorchFunctionMode`` sees every
torch function and tensor method with its real arguments (``F.conv2d(x, weight, ...)``,
``F.batch_norm``, ``x.view(2, -1)``, ``torch.cat``, ``x[:, :c]``), so control flow is already
decided, and ``torch.nn.Module.__call__`` is wrapped for the duration to know which layer each
call comes from. Each recorded call goes through the converter's one rule registry, with the
concrete tensors replaced by the values of :mod:`.values`: a tensor computed by the graph maps
to its node by identity, a parameter or buffer of the module to its name (which gives
``parameter_sources``), anything else to a constant. A ``torch.nn`` layer that has a rule is
converted as one call (its inner calls are not recorded); other layers are recorded through.

What the recording decides from the real tensors rather than from the arguments:

* the batch: the input has ``_BATCH_SIZE`` samples, and a tensor is a graph value when its first
  dimension is that batch and one sample has one to three dimensions; a reshape that keeps the
  batch first (``x.view(2, -1)``, ``x.flatten(1)``) is read from the shapes in and out;
* what a rule returned: its value must have the recorded tensor's shape, or the call is treated
  as one no rule converts (a rule never silently changes what the network computes);
* tensors computed from parameters only (:class:`_Derived`): a weight standardised in
  ``forward`` is checked against the standardisation formula with the real numbers.

A call no rule converts becomes an ``opaque`` node (inputs, output shape and the parameters it
reads), or, where its output is not batch-first (attention heads folded into the batch, a
window partition), a :class:`_Pending` value that the next call returning a batch-first tensor
turns into one ``opaque`` node. Nothing is refused that produces logits.

Guarantees: the module runs once on a batch of ``_BATCH_SIZE`` normal random inputs, on the
device and in the floating-point type of its first parameter, in eval mode and under
``torch.no_grad()``; its training flags are restored afterwards and it is never written to
otherwise. ``Module.__call__`` is patched process-wide for the pass, under the lock of the fx
tracer (other threads' modules run unrecorded, through the original ``__call__``).
"""

from __future__ import annotations

import contextlib
import operator
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..ops import Shape
from .converter import (
    _FUNCTION_RULES,
    _METHOD_RULES,
    _MODULE_RULES,
    _Converter,
    _function_name,
)
from .errors import UnsupportedModuleError, _Unsupported
from .fx_tracer import _TRACE_LOCK
from .shape_rules import _reshape
from .values import _AttentionResult, _Derived, _Param, _Pending, _Tensor, _tensor

_BATCH_SIZE = 2
_local = threading.local()

# Tensor methods that only change the view or the type: read from the shapes in and out.
_RESHAPES = frozenset({"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze",
                       "view_as", "reshape_as", "contiguous", "clone", "detach", "float",
                       "to", "type", "type_as", "double", "half", "bfloat16", "requires_grad_"})
_RESHAPE_FUNCTIONS = {torch.flatten: "flatten", torch.reshape: "reshape",
                      torch.squeeze: "squeeze", torch.unsqueeze: "unsqueeze",
                      torch.clone: "clone"}
_DUNDER_FUNCTIONS = {"__getitem__": operator.getitem, "__matmul__": operator.matmul,
                     "__truediv__": operator.truediv, "__sub__": operator.sub}


@dataclass
class _Call:
    """One recorded call, in the form rules read (fx's ``Node`` fields they use)."""

    op: str
    target: Any
    name: str
    meta: dict[str, Any] = field(default_factory=dict)
    # Empty: an in-place call needs no rebinding here, its output is its input tensor.
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


class _Recording(TorchFunctionMode):
    """The mode that sees every torch call of the pass; see the module docstring."""

    def __init__(self, cx: _Converter, module: nn.Module):
        super().__init__()
        self.cx = cx
        self.values: dict[int, Any] = {}
        self.alive: list[torch.Tensor] = []  # ids stay unique while the pass runs
        self.names = {id(t): n for n, t in module.named_parameters()}
        self.names.update((id(t), n) for n, t in module.named_buffers())
        self.parameters = dict(module.named_parameters())
        self.paths = {id(m): n for n, m in module.named_modules()}
        self.scope: list[tuple[str, type]] = []
        self.quiet = 0
        self.constants = 0
        self.failed_in: str | None = None
        self.kinds: dict[Any, tuple[str, Any]] = {}

    # ---- what the pass calls -------------------------------------------------------------------

    def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.quiet:
            self.quiet += 1
            try:
                self.record(func, args, kwargs, out)
            except Exception as e:  # never break the user's forward: keep the outputs opaque
                self.lost(args, kwargs, out, f"{getattr(func, '__name__', func)}: {e!r}")
            finally:
                self.quiet -= 1
        return out

    def call_module(self, module: nn.Module, call: Callable[..., Any], args: tuple,
                    kwargs: dict) -> Any:
        if self.quiet:
            return call(module, *args, **kwargs)
        path = self.paths.get(id(module))
        rule = _MODULE_RULES.get(type(module)) if path else None
        self.scope.append((path or "", type(module)))
        failed = True
        try:
            if rule is None:
                out = call(module, *args, **kwargs)
                failed = False
                return out
            self.quiet += 1
            try:
                out = call(module, *args, **kwargs)
            finally:
                self.quiet -= 1
            self.quiet += 1
            try:
                ins = [self.value(t) for t in _tensors((args, kwargs))]
                if any(isinstance(v, _Tensor | _Pending) for v in ins):
                    call_ = _Call("call_module", path, path.replace(".", "_"),
                                  {"scope": (path, type(module))})
                    self.convert(call_, module, args, kwargs, out,
                                 f"{path} ({type(module).__name__})")
                else:
                    own = [(f"{path}.{n}", p) for n, p in module.named_parameters()]
                    self.derive("call_module", module, ins, list(_tensors(out)), own)
            except Exception as e:  # as in __torch_function__
                self.lost(args, kwargs, out, f"{path}: {e!r}")
            finally:
                self.quiet -= 1
            failed = False
            return out
        finally:
            if failed and self.failed_in is None and path:
                self.failed_in = f"{path} ({type(module).__name__})"  # the innermost layer
            self.scope.pop()

    # ---- one call ------------------------------------------------------------------------------

    def record(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        if getattr(func, "__name__", "") == "__setitem__" and args:
            out = args[0]  # x[index] = y: x holds a new value
        outputs = list(_tensors(out))
        if not outputs:
            return  # sizes, flags, and the like: the pass already used them
        kind, target = self.kind(func)
        ins = [self.value(t) for t in _tensors((args, kwargs))]
        if not any(isinstance(v, _Tensor | _Pending) for v in ins):
            self.derive(kind, target, ins, outputs)
            return
        path, cls = self.scope[-1] if self.scope else ("", None)
        short = target if isinstance(target, str) else getattr(target, "__name__", "call")
        hint = f"{path.replace('.', '_')}_{short}" if path else str(short)
        where = (f"Tensor.{target}()" if kind == "call_method" else _function_name(target))
        if cls is not None:
            where += f" in {path} ({cls.__name__})" if path else f" in {cls.__name__}.forward"
        call = _Call(kind, target, hint.strip("_") or "call", {"scope": (path, cls)})
        if (kind == "call_method" and target in _RESHAPES) or target in _RESHAPE_FUNCTIONS:
            x = ins[0]
            y = out if isinstance(out, torch.Tensor) else None
            if isinstance(x, _Tensor) and y is not None and _batch_first(y):
                try:
                    self.bind(out, _reshape(self.cx, call, x, tuple(y.shape[1:])))  # type: ignore
                    return
                except _Unsupported:
                    pass
        self.convert(call, None, args, kwargs, out, where)

    def convert(self, call: _Call, module: nn.Module | None, args: tuple, kwargs: dict,
                out: Any, where: str) -> None:
        """Converts a call with its rule, or makes its outputs opaque."""
        abstract_args, abstract_kwargs = self.abstract(args), self.abstract(kwargs)
        if call.op == "call_module":
            rule = _MODULE_RULES.get(type(module))
        elif call.op == "call_function":
            rule = _FUNCTION_RULES.get(call.target)
        else:
            rule = _METHOD_RULES.get(call.target)
        reason = "not supported by nas-graph/1"
        if rule is not None:
            for attempt in range(2):
                try:
                    if module is not None:
                        result = rule(self.cx, call, module, abstract_args, abstract_kwargs)
                    else:
                        result = rule(self.cx, call, abstract_args, abstract_kwargs)
                    self.bind(out, result)
                    return
                except _Unsupported as e:
                    reason = str(e)
                except Exception as e:  # a rule meeting arguments it did not expect
                    reason = f"{type(e).__name__}: {e}"
                views = [v for v in _values((abstract_args, abstract_kwargs))
                         if isinstance(v, _Tensor) and v.known and not v.plain]
                if attempt or not views:
                    break
                # Retry once on the views made plain by reshape nodes: a linear layer after a
                # reshape no rule understands is still a linear layer.
                try:
                    plain = {v: self.materialize(v, where) for v in views}
                except _Unsupported:
                    break
                abstract_args = _replace(abstract_args, plain)
                abstract_kwargs = _replace(abstract_kwargs, plain)
        self.opaque(call, module, (abstract_args, abstract_kwargs), out, where, reason)

    def bind(self, out: Any, result: Any) -> None:
        """Maps the recorded outputs to the rule's values, checking every shape."""
        if isinstance(out, torch.Tensor):
            if isinstance(result, _AttentionResult):
                result = result.output
            if not (isinstance(result, _Tensor) and result.known and _batch_first(out)
                    and result.phys == tuple(out.shape[1:])):
                raise _Unsupported(f"the conversion gives {_describe(result)}, the call "
                                   f"returned a tensor of shape {list(out.shape)}")
            self.set(out, result)
            return
        if isinstance(out, tuple | list) and isinstance(result, _AttentionResult):
            self.bind(out[0], result.output)
            rest = _Pending((result.output.node,), (), ("attention weights",))
            for t in _tensors(out[1:]):
                self.set(t, rest)
            return
        if isinstance(out, tuple | list) and isinstance(result, tuple | list) \
                and len(out) == len(result):
            for o, r in zip(out, result, strict=True):
                if isinstance(r, _Pending):
                    for t in _tensors(o):
                        self.set(t, r)
                elif list(_tensors(o)):
                    self.bind(o, r)
            return
        raise _Unsupported(f"the conversion gives {_describe(result)} for {type(out).__name__}")

    def opaque(self, call: _Call, module: nn.Module | None, abstract: Any, out: Any,
               where: str, reason: str) -> None:
        deps: list[str] = []
        params: list[tuple[str, torch.Tensor]] = []
        labels: list[str] = []
        for v in _values(abstract):
            if isinstance(v, _Tensor):
                deps.append(v.node)
            elif isinstance(v, _Pending):
                deps.extend(v.deps)
                params.extend(v.params)
                labels.extend(v.labels)
            elif isinstance(v, _Param):
                params.extend(self.leaf(v))
            elif isinstance(v, _Derived):
                params.extend(v.leaves)
        if module is not None:
            params.extend((f"{call.target}.{n}", p) for n, p in module.named_parameters())
        labels.append(where)
        label = "; ".join(dict.fromkeys(labels))
        deps = list(dict.fromkeys(deps))
        first_input = next((v for v in _values(abstract) if isinstance(v, _Tensor)), None)
        if (self.cx.skip_unsupported and isinstance(out, torch.Tensor) and first_input
                and first_input.plain and first_input.phys == tuple(out.shape[1:])):
            self.set(out, self.cx.skipped(call.name, first_input, f"{where}: {reason}"))
            return
        first = True
        for t in _tensors(out):
            if _batch_first(t) and deps:
                value = self.cx.opaque(call.name, deps, params if first else [],
                                       tuple(t.shape[1:]), label, f"{where}: {reason}")
                first = False
            else:
                value = _Pending(tuple(deps), tuple(params) if first else (), tuple(labels))
            self.set(t, value)

    def lost(self, args: tuple, kwargs: dict, out: Any, label: str) -> None:
        """Outputs of a call whose conversion failed unexpectedly: pending on its graph
        inputs, so the next batch-first call makes them part of an opaque node."""
        deps: list[str] = []
        for t in _tensors((args, kwargs)):
            v = self.values.get(id(t))
            if isinstance(v, _Tensor):
                deps.append(v.node)
            elif isinstance(v, _Pending):
                deps.extend(v.deps)
        if deps:
            for t in _tensors(out):
                self.set(t, _Pending(tuple(dict.fromkeys(deps)), (), (label[:200],)))

    def materialize(self, v: _Tensor, where: str) -> _Tensor:
        """A pending view as the node that computes it: ``permute`` for a channels-last map,
        ``reshape`` otherwise."""
        x = _tensor(v.node, v.shape)  # type: ignore[arg-type]
        if v.nhwc:
            return self.cx.add("permute", [x], f"{v.node}_view", dims=[1, 2, 0])
        return self.cx.add("reshape", [x], f"{v.node}_view", shape=list(v.phys or ()))

    # ---- values --------------------------------------------------------------------------------

    def set(self, t: torch.Tensor, value: Any) -> None:
        self.values[id(t)] = value
        self.alive.append(t)

    def value(self, t: torch.Tensor) -> Any:
        v = self.values.get(id(t))
        if v is not None:
            return v
        name = self.names.get(id(t))
        if name is None:
            name = f"_tensor_constant{self.constants}"
            self.constants += 1
        v = _Param(name, t)
        self.set(t, v)
        return v

    def leaf(self, v: _Param) -> list[tuple[str, torch.Tensor]]:
        """The parameter a value is, or is a view of (``self.gamma[:, None, None]``); none for
        buffers and constants."""
        tensor = self.parameters.get(v.target)
        return [(v.target, tensor)] if tensor is not None else []

    def derive(self, kind: str, target: Any, ins: list[Any], outputs: list[torch.Tensor],
               own: Sequence[tuple[str, torch.Tensor]] = ()) -> None:
        """Outputs of a call on parameters and constants only (``own``: the parameters of the
        layer that made the call)."""
        leaves: list[tuple[str, torch.Tensor]] = list(own)
        for v in ins:
            if isinstance(v, _Derived):
                leaves.extend(v.leaves)
            elif isinstance(v, _Param):
                leaves.extend(self.leaf(v))
        leaves = list(dict.fromkeys(leaves))
        params = [v for v in ins if isinstance(v, _Param) and not v.batched
                  and not v.target.startswith("_tensor_constant")]
        for y in outputs:
            if len(params) == 1 and len(ins) == 1 and not own:
                p = params[0]
                if (kind == "call_method" and target == "expand" and y.dim() == p.tensor.dim()
                        and y.shape[0] == _BATCH_SIZE and p.tensor.shape[0] == 1
                        and y.shape[1:] == p.tensor.shape[1:]):
                    self.set(y, _Param(p.target, p.tensor, batched=True))  # a class token
                    continue
                if y.numel() == p.tensor.numel() and _same_storage(y, p.tensor):
                    self.set(y, _Param(p.target, y))  # a view of the parameter
                    continue
            if not leaves:
                self.set(y, _Param(f"_tensor_constant{self.constants}", y))
                self.constants += 1
            else:
                self.set(y, _Derived(y, tuple(leaves)))

    def abstract(self, a: Any) -> Any:
        if isinstance(a, torch.Tensor):
            return self.value(a)
        if isinstance(a, tuple | list):
            return type(a)(self.abstract(x) for x in a) if not isinstance(a, torch.Size) \
                else tuple(a)
        if isinstance(a, dict):
            return {k: self.abstract(x) for k, x in a.items()}
        if isinstance(a, slice):
            return slice(self.abstract(a.start), self.abstract(a.stop), self.abstract(a.step))
        return a

    def kind(self, func: Any) -> tuple[str, Any]:
        """``("call_method", name)`` for a tensor method, ``("call_function", f)`` otherwise."""
        try:
            return self.kinds[func]
        except (KeyError, TypeError):
            pass
        name = getattr(func, "__name__", "")
        qualname = getattr(func, "__qualname__", "")
        if name == "__get__":  # a tensor property (x.T, x.data)
            result = ("call_method", getattr(getattr(func, "__self__", None), "__name__", name))
        elif name in _DUNDER_FUNCTIONS:
            result = ("call_function", _DUNDER_FUNCTIONS[name])
        elif qualname.startswith(("TensorBase.", "Tensor.")) and \
                getattr(torch.Tensor, name, None) is not None:
            result = ("call_method", name)
        else:
            result = ("call_function", func)
        with contextlib.suppress(TypeError):
            self.kinds[func] = result
        return result


def _tensors(a: Any) -> Iterator[torch.Tensor]:
    if isinstance(a, torch.Tensor):
        yield a
    elif isinstance(a, tuple | list):
        for x in a:
            yield from _tensors(x)
    elif isinstance(a, dict):
        for x in a.values():
            yield from _tensors(x)


def _values(a: Any) -> Iterator[Any]:
    if isinstance(a, tuple | list):
        for x in a:
            yield from _values(x)
    elif isinstance(a, dict):
        for x in a.values():
            yield from _values(x)
    elif isinstance(a, slice):
        yield from _values((a.start, a.stop, a.step))
    else:
        yield a


def _replace(a: Any, table: dict[Any, Any]) -> Any:
    if isinstance(a, tuple | list):
        return type(a)(_replace(x, table) for x in a)
    if isinstance(a, dict):
        return {k: _replace(x, table) for k, x in a.items()}
    if isinstance(a, _Tensor):
        return table.get(a, a)
    return a


def _batch_first(t: torch.Tensor) -> bool:
    return 2 <= t.dim() <= 4 and t.shape[0] == _BATCH_SIZE


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    try:
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return False


def _describe(v: Any) -> str:
    if isinstance(v, _Tensor):
        return f"a value of shape {list(v.phys or ())}"
    return type(v).__name__


def _first_tensor(module: nn.Module) -> torch.Tensor | None:
    for t in module.parameters():
        return t
    for t in module.buffers():
        return t
    return None


def _input(module: nn.Module, shape: Shape, integer: bool) -> torch.Tensor:
    ref = _first_tensor(module)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    generator = torch.Generator(device="cpu").manual_seed(0)
    if integer:
        sizes = [m.num_embeddings for m in module.modules() if isinstance(m, nn.Embedding)]
        x = torch.randint(0, min(sizes), (_BATCH_SIZE, *shape), generator=generator)
    else:
        x = torch.randn((_BATCH_SIZE, *shape), generator=generator).to(dtype)
    return x.to(device)


def _record(module: nn.Module, input_shape: Shape, cx: _Converter) -> Any:
    """Runs ``module`` once under the recording; returns the abstract value of its output."""
    integer = False
    while True:
        x = _input(module, input_shape, integer)
        recording = _Recording(cx, module)
        try:
            return _run(module, x, recording)
        except UnsupportedModuleError:
            raise
        except Exception as e:
            embeddings = any(isinstance(m, nn.Embedding) for m in module.modules())
            if embeddings and not integer:
                integer = True  # token ids in, not images
                continue
            where = f" in {recording.failed_in}" if recording.failed_in else ""
            raise UnsupportedModuleError(
                f"running {type(module).__name__} on a batch of {_BATCH_SIZE} inputs of shape "
                f"{list(input_shape)} failed{where}: {type(e).__name__}: {e}") from e


def _run(module: nn.Module, x: torch.Tensor, recording: _Recording) -> Any:
    cx = recording.cx
    recording.set(x, _tensor("input", tuple(x.shape[1:])))
    modes = {m: m.training for m in module.modules()}
    original = nn.Module.__call__

    def call(m: nn.Module, *args: Any, **kwargs: Any) -> Any:
        active = getattr(_local, "recording", None)
        if active is None:
            return original(m, *args, **kwargs)
        return active.call_module(m, original, args, kwargs)

    with _TRACE_LOCK:
        nn.Module.__call__ = call  # type: ignore[method-assign]
        _local.recording = recording
        try:
            module.eval()
            with torch.no_grad(), recording:
                out = module(x)
        finally:
            _local.recording = None
            nn.Module.__call__ = original  # type: ignore[method-assign]
            for m, training in modes.items():
                m.training = training
    if not isinstance(out, torch.Tensor):
        raise UnsupportedModuleError(
            f"{type(module).__name__}.forward returns {type(out).__name__}; from_module needs it "
            "to return one (B, num_classes) logits tensor")
    value = recording.values.get(id(out))
    if isinstance(value, _Pending) or (isinstance(value, _Tensor) and not value.plain):
        if not _batch_first(out):
            raise UnsupportedModuleError(
                f"{type(module).__name__}.forward returns a tensor of shape {list(out.shape)} "
                f"for a batch of {_BATCH_SIZE}; from_module needs (B, num_classes) logits")
        inputs = list(value.deps) if isinstance(value, _Pending) else [value.node]
        params = list(value.params) if isinstance(value, _Pending) else []
        value = cx.opaque("output_value", inputs, params, tuple(out.shape[1:]),
                          "the output's last calls", "output: a computation nas-graph/1 "
                          "cannot express")
    if value is None or isinstance(value, _Param | _Derived):
        raise UnsupportedModuleError(
            f"the output of {type(module).__name__}.forward does not depend on its input")
    return value
