"""Rules for ``torch.nn`` layers (``call_module`` nodes), one per layer type.

Covered: ``Conv2d``, ``Conv1d``, ``ConvTranspose2d``, ``Linear`` (also on a channels-last map,
as a 1x1 convolution), ``BatchNorm1d``/``BatchNorm2d``, ``LayerNorm``, ``GroupNorm``,
``InstanceNorm1d``/``2d`` (without running statistics: group norm with a group per channel), the
activation layers of ``_ACTIVATION_LAYERS``, ``PReLU``, ``Dropout`` (1d/2d/3d), ``Identity``,
``MaxPool2d``, ``AvgPool2d``, ``AdaptiveAvgPool2d``, ``AdaptiveMaxPool2d``, ``Flatten``,
``Upsample`` (and its nearest/bilinear forms), the padding layers, ``LSTM``/``GRU``/``RNN``
(batch-first, from zero states), ``Embedding`` and ``MultiheadAttention`` (self-attention on
batch-first tokens). A layer's parameters and buffers become the node's ``parameter_sources``.

The lowering helpers here (``_conv_padding``, ``_layer_norm``, ``_max_pool``, ``_avg_pool``,
``_adaptive_pool``, ``_elementwise``, ``_inplace_result``) are shared with the rules for the
functional and tensor-method forms of the same layers, so both forms convert alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx, nn

from .arguments import _bind, _pair, _plain, _x
from .converter import _Converter, _module_rule, _module_state
from .errors import _Unsupported
from .shape_rules import _flatten
from .values import _AttentionResult, _Pending, _Tensor, _tensor


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
    return _linear(cx, node, _x(args[0] if args else kwargs.get("input")),
                   _module_state(node.target, m), m.out_features, m.bias is not None)


def _linear(cx: _Converter, node: fx.Node, x: _Tensor, sources: dict[str, Any],
            out_features: int, bias: bool) -> Any:
    assert x.shape is not None
    if x.nhwc:
        # A linear layer on a channels-last map (ConvNeXt's pointwise layers) is a 1x1
        # convolution of the map; its (O, C) weight is the convolution's (O, C, 1, 1).
        y = cx.add("conv2d", [_tensor(x.node, x.shape)], node.name, sources,
                   out_channels=out_features, kernel_size=(1, 1), bias=bias)
        return _Tensor(y.node, y.shape, (*x.phys[:2], out_features), nhwc=True)  # type: ignore
    return cx.add("linear", [_plain(x)], node.name, sources, out_features=out_features,
                  bias=bias)


@_module_rule(nn.Conv1d)
def _conv1d_layer(cx: _Converter, node: fx.Node, m: nn.Conv1d, args: tuple, kwargs: dict) -> Any:
    x = _plain(args[0] if args else kwargs.get("input"))
    if m.padding_mode != "zeros":
        raise _Unsupported(f"padding_mode={m.padding_mode!r} (only zero padding is supported)")
    (padding,) = _conv_padding(m.padding, m.kernel_size, m.dilation)[:1]
    return cx.add("conv1d", [x], node.name, _module_state(node.target, m),
                  out_channels=m.out_channels, kernel_size=m.kernel_size[0], stride=m.stride[0],
                  padding=padding, dilation=m.dilation[0], groups=m.groups,
                  bias=m.bias is not None)


@_module_rule(nn.ConvTranspose2d)
def _conv_transpose_layer(cx: _Converter, node: fx.Node, m: nn.ConvTranspose2d, args: tuple,
                          kwargs: dict) -> Any:
    if len(args) > 1 or kwargs.get("output_size") is not None:
        raise _Unsupported("an output_size argument")
    x = _plain(args[0] if args else kwargs.get("input"))
    if m.padding_mode != "zeros":
        raise _Unsupported(f"padding_mode={m.padding_mode!r} (only zero padding is supported)")
    return cx.add("conv_transpose2d", [x], node.name, _module_state(node.target, m),
                  out_channels=m.out_channels, kernel_size=m.kernel_size, stride=m.stride,
                  padding=m.padding, output_padding=m.output_padding, dilation=m.dilation,
                  groups=m.groups, bias=m.bias is not None)


@_module_rule(nn.PReLU)
def _prelu_layer(cx: _Converter, node: fx.Node, m: nn.PReLU, args: tuple, kwargs: dict) -> Any:
    x = _plain(args[0] if args else kwargs.get("input"))
    return cx.add("prelu", [x], node.name, _module_state(node.target, m),
                  channelwise=m.num_parameters > 1)


@_module_rule(nn.InstanceNorm1d, nn.InstanceNorm2d)
def _instance_norm_layer(cx: _Converter, node: fx.Node, m: nn.modules.instancenorm._InstanceNorm,
                         args: tuple, kwargs: dict) -> Any:
    if m.track_running_stats:
        raise _Unsupported("track_running_stats=True (running statistics at evaluation)")
    x = _plain(args[0] if args else kwargs.get("input"))
    return _instance_norm(cx, node, x, m.eps, m.affine, _module_state(node.target, m))


def _instance_norm(cx: _Converter, node: fx.Node, x: _Tensor, eps: float, affine: bool,
                   sources: dict[str, Any]) -> Any:
    """Instance norm is group norm with one channel per group."""
    assert x.shape is not None
    if len(x.shape) not in (2, 3):
        raise _Unsupported(f"instance norm over per-sample shape {list(x.shape)}")
    return cx.add("group_norm", [x], node.name, sources, num_groups=x.shape[0], eps=eps,
                  affine=affine)


@_module_rule(nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)
def _upsample_layer(cx: _Converter, node: fx.Node, m: nn.Upsample, args: tuple,
                    kwargs: dict) -> Any:
    x = _plain(args[0] if args else kwargs.get("input"))
    return _upsample(cx, node, x, m.size, m.scale_factor, m.mode, m.align_corners,
                     m.recompute_scale_factor)


def _upsample(cx: _Converter, node: fx.Node, x: _Tensor, size: Any, scale_factor: Any,
              mode: str, align_corners: Any, recompute: Any = None, antialias: bool = False
              ) -> Any:
    assert x.shape is not None
    if len(x.shape) != 3:
        raise _Unsupported(f"interpolation of per-sample shape {list(x.shape)} (nas-graph/1 "
                           "resizes (C, H, W) maps)")
    if antialias:
        raise _Unsupported("antialias=True")
    if mode not in ("nearest", "nearest-exact", "bilinear", "bicubic"):
        raise _Unsupported(f"mode={mode!r}")
    if size is not None:
        out = tuple(x.shape[1 + i] if s is None else int(s) for i, s in enumerate(_pair(size)))
    elif scale_factor is not None:
        scales = _pair(scale_factor)
        exact = [x.shape[1 + i] * float(s) for i, s in enumerate(scales)]
        if any(e != int(e) for e in exact):
            # A fractional factor maps coordinates by the factor, not by the sizes.
            raise _Unsupported(f"scale_factor={scale_factor!r} gives a fractional size")
        out = tuple(int(e) for e in exact)
    else:
        raise _Unsupported("neither size nor scale_factor")
    return cx.add("upsample", [x], node.name, size=out, mode=mode,
                  align_corners=bool(align_corners) if mode in ("bilinear", "bicubic") else False)


_RECURRENT = {nn.LSTM: "lstm", nn.GRU: "gru"}


@_module_rule(nn.LSTM, nn.GRU, nn.RNN)
def _recurrent_layer(cx: _Converter, node: fx.Node, m: nn.RNNBase, args: tuple,
                     kwargs: dict) -> Any:
    x = _plain(args[0] if args else kwargs.get("input"), "input")
    hx = args[1] if len(args) > 1 else kwargs.get("hx")
    if hx is not None:
        raise _Unsupported("initial states (hx) given to the layer")
    if not m.batch_first:
        raise _Unsupported("batch_first=False (nas-graph/1 runs (B, T, D) sequences)")
    if getattr(m, "proj_size", 0):
        raise _Unsupported("proj_size")
    assert x.shape is not None
    if len(x.shape) != 2:
        raise _Unsupported(f"needs (T, D) tokens, got per-sample shape {list(x.shape)}")
    mode = _RECURRENT.get(type(m)) or f"rnn_{m.nonlinearity}"
    y = cx.add("recurrent", [x], node.name, _module_state(node.target, m), mode=mode,
               hidden_size=m.hidden_size, num_layers=m.num_layers, bias=m.bias,
               bidirectional=m.bidirectional, dropout=float(m.dropout))
    # (output, final states): the states are not graph values.
    return (y, _Pending((y.node,), (), (f"{node.target} ({type(m).__name__}) final states",)))


@_module_rule(nn.Embedding)
def _embedding_layer(cx: _Converter, node: fx.Node, m: nn.Embedding, args: tuple,
                     kwargs: dict) -> Any:
    if m.max_norm is not None:
        raise _Unsupported("max_norm (renormalises the weight in forward)")
    x = _plain(args[0] if args else kwargs.get("input"))
    return cx.add("embedding", [x], node.name, _module_state(node.target, m),
                  num_embeddings=m.num_embeddings, embedding_dim=m.embedding_dim)


_PADS = {nn.ZeroPad2d: "constant", nn.ConstantPad1d: "constant", nn.ConstantPad2d: "constant",
         nn.ReflectionPad1d: "reflect", nn.ReflectionPad2d: "reflect",
         nn.ReplicationPad1d: "replicate", nn.ReplicationPad2d: "replicate",
         nn.CircularPad1d: "circular", nn.CircularPad2d: "circular"}


@_module_rule(*_PADS)
def _pad_layer(cx: _Converter, node: fx.Node, m: nn.Module, args: tuple, kwargs: dict) -> Any:
    x = _plain(args[0] if args else kwargs.get("input"))
    return _pad(cx, node, x, m.padding, _PADS[type(m)], getattr(m, "value", 0.0))


def _pad(cx: _Converter, node: fx.Node, x: _Tensor, padding: Any, mode: str,
         value: Any) -> Any:
    padding = list(padding)
    if any(not isinstance(p, int) or p < 0 for p in padding):
        raise _Unsupported(f"padding {padding} (nas-graph/1 pads by non-negative sizes)")
    while len(padding) > 2 and padding[-2:] == [0, 0]:
        padding = padding[:-2]  # F.pad(x, (l, r, 0, 0)) pads the last axis only
    return cx.add("pad", [x], node.name, padding=padding, mode=mode,
                  value=float(value or 0.0))


@_module_rule(nn.BatchNorm1d, nn.BatchNorm2d)
def _batch_norm_layer(cx: _Converter, node: fx.Node, m: nn.modules.batchnorm._BatchNorm,
                      args: tuple, kwargs: dict) -> Any:
    x = _plain(args[0] if args else kwargs.get("input"))
    ranks = (3,) if isinstance(m, nn.BatchNorm2d) else (1, 2)
    if len(x.shape) not in ranks:  # type: ignore[arg-type]
        raise _Unsupported(f"{type(m).__name__} over a per-sample shape {list(x.shape)} "
                           "(nas-graph/1 batch-normalises "
                           f"{'maps' if ranks == (3,) else 'vectors and (C, L) sequences'})")
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
    if _covers(x, kernel, padding):
        return cx.add("global_max_pool", [x], node.name, keepdim=True)
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
    if _covers(x, kernel, padding):
        return cx.add("global_avg_pool", [x], node.name, keepdim=True)
    return cx.add("avg_pool", [x], node.name, kernel_size=_pair(kernel),
                  stride=_pair(stride) if stride else None, padding=_pair(padding),
                  ceil_mode=bool(ceil_mode), count_include_pad=bool(count_include_pad))


def _covers(x: _Tensor, kernel: Any, padding: Any) -> bool:
    """An unpadded window at least as large as the map: one window, a global pool
    (EfficientNet's ``AvgPool2d(1280, ceil_mode=True)`` head)."""
    assert x.shape is not None
    k = _pair(kernel)
    return (len(x.shape) == 3 and _pair(padding) == (0, 0) and k[0] >= x.shape[1]
            and k[1] >= x.shape[2] and k != (x.shape[1], x.shape[2]))


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
