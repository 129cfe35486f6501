"""The ``torch.fx`` trace of a module's ``forward``: the first step of ``from_module``.

Guarantees: the traced module is never written to (tensor constants are kept on the tracer, not
set as attributes of the module); one trace runs at a time in the process, because fx patches
``torch.nn.Module.__call__`` process-wide while it traces; a ``forward`` fx cannot trace, or one
with more than one required input, raises :class:`UnsupportedModuleError`.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn

from .errors import UnsupportedModuleError


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
