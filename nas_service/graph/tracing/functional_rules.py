"""Rules for the ``torch.nn.functional`` forms of layers: pooling, and layers whose parameters
are the module's own.

``F.max_pool2d``, ``F.avg_pool2d``, ``F.adaptive_avg_pool2d`` and ``F.adaptive_max_pool2d``
lower exactly as their layers do. ``F.linear``, ``F.conv2d`` and ``F.layer_norm`` are met when
fx traces through a subclass of a ``torch.nn`` layer defined outside ``torch.nn``; they convert
when their weight and bias are parameters of the module (``get_attr``), which then become the
node's ``parameter_sources``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from .arguments import _bind, _pair, _plain, _x
from .converter import _call_rule, _Converter
from .errors import _Unsupported
from .module_rules import _adaptive_pool, _avg_pool, _conv_padding, _layer_norm, _max_pool
from .values import _Param

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
