"""Rules for function and tensor-method calls that compute values.

Covered: activations (``F.relu`` ... and ``x.relu()``, ``torch.tanh`` ..., in place or not),
``F.dropout`` (1d/2d/3d), ``+``/``*``/``-`` (``operator``, ``torch.add``/``mul``/``sub``,
``x.add``, ``x.mul``, ``x.sub`` and their in-place forms) and ``torch.cat``. Three idioms on
module parameters are recognised: ``x * self.gamma`` with a learned vector along one axis is a
``scale`` node (layer scale, also on a channels-last map), ``tokens + self.pos_embed`` is a
``pos_embed`` node, and ``torch.cat([self.cls_token.expand(B, -1, -1), tokens], dim=1)`` a
``class_token`` node.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from .arguments import _bind, _dims, _norm_dim, _plain, _x
from .converter import _call_rule, _Converter
from .errors import _Unsupported
from .module_rules import _elementwise, _inplace_result
from .values import _BATCH, _not_plain, _Param, _Tensor, _tensor


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
                     operator.mul: "mul", operator.imul: "mul", torch.mul: "mul",
                     operator.sub: "sub", operator.isub: "sub", torch.sub: "sub"}
_BINARY_METHODS = {"add": "add", "add_": "add", "mul": "mul", "mul_": "mul", "sub": "sub",
                   "sub_": "sub"}
_INPLACE_FUNCTIONS = (operator.iadd, operator.imul, operator.isub)


@_call_rule(functions=list(_BINARY_FUNCTIONS), methods=list(_BINARY_METHODS))
def _binary_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    if node.op == "call_method":
        op, inplace = _BINARY_METHODS[node.target], node.target.endswith("_")
    else:
        op, inplace = _BINARY_FUNCTIONS[node.target], node.target in _INPLACE_FUNCTIONS
    a = _bind(_sig_binary, args, kwargs)
    x, y = a["input"], a["other"]
    if isinstance(x, int | float) and isinstance(y, int | float):
        return {"add": operator.add, "mul": operator.mul, "sub": operator.sub}[op](x, y)  # sizes
    if op in ("add", "mul") and isinstance(x, _Param) and isinstance(y, _Tensor):
        x, y = y, x
    if op == "add" and isinstance(x, _Tensor) and isinstance(y, _Param):
        result = _pos_embed(cx, x, y)
    elif op == "mul" and isinstance(x, _Tensor) and isinstance(y, _Param):
        result = _scale(cx, node, x, y)
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
                           f"{op}s computed tensors, and scales by learned vectors")
    return _inplace_result(cx, node, inplace, result)


def _scale(cx: _Converter, node: fx.Node, x: _Tensor, p: _Param) -> _Tensor:
    """``x * self.gamma`` with a learned vector spanning one axis of ``x`` (layer scale)."""
    assert x.shape is not None and x.phys is not None
    if not x.plain and not x.nhwc:
        raise _Unsupported(_not_plain(x))
    shape = tuple(p.tensor.shape)
    if p.batched or len(shape) > len(x.phys) + 1 or (len(shape) == len(x.phys) + 1
                                                     and shape[0] != 1):
        raise _Unsupported(f"multiplies by the module tensor {p.target!r} {list(shape)}")
    shape = shape[-len(x.phys):] if len(shape) > len(x.phys) else shape
    aligned = (1,) * (len(x.phys) - len(shape)) + shape  # broadcasting aligns the last axes
    spanned = [i for i, d in enumerate(aligned) if d != 1]
    if len(spanned) != 1 or aligned[spanned[0]] != x.phys[spanned[0]]:
        raise _Unsupported(f"multiplies by the module tensor {p.target!r} {list(p.tensor.shape)} "
                           f"(nas-graph/1 scales by a learned vector along one axis of "
                           f"{list(x.phys)})")
    axis = spanned[0]
    if x.nhwc:
        axis = (1, 2, 0)[axis]  # (H, W, C) seen as the (C, H, W) map it is
    try:
        cx.root.get_parameter(p.target)
    except AttributeError:
        raise _Unsupported(f"multiplies by {p.target!r}, which is not a learned "
                           "parameter") from None
    y = cx.add("scale", [_tensor(x.node, x.shape)], node.name,
               {"weight": (p.target, p.tensor)}, axis=axis)
    return _Tensor(y.node, x.shape, x.phys, x.nhwc)


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
