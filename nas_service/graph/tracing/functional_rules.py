"""Rules for the ``torch.nn.functional`` forms of layers: pooling, and layers whose parameters
are the module's own.

``F.max_pool2d``, ``F.avg_pool2d``, ``F.adaptive_avg_pool2d``, ``F.adaptive_max_pool2d``,
``F.interpolate`` and ``F.pad`` lower exactly as their layers do. ``F.linear``, ``F.conv2d``,
``F.conv1d``, ``F.conv_transpose2d``, ``F.layer_norm``, ``F.batch_norm``, ``F.group_norm``,
``F.instance_norm``, ``F.prelu`` and ``F.embedding`` are met when a subclass of a ``torch.nn``
layer defined outside ``torch.nn`` is traced through (fused batch norm + activation layers call
``F.batch_norm``); they convert when their weights and statistics are parameters and buffers of
the module, which then become the node's ``parameter_sources``. A convolution whose weight is
standardised in ``forward`` (recorded runs only: the check needs the numbers) is a
``std_conv2d``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from .arguments import _bind, _pair, _plain, _x
from .converter import _call_rule, _Converter
from .errors import _Unsupported
from .module_rules import (
    _adaptive_pool,
    _avg_pool,
    _conv_padding,
    _instance_norm,
    _layer_norm,
    _linear,
    _max_pool,
    _pad,
    _upsample,
)
from .values import _Derived, _Param

# ---- pooling ----------------------------------------------------------------------------------


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


def _layer_sources(weight: tuple[str, torch.Tensor], bias: Any) -> dict[str, Any]:
    """The parameter sources of a layer called with ``weight`` (its source) and an optional
    ``bias`` (``F.linear``, ``F.conv*``)."""
    sources: dict[str, Any] = {"weight": weight}
    if bias is not None:
        sources["bias"] = _param_source(bias, "bias")
    return sources


def _sig_linear(input: Any, weight: Any, bias: Any = None) -> dict[str, Any]:
    return locals()


@_call_rule(functions=[F.linear])
def _linear_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    a = _bind(_sig_linear, args, kwargs)
    w = _param_source(a["weight"], "weight")
    sources = _layer_sources(w, a["bias"])
    return _linear(cx, node, _x(a["input"]), sources, w[1].shape[0], a["bias"] is not None)


def _sig_conv2d(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
                dilation: Any = 1, groups: int = 1) -> dict[str, Any]:
    return locals()


@_call_rule(functions=[F.conv2d])
def _conv2d_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    a = _bind(_sig_conv2d, args, kwargs)
    op, extra = "conv2d", {}
    if isinstance(a["weight"], _Derived):
        w, eps = _standardised(a["weight"])
        op, extra = "std_conv2d", {"eps": eps}
    else:
        w = _param_source(a["weight"], "weight")
    sources = _layer_sources(w, a["bias"])
    kernel = tuple(w[1].shape[2:])
    return cx.add(op, [_plain(a["input"])], node.name, sources,
                  out_channels=w[1].shape[0], kernel_size=kernel, stride=_pair(a["stride"]),
                  padding=_conv_padding(a["padding"], kernel, _pair(a["dilation"])),
                  dilation=_pair(a["dilation"]), groups=a["groups"], bias=a["bias"] is not None,
                  **extra)


_EPSILONS = (1e-10, 1e-8, 1e-6, 1e-5, 1e-4, 1e-3)


def _standardised(w: _Derived) -> tuple[tuple[str, torch.Tensor], float]:
    """The parameter behind a weight standardised in ``forward`` (weight standardisation:
    ``(w - mean) / sqrt(var + eps)`` per filter, as in BiT and timm's ``StdConv2d``), and the
    ``eps`` that reproduces it; checked on the recorded numbers."""
    shapes = [p for p in w.leaves if tuple(p[1].shape) == tuple(w.tensor.shape)]
    if len(w.leaves) != 1 or not shapes or w.tensor.dim() != 4:
        raise _Unsupported("its weight is computed in forward from "
                           f"{[name for name, _ in w.leaves] or 'constants'}, not a parameter")
    name, p = shapes[0]
    with torch.no_grad():
        p64, seen = p.detach().double(), w.tensor.detach().double()
        var, mean = torch.var_mean(p64, dim=(1, 2, 3), keepdim=True, unbiased=False)
        errors = [float(((p64 - mean) / torch.sqrt(var + eps) - seen).abs().max())
                  for eps in _EPSILONS]
    best = min(range(len(_EPSILONS)), key=errors.__getitem__)
    if errors[best] > 1e-4 * max(float(seen.abs().max()), 1.0):
        raise _Unsupported(f"its weight is computed in forward from {name!r} (not a "
                           "standardisation nas-graph/1 knows)")
    return (name, p), _EPSILONS[best]


def _sig_conv1d(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
                dilation: Any = 1, groups: int = 1) -> dict[str, Any]:
    return locals()


@_call_rule(functions=[F.conv1d])
def _conv1d_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    a = _bind(_sig_conv1d, args, kwargs)
    w = _param_source(a["weight"], "weight")
    sources = _layer_sources(w, a["bias"])
    kernel = int(w[1].shape[2])
    one = lambda v: v[0] if isinstance(v, tuple | list) else v  # noqa: E731
    (padding,) = _conv_padding(a["padding"] if isinstance(a["padding"], str)
                               else (one(a["padding"]),), (kernel,), (one(a["dilation"]),))[:1]
    return cx.add("conv1d", [_plain(a["input"])], node.name, sources,
                  out_channels=w[1].shape[0], kernel_size=kernel, stride=one(a["stride"]),
                  padding=padding, dilation=one(a["dilation"]), groups=a["groups"],
                  bias=a["bias"] is not None)


def _sig_conv_transpose2d(input: Any, weight: Any, bias: Any = None, stride: Any = 1,
                          padding: Any = 0, output_padding: Any = 0, groups: int = 1,
                          dilation: Any = 1) -> dict[str, Any]:
    return locals()


@_call_rule(functions=[F.conv_transpose2d])
def _conv_transpose_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    a = _bind(_sig_conv_transpose2d, args, kwargs)
    w = _param_source(a["weight"], "weight")
    sources = _layer_sources(w, a["bias"])
    return cx.add("conv_transpose2d", [_plain(a["input"])], node.name, sources,
                  out_channels=w[1].shape[1] * a["groups"], kernel_size=tuple(w[1].shape[2:]),
                  stride=_pair(a["stride"]), padding=_pair(a["padding"]),
                  output_padding=_pair(a["output_padding"]), dilation=_pair(a["dilation"]),
                  groups=a["groups"], bias=a["bias"] is not None)


# ---- functional norms -------------------------------------------------------------------------


def _sig_batch_norm(input: Any, running_mean: Any, running_var: Any, weight: Any = None,
                    bias: Any = None, training: bool = False, momentum: float = 0.1,
                    eps: float = 1e-5) -> dict[str, Any]:
    return locals()


@_call_rule(functions=[F.batch_norm])
def _batch_norm_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    """``F.batch_norm`` with the module's statistics (fused batch norm + activation layers)."""
    a = _bind(_sig_batch_norm, args, kwargs)
    if a["training"] or a["running_mean"] is None:
        raise _Unsupported("batch statistics at evaluation (training=True or no running "
                           "statistics)")
    sources = {"running_mean": _param_source(a["running_mean"], "running_mean"),
               "running_var": _param_source(a["running_var"], "running_var")}
    counter = sources["running_mean"][0].rsplit(".", 1)[0] + ".num_batches_tracked"
    with contextlib.suppress(AttributeError):
        sources["num_batches_tracked"] = (counter, cx.root.get_buffer(counter))
    if (a["weight"] is None) != (a["bias"] is None):
        raise _Unsupported("a weight without a bias, or a bias without a weight")
    if a["weight"] is not None:
        sources["weight"] = _param_source(a["weight"], "weight")
        sources["bias"] = _param_source(a["bias"], "bias")
    momentum = 0.1 if a["momentum"] is None else float(a["momentum"])
    return cx.add("batch_norm", [_plain(a["input"])], node.name, sources, eps=float(a["eps"]),
                  momentum=momentum, affine=a["weight"] is not None)


def _sig_group_norm(input: Any, num_groups: int, weight: Any = None, bias: Any = None,
                    eps: float = 1e-5) -> dict[str, Any]:
    return locals()


@_call_rule(functions=[F.group_norm])
def _group_norm_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    a = _bind(_sig_group_norm, args, kwargs)
    sources = _affine_sources(a)
    return cx.add("group_norm", [_plain(a["input"])], node.name, sources,
                  num_groups=a["num_groups"], eps=float(a["eps"]), affine=bool(sources))


def _affine_sources(a: dict[str, Any]) -> dict[str, tuple[str, torch.Tensor]]:
    if (a["weight"] is None) != (a["bias"] is None):
        raise _Unsupported("a weight without a bias, or a bias without a weight")
    if a["weight"] is None:
        return {}
    return {"weight": _param_source(a["weight"], "weight"),
            "bias": _param_source(a["bias"], "bias")}


def _sig_instance_norm(input: Any, running_mean: Any = None, running_var: Any = None,
                       weight: Any = None, bias: Any = None, use_input_stats: bool = True,
                       momentum: float = 0.1, eps: float = 1e-5) -> dict[str, Any]:
    return locals()


@_call_rule(functions=[F.instance_norm])
def _instance_norm_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    a = _bind(_sig_instance_norm, args, kwargs)
    if not a["use_input_stats"]:
        raise _Unsupported("running statistics at evaluation (use_input_stats=False)")
    sources = _affine_sources(a)
    return _instance_norm(cx, node, _plain(a["input"]), float(a["eps"]), bool(sources), sources)


# ---- resizing, padding, learned activations and embeddings ------------------------------------


def _sig_interpolate(input: Any, size: Any = None, scale_factor: Any = None,
                     mode: str = "nearest", align_corners: Any = None,
                     recompute_scale_factor: Any = None, antialias: bool = False
                     ) -> dict[str, Any]:
    return locals()


@_call_rule(functions=[F.interpolate, F.upsample])
def _interpolate_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    a = _bind(_sig_interpolate, args, kwargs)
    return _upsample(cx, node, _plain(a["input"]), a["size"], a["scale_factor"], a["mode"],
                     a["align_corners"], a["recompute_scale_factor"], a["antialias"])


def _sig_pad(input: Any, pad: Any, mode: str = "constant", value: Any = None) -> dict[str, Any]:
    return locals()


@_call_rule(functions=[F.pad])
def _pad_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    a = _bind(_sig_pad, args, kwargs)
    return _pad(cx, node, _plain(a["input"]), a["pad"], a["mode"], a["value"])


def _sig_prelu(input: Any, weight: Any) -> dict[str, Any]:
    return locals()


@_call_rule(functions=[F.prelu])
def _prelu_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    a = _bind(_sig_prelu, args, kwargs)
    w = _param_source(a["weight"], "weight")
    return cx.add("prelu", [_plain(a["input"])], node.name, {"weight": w},
                  channelwise=w[1].numel() > 1)


def _sig_embedding(input: Any, weight: Any, padding_idx: Any = None, max_norm: Any = None,
                   norm_type: float = 2.0, scale_grad_by_freq: bool = False,
                   sparse: bool = False) -> dict[str, Any]:
    return locals()


@_call_rule(functions=[F.embedding])
def _embedding_call(cx: _Converter, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    a = _bind(_sig_embedding, args, kwargs)
    if a["max_norm"] is not None:
        raise _Unsupported("max_norm (renormalises the weight in forward)")
    w = _param_source(a["weight"], "weight")
    return cx.add("embedding", [_plain(a["input"])], node.name, {"weight": w},
                  num_embeddings=w[1].shape[0], embedding_dim=w[1].shape[1])


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
