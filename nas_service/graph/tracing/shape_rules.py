"""Rules for calls that read or change shapes: sizes, views, permutes, indexing, reductions.

Sizes (``x.size()``, ``x.dim()``, ``x.shape``, ``x.ndim``) evaluate to Python values, with
:data:`_BATCH` for the batch size. A reshape (``flatten``, ``view``, ``reshape``, ``squeeze``,
``unsqueeze``) becomes a graph node where it is one (``flatten``, ``to_tokens``), and is
otherwise a pending view on the value (:class:`_Tensor` ``phys``) that a later call resolves
(``x.flatten(2).transpose(1, 2)`` is ``to_tokens``) or refuses; a recorded run then makes the
view a ``reshape`` node. The channels-last permute of a map (``x.permute(0, 2, 3, 1)``) is a
pending view too (``nhwc``: layer norm and linear layers over channels), and any other
permutation of a plain value is a ``permute`` node. ``x[:, i]`` on tokens is ``select_token``;
one slice of one axis (``x[:, :c]``, ``x[:, 1:]``, ``split``, ``chunk``, ``narrow``) is
``slice`` nodes (channel splits, dropping a class token); ``mean``/``amax`` over the spatial
dims of a map or the tokens of a sequence are global pools. The batch dimension always stays
first.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
from torch import fx

from .arguments import _bind, _dims, _int, _norm_dim, _plain, _x
from .converter import _call_rule, _Converter
from .errors import _Unsupported
from .values import _BATCH, _AttentionResult, _not_plain, _Param, _Tensor, _tensor


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
    # x[:, :c], x[:, 1:], x[..., a:b]: one slice of one axis.
    if Ellipsis in index:
        at = index.index(Ellipsis)
        index = index[:at] + (full,) * (len(x.shape) + 1 - len(index) + 1) + index[at + 1:]
    if (len(index) <= len(x.shape) + 1 and all(isinstance(i, slice) for i in index)
            and index and index[0] == full):
        cut = [(axis, i) for axis, i in enumerate(index[1:]) if i != full]
        if len(cut) == 1:
            axis, i = cut[0]
            return _slice(cx, node, x, axis, *i.indices(x.shape[axis]))
        if not cut:
            return x
    raise _Unsupported(f"indexing with {index!r} (supported: x[:, i] on (B, T, D) tokens, "
                       "and one slice of one axis)")


def _slice(cx: _Converter, node: fx.Node, x: _Tensor, axis: int, start: int, end: int,
           step: int) -> _Tensor:
    assert x.shape is not None
    if step < 1:
        raise _Unsupported(f"a slice with step {step}")
    if start == 0 and end >= x.shape[axis] and step == 1:
        return x
    if start >= end:
        raise _Unsupported(f"an empty slice {start}:{end} of axis {axis}")
    return cx.add("slice", [x], node.name, axis=axis, start=start, end=end, step=step)


def _sig_split(tensor: Any, split_size_or_sections: Any, dim: int = 0) -> dict[str, Any]:
    return locals()


@_call_rule(functions=[torch.split], methods=["split"])
def _split_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    if "split_size" in kwargs:  # the tensor method's name for it
        kwargs = {**kwargs, "split_size_or_sections": kwargs.pop("split_size")}
    a = _bind(_sig_split, args, kwargs)
    x = _plain(a["tensor"])
    assert x.shape is not None
    axis = _norm_dim(a["dim"], len(x.shape) + 1) - 1
    if axis < 0:
        raise _Unsupported("splitting the batch")
    n, sizes = x.shape[axis], a["split_size_or_sections"]
    if isinstance(sizes, int):
        sizes = [min(sizes, n - s) for s in range(0, n, sizes)] if sizes > 0 else []
    return _pieces(cx, node, x, axis, [_int(s, "split size") for s in sizes])


def _pieces(cx: _Converter, node: fx.Node, x: _Tensor, axis: int, sizes: list[int]) -> tuple:
    assert x.shape is not None
    if sum(sizes) != x.shape[axis] or any(s < 0 for s in sizes):
        raise _Unsupported(f"sizes {sizes} do not split {x.shape[axis]}")
    out, start = [], 0
    for size in sizes:
        out.append(_slice(cx, node, x, axis, start, start + size, 1) if size else x)
        start += size
    return tuple(out)


def _sig_chunk(input: Any, chunks: int, dim: int = 0) -> dict[str, Any]:
    return locals()


@_call_rule(functions=[torch.chunk], methods=["chunk"])
def _chunk_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    a = _bind(_sig_chunk, args, kwargs)
    x = _plain(a["input"])
    assert x.shape is not None
    axis = _norm_dim(a["dim"], len(x.shape) + 1) - 1
    chunks = _int(a["chunks"], "chunks")
    if axis < 0 or chunks < 1:
        raise _Unsupported("chunks of the batch, or fewer than one chunk")
    n = x.shape[axis]
    size = -(-n // chunks)
    return _pieces(cx, node, x, axis, [min(size, n - s) for s in range(0, n, size)])


def _sig_narrow(input: Any, dim: int, start: int, length: int) -> dict[str, Any]:
    return locals()


@_call_rule(functions=[torch.narrow], methods=["narrow"])
def _narrow_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    a = _bind(_sig_narrow, args, kwargs)
    x = _plain(a["input"])
    assert x.shape is not None
    axis = _norm_dim(a["dim"], len(x.shape) + 1) - 1
    if axis < 0:
        raise _Unsupported("narrowing the batch")
    start = _int(a["start"], "start") % x.shape[axis]
    return _slice(cx, node, x, axis, start, start + _int(a["length"], "length"), 1)


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
    if x.plain:
        return cx.add("permute", [x], node.name, dims=[d - 1 for d in perm[1:]])
    raise _Unsupported(f"permutation {list(perm)} of a {list(x.phys)} view of a "
                       f"{list(x.shape)} tensor")


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
