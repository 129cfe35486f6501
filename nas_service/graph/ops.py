"""The op vocabulary of ``nas-graph/1``.

Each op is one :class:`OpSpec`: its attribute schema (a pydantic model that forbids unknown keys),
how many inputs it takes, shape inference, the shapes of its parameters, its multiply-accumulate
count and the ``torch.nn.Module`` that computes it.

Shapes never include the batch dimension. Three ranks flow through a graph:

* ``(C, H, W)`` — feature maps (convolutions, pooling, batch norm),
* ``(T, D)`` — token sequences (patch embeddings, attention),
* ``(F,)`` — flat features (linear layers, the classifier).

The order of :data:`OP_NAMES` is part of the format: graph hypernetworks embed ops by their index
in it, so new ops are only ever appended.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool
from torch import nn

from ..sequence.cells import HyperLSTMCell, HyperRHNCell, RHNCell
from .errors import ShapeError

Shape = tuple[int, ...]


# --------------------------------------------------------------------------------------------
# Attribute schemas
# --------------------------------------------------------------------------------------------


def _as_pair(value: Any) -> Any:
    """Accept ``3`` or ``[3, 3]`` (or ``(3, 3)``) for a 2-D size; always store a pair."""
    if isinstance(value, bool):
        return value  # rejected by the int check below with a clear message
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, list | tuple) and len(value) == 1:
        return (value[0], value[0])
    return value


PositivePair = Annotated[
    tuple[Annotated[int, Field(strict=True, ge=1)], Annotated[int, Field(strict=True, ge=1)]],
    BeforeValidator(_as_pair),
]
NonNegativePair = Annotated[
    tuple[Annotated[int, Field(strict=True, ge=0)], Annotated[int, Field(strict=True, ge=0)]],
    BeforeValidator(_as_pair),
]
PositiveInt = Annotated[int, Field(strict=True, ge=1)]
Probability = Annotated[float, Field(strict=True, ge=0.0, lt=1.0)]
Epsilon = Annotated[float, Field(strict=True, gt=0.0, le=1.0)]


class Attrs(BaseModel):
    """Base of every op's attributes: immutable, unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    appended: ClassVar[tuple[str, ...]] = ()
    """Attributes added to an op after documents using it were stored: written out, and part of
    the content hash, only when they differ from their default, so those documents keep their
    hashes (architecture caches and stored candidates are keyed by them)."""

    def written(self) -> dict[str, Any]:
        """The attribute values as stored: every attribute but an appended one at its default."""
        values = self.__dict__
        if not self.appended:
            return values
        fields = type(self).model_fields
        return {k: v for k, v in values.items()
                if k not in self.appended or v != fields[k].default}


class NoAttrs(Attrs):
    pass


class InputAttrs(Attrs):
    shape: Annotated[list[Annotated[int, Field(strict=True, ge=1)]], Field(min_length=1, max_length=3)]
    """Shape of one sample: ``[C, H, W]`` for images, ``[T, D]`` for sequences, ``[F]`` for vectors."""


class OutputAttrs(Attrs):
    num_classes: PositiveInt
    """Classes of a classifier; the vocabulary size of a next-token predictor."""
    task: Literal["classification", "next_token"] = "classification"
    """``classification``: one ``(num_classes,)`` vector of logits per sample;
    ``next_token``: logits for every position of a ``[T]`` token input, ``(T, num_classes)``,
    the one at ``t`` predicting token ``t + 1`` (a language model)."""

    appended: ClassVar[tuple[str, ...]] = ("task",)


class Conv2dAttrs(Attrs):
    out_channels: PositiveInt
    kernel_size: PositivePair
    stride: PositivePair = (1, 1)
    padding: NonNegativePair = (0, 0)
    dilation: PositivePair = (1, 1)
    groups: PositiveInt = 1
    bias: StrictBool = True


class LinearAttrs(Attrs):
    out_features: PositiveInt
    bias: StrictBool = True


class BatchNormAttrs(Attrs):
    eps: Epsilon = 1e-5
    momentum: Annotated[float, Field(strict=True, ge=0.0, le=1.0)] = 0.1
    affine: StrictBool = True


class LayerNormAttrs(Attrs):
    eps: Epsilon = 1e-5
    affine: StrictBool = True


class GroupNormAttrs(Attrs):
    num_groups: PositiveInt
    eps: Epsilon = 1e-5
    affine: StrictBool = True


class LeakyReluAttrs(Attrs):
    negative_slope: Annotated[float, Field(strict=True, ge=0.0, le=1.0)] = 0.01


class EluAttrs(Attrs):
    alpha: Annotated[float, Field(strict=True, gt=0.0, le=10.0)] = 1.0


class GeluAttrs(Attrs):
    approximate: Literal["none", "tanh"] = "none"


class PoolAttrs(Attrs):
    kernel_size: PositivePair
    stride: PositivePair | None = None
    """Defaults to ``kernel_size``, as in PyTorch."""
    padding: NonNegativePair = (0, 0)
    ceil_mode: StrictBool = False


class AvgPoolAttrs(PoolAttrs):
    count_include_pad: StrictBool = True


class AdaptivePoolAttrs(Attrs):
    output_size: PositivePair


class GlobalPoolAttrs(Attrs):
    keepdim: StrictBool = False
    """``True`` keeps ``(C, 1, 1)``, as squeeze-excitation gates need; ``False`` gives ``(C,)``."""


class ConcatAttrs(Attrs):
    axis: Annotated[int, Field(strict=True, ge=-3, le=2)] = 0
    """Axis of the per-sample shape (0 = channels of a feature map, tokens of a sequence)."""


class DropoutAttrs(Attrs):
    p: Probability = 0.0


class PatchEmbedAttrs(Attrs):
    embed_dim: PositiveInt
    patch_size: PositivePair
    bias: StrictBool = True


class AttentionAttrs(Attrs):
    num_heads: PositiveInt
    bias: StrictBool = True
    dropout: Probability = 0.0


class SelectTokenAttrs(Attrs):
    index: Annotated[int, Field(strict=True)] = 0


Axis = Annotated[int, Field(strict=True, ge=-3, le=2)]
"""An axis of the per-sample shape (negative counts from the end)."""


class ScaleAttrs(Attrs):
    axis: Axis = 0
    """The axis the learned vector spans: 0 = channels of a map, -1 = features of tokens."""


class SliceAttrs(Attrs):
    axis: Axis = 0
    start: Annotated[int, Field(strict=True, ge=0)] = 0
    end: PositiveInt
    """Exclusive, at most the axis' size."""
    step: PositiveInt = 1


class UpsampleAttrs(Attrs):
    size: PositivePair
    mode: Literal["nearest", "nearest-exact", "bilinear", "bicubic"] = "nearest"
    align_corners: StrictBool = False
    """Only with ``bilinear`` or ``bicubic``."""


class Conv1dAttrs(Attrs):
    out_channels: PositiveInt
    kernel_size: PositiveInt
    stride: PositiveInt = 1
    padding: Annotated[int, Field(strict=True, ge=0)] = 0
    dilation: PositiveInt = 1
    groups: PositiveInt = 1
    bias: StrictBool = True


class ConvTranspose2dAttrs(Conv2dAttrs):
    output_padding: NonNegativePair = (0, 0)
    """Extra rows/columns on one side of the output; each below ``stride`` or ``dilation``."""


class StdConv2dAttrs(Conv2dAttrs):
    eps: Epsilon = 1e-5


class PReluAttrs(Attrs):
    channelwise: StrictBool = True
    """One slope per channel (axis 0), or one slope shared by every element."""


class RecurrentAttrs(Attrs):
    mode: Literal["lstm", "gru", "rnn_tanh", "rnn_relu"]
    hidden_size: PositiveInt
    num_layers: Annotated[int, Field(strict=True, ge=1, le=16)] = 1
    bias: StrictBool = True
    bidirectional: StrictBool = False
    dropout: Probability = 0.0


Depth = Annotated[int, Field(strict=True, ge=1, le=16)]


class RHNAttrs(Attrs):
    hidden_size: PositiveInt
    depth: Depth
    """Recurrence depth ``L``: highway layers per time step."""
    layer_norm: StrictBool = False


class HyperLSTMAttrs(Attrs):
    hidden_size: PositiveInt
    hyper_size: PositiveInt
    """Width ``N`` of the hypernetwork LSTM."""
    hyper_embedding_size: PositiveInt = 16
    """Size ``N_z`` of each of its embeddings ``z``."""
    layer_norm: StrictBool = False


class HyperRHNAttrs(Attrs):
    hidden_size: PositiveInt
    depth: Depth
    hyper_size: PositiveInt
    """Width ``N`` of the hypernetwork RHN (of the same depth)."""
    hyper_embedding_size: PositiveInt = 16
    layer_norm: StrictBool = False


class EmbeddingAttrs(Attrs):
    num_embeddings: PositiveInt
    embedding_dim: PositiveInt


class PadAttrs(Attrs):
    padding: Annotated[list[Annotated[int, Field(strict=True, ge=0, le=1024)]],
                       Field(min_length=2, max_length=4)]
    """``F.pad``'s order, last axis first: ``[left, right]`` or ``[left, right, top, bottom]``;
    an even number of values."""
    mode: Literal["constant", "reflect", "replicate", "circular"] = "constant"
    value: Annotated[float, Field(strict=True, ge=-1e6, le=1e6)] = 0.0
    """The fill value of ``constant`` padding."""


class ReshapeAttrs(Attrs):
    shape: Annotated[list[Annotated[int, Field(strict=True, ge=1)]], Field(min_length=1, max_length=3)]
    """The new shape of one sample (row-major, as ``x.reshape(B, *shape)``)."""


class PermuteAttrs(Attrs):
    dims: Annotated[list[Annotated[int, Field(strict=True, ge=0, le=2)]],
                    Field(min_length=1, max_length=3)]
    """A permutation of the axes of one sample (``x.permute(0, *[d + 1 for d in dims])``)."""


_PARAMETER_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.]{0,127}"
_LABEL = r"^[^\x00-\x1f\x7f]{0,256}$"


class OpaqueAttrs(Attrs):
    shape: Annotated[list[Annotated[int, Field(strict=True, ge=1)]], Field(min_length=1, max_length=3)]
    """Shape of one sample of the output."""
    parameters: Annotated[
        dict[Annotated[str, Field(pattern=f"^{_PARAMETER_NAME}$")],
             Annotated[list[Annotated[int, Field(strict=True, ge=1)]], Field(max_length=8)]],
        Field(max_length=256)] = {}
    """The parameters the computation owns, ``{name: shape}``, in ``state_dict`` order."""
    label: Annotated[str, Field(pattern=_LABEL)] = ""
    """What the node stands for, in words (the layer and the calls)."""


# --------------------------------------------------------------------------------------------
# Modules that torch.nn lacks
# --------------------------------------------------------------------------------------------


class Add(nn.Module):
    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class Mul(nn.Module):
    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out * x
        return out


class Concat(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=self.dim)


class GlobalPool(nn.Module):
    """Mean or max over every position: ``(C, H, W) -> (C,)`` or ``(T, D) -> (D,)``."""

    def __init__(self, mode: str, keepdim: bool, rank: int):
        super().__init__()
        self.mode, self.keepdim = mode, keepdim
        self.dims = (2, 3) if rank == 3 else (1,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "avg":
            return x.mean(dim=self.dims, keepdim=self.keepdim)
        return x.amax(dim=self.dims, keepdim=self.keepdim)


class ChannelLayerNorm(nn.LayerNorm):
    """Layer norm over the channels of a ``(B, C, H, W)`` map (as in ConvNeXt)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class PatchEmbed(nn.Conv2d):
    """Non-overlapping patches projected to ``embed_dim``: ``(C, H, W) -> (H/p * W/p, D)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).flatten(2).transpose(1, 2)


class ToTokens(nn.Module):
    """Every position of a feature map becomes a token: ``(C, H, W) -> (H * W, C)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


class ClassToken(nn.Module):
    """Prepends a learned token: ``(T, D) -> (T + 1, D)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.weight.expand(x.shape[0], -1, -1), x], dim=1)


class PositionalEmbedding(nn.Module):
    """Adds a learned embedding per position: ``(T, D) -> (T, D)``."""

    def __init__(self, tokens: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, tokens, dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight


class SelectToken(nn.Module):
    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.index]


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention over tokens, or over the positions of a feature map.

    Parameter names match ``torch.nn.MultiheadAttention`` (``in_proj_weight``, ``in_proj_bias``,
    ``out_proj.weight``, ``out_proj.bias``) so weights move between the two by name.
    A ``(C, H, W)`` input is attended as ``H * W`` tokens of width ``C`` and reshaped back.
    """

    def __init__(self, dim: int, num_heads: int, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim)) if bias else None
        self.out_proj = nn.Linear(dim, dim, bias=bias)
        nn.init.xavier_uniform_(self.in_proj_weight)
        if bias:
            nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.dim() == 4
        if spatial:
            b, c, h, w = x.shape
            x = x.flatten(2).transpose(1, 2)
        B, T, D = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, T, 3D)
        qkv = qkv.view(B, T, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, T, D / heads)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        y = self.out_proj(y.transpose(1, 2).reshape(B, T, D))
        if spatial:
            y = y.transpose(1, 2).reshape(b, c, h, w)
        return y


class Scale(nn.Module):
    """Multiplies by a learned vector along one axis (layer scale): ``x * weight``."""

    def __init__(self, size: int, axis: int, rank: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.view = [1] * rank
        self.view[axis] = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, *self.view)


class Slice(nn.Module):
    def __init__(self, axis: int, start: int, end: int, step: int):
        super().__init__()
        self.axis, self.start, self.end, self.step = axis + 1, start, end, step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = [slice(None)] * self.axis + [slice(self.start, self.end, self.step)]
        return x[tuple(index)]


class Sub(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x - y


class Reshape(nn.Module):
    def __init__(self, shape: Sequence[int]):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


class Permute(nn.Module):
    def __init__(self, dims: Sequence[int]):
        super().__init__()
        self.dims = (0, *(d + 1 for d in dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(self.dims)


class Pad(nn.Module):
    def __init__(self, padding: Sequence[int], mode: str, value: float):
        super().__init__()
        self.padding, self.mode = tuple(padding), mode
        self.value = value if mode == "constant" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.padding, self.mode, self.value)


class StdConv2d(nn.Conv2d):
    """Convolution with a standardised weight: each filter is centred and divided by
    ``sqrt(var + eps)`` (biased variance over its input channels and kernel) before use."""

    def __init__(self, *args: Any, eps: float = 1e-5, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(self.weight, dim=(1, 2, 3), keepdim=True, unbiased=False)
        w = (self.weight - mean) / torch.sqrt(var + self.eps)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class _RecurrentOutput:
    """Returns the output sequence only (``(B, T, H * directions)``), not the final states.

    Mixed into the ``torch.nn`` recurrent layers so parameter names stay theirs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[0]  # type: ignore[misc]


class LSTMOutput(_RecurrentOutput, nn.LSTM):
    pass


class GRUOutput(_RecurrentOutput, nn.GRU):
    pass


class RNNOutput(_RecurrentOutput, nn.RNN):
    pass


class _BatchFirst:
    """Runs a :mod:`nas_service.sequence.cells` layer on a ``(B, T, D)`` batch from zero
    states and returns its output sequence ``(B, T, H)``.

    Mixed into the cells (which are time-major) so parameter names stay theirs and the graph's
    layer computes exactly what the library's language model computes with the same weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = super().forward(x.transpose(0, 1))  # type: ignore[misc]
        return y.transpose(0, 1)


class RHNLayer(_BatchFirst, RHNCell):
    pass


class HyperLSTMLayer(_BatchFirst, HyperLSTMCell):
    pass


class HyperRHNLayer(_BatchFirst, HyperRHNCell):
    pass


# --------------------------------------------------------------------------------------------
# Op specifications
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpSpec:
    """Everything the system knows about one op.

    ``infer_shape(attrs, input_shapes) -> output shape`` raises :class:`ShapeError`.
    ``parameter_shapes(attrs, input_shapes, output_shape) -> {name: shape}`` lists trainable
    parameters in ``state_dict`` order, named as in the built module.
    ``flops(attrs, input_shapes, output_shape)`` counts multiply-accumulates of one sample.
    ``build(attrs, input_shapes, output_shape)`` returns the module computing the op; it takes
    the node's inputs as positional arguments.
    """

    name: str
    category: str
    attrs: type[Attrs]
    min_inputs: int
    max_inputs: int | None
    infer_shape: Callable[[Any, list[Shape]], Shape]
    build: Callable[[Any, list[Shape], Shape], nn.Module]
    parameter_shapes: Callable[[Any, list[Shape], Shape], dict[str, Shape]] = (
        lambda a, i, o: {}
    )
    flops: Callable[[Any, list[Shape], Shape], int] = lambda a, i, o: 0
    description: str = ""
    stand_in: str | None = None
    """For an op appended after graph hypernetworks were trained: the older op whose learned
    embedding starts as this op's in such a GHN (``None``: the mean of all of them)."""


def _require_rank(shape: Shape, ranks: Sequence[int], what: str = "input") -> None:
    if len(shape) not in ranks:
        names = {3: "(C, H, W) feature map", 2: "(T, D) token sequence or (C, L) sequence",
                 1: "(F,) vector"}
        wanted = " or ".join(names[r] for r in ranks)
        raise ShapeError(f"{what} must be a {wanted}, got shape {list(shape)}")


def _window_out(size: int, kernel: int, stride: int, pad: int, dilation: int = 1,
                ceil_mode: bool = False) -> int:
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1  # floor, like PyTorch's div_rtn
    # PyTorch: with ceil_mode the last window must start inside the input or left padding.
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return max(out, 0)


def _spatial(attrs: Any, h: int, w: int, dilation: tuple[int, int] = (1, 1),
             ceil_mode: bool = False, stride: tuple[int, int] | None = None) -> tuple[int, int]:
    stride = stride or attrs.stride
    oh = _window_out(h, attrs.kernel_size[0], stride[0], attrs.padding[0], dilation[0], ceil_mode)
    ow = _window_out(w, attrs.kernel_size[1], stride[1], attrs.padding[1], dilation[1], ceil_mode)
    if oh < 1 or ow < 1:
        raise ShapeError(
            f"spatial size collapses to {oh}x{ow} (input {h}x{w}, kernel "
            f"{list(attrs.kernel_size)}, stride {list(stride)}, padding {list(attrs.padding)}"
            + (f", dilation {list(dilation)}" if dilation != (1, 1) else "") + ")",
            field="kernel_size",
        )
    return oh, ow


# ---- conv2d ---------------------------------------------------------------------------------


def _conv_shape(a: Conv2dAttrs, ins: list[Shape]) -> Shape:
    (x,) = ins
    _require_rank(x, [3])
    c, h, w = x
    if c % a.groups:
        raise ShapeError(f"input channels {c} are not divisible by groups={a.groups}", "groups")
    if a.out_channels % a.groups:
        raise ShapeError(
            f"out_channels {a.out_channels} is not divisible by groups={a.groups}", "groups"
        )
    oh, ow = _spatial(a, h, w, a.dilation)
    return (a.out_channels, oh, ow)


def _conv_params(a: Conv2dAttrs, ins: list[Shape], out: Shape) -> dict[str, Shape]:
    p = {"weight": (a.out_channels, ins[0][0] // a.groups, *a.kernel_size)}
    if a.bias:
        p["bias"] = (a.out_channels,)
    return p


def _conv_flops(a: Conv2dAttrs, ins: list[Shape], out: Shape) -> int:
    return math.prod(out) * (ins[0][0] // a.groups) * a.kernel_size[0] * a.kernel_size[1]


def _conv_build(a: Conv2dAttrs, ins: list[Shape], out: Shape) -> nn.Module:
    return nn.Conv2d(ins[0][0], a.out_channels, a.kernel_size, a.stride, a.padding,
                     a.dilation, a.groups, a.bias)


# ---- linear ---------------------------------------------------------------------------------


def _linear_shape(a: LinearAttrs, ins: list[Shape]) -> Shape:
    (x,) = ins
    _require_rank(x, [1, 2])
    return (*x[:-1], a.out_features)


def _linear_params(a: LinearAttrs, ins: list[Shape], out: Shape) -> dict[str, Shape]:
    p = {"weight": (a.out_features, ins[0][-1])}
    if a.bias:
        p["bias"] = (a.out_features,)
    return p


# ---- normalisation ----------------------------------------------------------------------------


def _batch_norm_shape(a: BatchNormAttrs, ins: list[Shape]) -> Shape:
    _require_rank(ins[0], [3, 2, 1])
    return ins[0]


def _affine_params(a: Any, ins: list[Shape], out: Shape, axis: int = 0) -> dict[str, Shape]:
    if not a.affine:
        return {}
    n = ins[0][axis]
    return {"weight": (n,), "bias": (n,)}


def _batch_norm_build(a: BatchNormAttrs, ins: list[Shape], out: Shape) -> nn.Module:
    cls = nn.BatchNorm2d if len(ins[0]) == 3 else nn.BatchNorm1d
    return cls(ins[0][0], eps=a.eps, momentum=a.momentum, affine=a.affine)


def _layer_norm_axis(shape: Shape) -> int:
    # Channels of a feature map, the last axis otherwise.
    return 0 if len(shape) == 3 else -1


def _layer_norm_build(a: LayerNormAttrs, ins: list[Shape], out: Shape) -> nn.Module:
    cls = ChannelLayerNorm if len(ins[0]) == 3 else nn.LayerNorm
    return cls(ins[0][_layer_norm_axis(ins[0])], eps=a.eps, elementwise_affine=a.affine)


def _group_norm_shape(a: GroupNormAttrs, ins: list[Shape]) -> Shape:
    _require_rank(ins[0], [3, 2])
    if ins[0][0] % a.num_groups:
        raise ShapeError(
            f"channels {ins[0][0]} are not divisible by num_groups={a.num_groups}", "num_groups"
        )
    return ins[0]


# ---- pooling ----------------------------------------------------------------------------------


def _pool_shape(a: PoolAttrs, ins: list[Shape]) -> Shape:
    (x,) = ins
    _require_rank(x, [3])
    for i in range(2):
        if a.padding[i] * 2 > a.kernel_size[i]:
            raise ShapeError(
                f"padding {list(a.padding)} must be at most half of kernel_size "
                f"{list(a.kernel_size)}", "padding"
            )
    stride = a.stride or a.kernel_size
    oh, ow = _spatial(a, x[1], x[2], ceil_mode=a.ceil_mode, stride=stride)
    return (x[0], oh, ow)


def _pool_channels_last(x: torch.Tensor, pool: Callable[[torch.Tensor], torch.Tensor]
                        ) -> torch.Tensor:
    """``pool(x)``, computed channels-last when ``x`` is a contiguous NCHW tensor on the CPU.

    PyTorch's NCHW pooling kernels on the CPU are 3-5x slower than its channels-last ones
    (a 3x3 stride-1 max pool: 174 against 51 ms with both layout copies, batch 100 x 64 x
    28 x 28, one thread), and in the scored networks of the cells space pooling took as long as
    every convolution together. The two kernels give bit-identical results (each output is the
    max or mean of the same window in the same order; tests/test_graph_pooling.py), so
    scores and downloaded checkpoints are unchanged; the output is NCHW again for the next op.
    Only without autograd (scoring): with it, GHN training's results moved in the last bits
    (tests/test_distributed_training.py compares runs exactly), so training keeps PyTorch's
    own kernels.
    """
    if (x.device.type != "cpu" or x.dim() != 4 or not x.is_contiguous()
            or (x.requires_grad and torch.is_grad_enabled())):
        return pool(x)
    return pool(x.contiguous(memory_format=torch.channels_last)).contiguous()


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d``, pooled channels-last on the CPU (:func:`_pool_channels_last`)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _pool_channels_last(input, super().forward)


class AvgPool2d(nn.AvgPool2d):
    """``nn.AvgPool2d``, pooled channels-last on the CPU (:func:`_pool_channels_last`)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _pool_channels_last(input, super().forward)


def _max_pool_build(a: PoolAttrs, ins: list[Shape], out: Shape) -> nn.Module:
    return MaxPool2d(a.kernel_size, a.stride or a.kernel_size, a.padding, ceil_mode=a.ceil_mode)


def _avg_pool_build(a: AvgPoolAttrs, ins: list[Shape], out: Shape) -> nn.Module:
    return AvgPool2d(a.kernel_size, a.stride or a.kernel_size, a.padding,
                     ceil_mode=a.ceil_mode, count_include_pad=a.count_include_pad)


def _adaptive_shape(a: AdaptivePoolAttrs, ins: list[Shape]) -> Shape:
    _require_rank(ins[0], [3])
    return (ins[0][0], *a.output_size)


def _global_avg_shape(a: GlobalPoolAttrs, ins: list[Shape]) -> Shape:
    (x,) = ins
    _require_rank(x, [3, 2])
    if len(x) == 2:
        if a.keepdim:
            raise ShapeError("keepdim applies to (C, H, W) feature maps only", "keepdim")
        return (x[1],)
    return (x[0], 1, 1) if a.keepdim else (x[0],)


def _global_max_shape(a: GlobalPoolAttrs, ins: list[Shape]) -> Shape:
    _require_rank(ins[0], [3])
    return _global_avg_shape(a, ins)


# ---- element-wise and structural ---------------------------------------------------------------


def _broadcast_shape(a: Attrs, ins: list[Shape]) -> Shape:
    """PyTorch broadcasting of per-sample shapes (the batch dimension is shared)."""
    rank = max(len(s) for s in ins)
    if any(len(s) != rank for s in ins):
        raise ShapeError(
            "inputs must have the same rank, got shapes " + ", ".join(str(list(s)) for s in ins)
        )
    out = []
    for dims in zip(*ins, strict=True):
        sizes = {d for d in dims if d != 1}
        if len(sizes) > 1:
            raise ShapeError(
                "input shapes do not match (nor broadcast): "
                + ", ".join(str(list(s)) for s in ins)
            )
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def _concat_shape(a: ConcatAttrs, ins: list[Shape]) -> Shape:
    rank = len(ins[0])
    if any(len(s) != rank for s in ins):
        raise ShapeError(
            "inputs must have the same rank, got shapes " + ", ".join(str(list(s)) for s in ins)
        )
    axis = a.axis + rank if a.axis < 0 else a.axis
    if not 0 <= axis < rank:
        raise ShapeError(f"axis {a.axis} is out of range for rank-{rank} inputs", "axis")
    for s in ins[1:]:
        if any(s[i] != ins[0][i] for i in range(rank) if i != axis):
            raise ShapeError(
                f"inputs must match on every axis but {axis}, got shapes "
                + ", ".join(str(list(s)) for s in ins)
            )
    out = list(ins[0])
    out[axis] = sum(s[axis] for s in ins)
    return tuple(out)


def _same_shape(a: Attrs, ins: list[Shape]) -> Shape:
    return ins[0]


def _flatten_shape(a: Attrs, ins: list[Shape]) -> Shape:
    return (math.prod(ins[0]),)


# ---- transformer pieces -----------------------------------------------------------------------


def _patch_embed_shape(a: PatchEmbedAttrs, ins: list[Shape]) -> Shape:
    (x,) = ins
    _require_rank(x, [3])
    ph, pw = a.patch_size
    if x[1] < ph or x[2] < pw:
        raise ShapeError(
            f"patch_size {list(a.patch_size)} is larger than the input {x[1]}x{x[2]}", "patch_size"
        )
    return ((x[1] // ph) * (x[2] // pw), a.embed_dim)


def _patch_embed_params(a: PatchEmbedAttrs, ins: list[Shape], out: Shape) -> dict[str, Shape]:
    p = {"weight": (a.embed_dim, ins[0][0], *a.patch_size)}
    if a.bias:
        p["bias"] = (a.embed_dim,)
    return p


def _tokens_shape(a: Attrs, ins: list[Shape]) -> Shape:
    _require_rank(ins[0], [3])
    c, h, w = ins[0]
    return (h * w, c)


def _class_token_shape(a: Attrs, ins: list[Shape]) -> Shape:
    _require_rank(ins[0], [2])
    return (ins[0][0] + 1, ins[0][1])


def _pos_embed_shape(a: Attrs, ins: list[Shape]) -> Shape:
    _require_rank(ins[0], [2])
    return ins[0]


def _attention_dims(x: Shape) -> tuple[int, int]:
    """(tokens, width) of an attention input."""
    return (x[1] * x[2], x[0]) if len(x) == 3 else (x[0], x[1])


def _attention_shape(a: AttentionAttrs, ins: list[Shape]) -> Shape:
    (x,) = ins
    _require_rank(x, [2, 3])
    _, d = _attention_dims(x)
    if d % a.num_heads:
        raise ShapeError(f"width {d} is not divisible by num_heads={a.num_heads}", "num_heads")
    return x


def _attention_params(a: AttentionAttrs, ins: list[Shape], out: Shape) -> dict[str, Shape]:
    _, d = _attention_dims(ins[0])
    p: dict[str, Shape] = {"in_proj_weight": (3 * d, d)}
    if a.bias:
        p["in_proj_bias"] = (3 * d,)
    p["out_proj.weight"] = (d, d)
    if a.bias:
        p["out_proj.bias"] = (d,)
    return p


def _attention_flops(a: AttentionAttrs, ins: list[Shape], out: Shape) -> int:
    t, d = _attention_dims(ins[0])
    return t * d * 3 * d + 2 * t * t * d + t * d * d


def _select_token_shape(a: SelectTokenAttrs, ins: list[Shape]) -> Shape:
    _require_rank(ins[0], [2])
    t = ins[0][0]
    if not -t <= a.index < t:
        raise ShapeError(f"index {a.index} is out of range for {t} tokens", "index")
    return (ins[0][1],)


# ---- layers of real models ---------------------------------------------------------------------


def _axis(axis: int, shape: Shape) -> int:
    rank = len(shape)
    if not -rank <= axis < rank:
        raise ShapeError(f"axis {axis} is out of range for a rank-{rank} input", "axis")
    return axis % rank


def _scale_shape(a: ScaleAttrs, ins: list[Shape]) -> Shape:
    _axis(a.axis, ins[0])
    return ins[0]


def _slice_shape(a: SliceAttrs, ins: list[Shape]) -> Shape:
    (x,) = ins
    axis = _axis(a.axis, x)
    if a.end > x[axis]:
        raise ShapeError(f"end {a.end} is beyond the size {x[axis]} of axis {a.axis}", "end")
    if a.start >= a.end:
        raise ShapeError(f"start {a.start} must be below end {a.end}", "start")
    out = list(x)
    out[axis] = len(range(a.start, a.end, a.step))
    return tuple(out)


def _upsample_shape(a: UpsampleAttrs, ins: list[Shape]) -> Shape:
    _require_rank(ins[0], [3])
    if a.align_corners and a.mode not in ("bilinear", "bicubic"):
        raise ShapeError(f"align_corners applies to bilinear and bicubic only, not {a.mode!r}",
                         "align_corners")
    return (ins[0][0], *a.size)


def _upsample_build(a: UpsampleAttrs, ins: list[Shape], out: Shape) -> nn.Module:
    corners = a.align_corners if a.mode in ("bilinear", "bicubic") else None
    return nn.Upsample(size=a.size, mode=a.mode, align_corners=corners)


def _conv1d_shape(a: Conv1dAttrs, ins: list[Shape]) -> Shape:
    (x,) = ins
    _require_rank(x, [2])
    c, length = x
    if c % a.groups or a.out_channels % a.groups:
        raise ShapeError(f"input channels {c} and out_channels {a.out_channels} must be "
                         f"divisible by groups={a.groups}", "groups")
    out = _window_out(length, a.kernel_size, a.stride, a.padding, a.dilation)
    if out < 1:
        raise ShapeError(f"length collapses to {out} (input {length}, kernel {a.kernel_size}, "
                         f"stride {a.stride}, padding {a.padding}, dilation {a.dilation})",
                         "kernel_size")
    return (a.out_channels, out)


def _conv1d_params(a: Conv1dAttrs, ins: list[Shape], out: Shape) -> dict[str, Shape]:
    p = {"weight": (a.out_channels, ins[0][0] // a.groups, a.kernel_size)}
    if a.bias:
        p["bias"] = (a.out_channels,)
    return p


def _conv_transpose_shape(a: ConvTranspose2dAttrs, ins: list[Shape]) -> Shape:
    (x,) = ins
    _require_rank(x, [3])
    c, h, w = x
    if c % a.groups or a.out_channels % a.groups:
        raise ShapeError(f"input channels {c} and out_channels {a.out_channels} must be "
                         f"divisible by groups={a.groups}", "groups")
    size = []
    for i, n in enumerate((h, w)):
        if a.output_padding[i] >= max(a.stride[i], a.dilation[i]):
            raise ShapeError(f"output_padding {list(a.output_padding)} must be below stride or "
                             "dilation", "output_padding")
        size.append((n - 1) * a.stride[i] - 2 * a.padding[i]
                    + a.dilation[i] * (a.kernel_size[i] - 1) + a.output_padding[i] + 1)
    if min(size) < 1:
        raise ShapeError(f"spatial size collapses to {size[0]}x{size[1]}", "padding")
    return (a.out_channels, *size)


def _conv_transpose_params(a: ConvTranspose2dAttrs, ins: list[Shape],
                           out: Shape) -> dict[str, Shape]:
    p = {"weight": (ins[0][0], a.out_channels // a.groups, *a.kernel_size)}
    if a.bias:
        p["bias"] = (a.out_channels,)
    return p


def _conv_transpose_build(a: ConvTranspose2dAttrs, ins: list[Shape], out: Shape) -> nn.Module:
    return nn.ConvTranspose2d(ins[0][0], a.out_channels, a.kernel_size, a.stride, a.padding,
                              a.output_padding, a.groups, a.bias, a.dilation)


def _std_conv_build(a: StdConv2dAttrs, ins: list[Shape], out: Shape) -> nn.Module:
    return StdConv2d(ins[0][0], a.out_channels, a.kernel_size, a.stride, a.padding,
                     a.dilation, a.groups, a.bias, eps=a.eps)


def _prelu_params(a: PReluAttrs, ins: list[Shape], out: Shape) -> dict[str, Shape]:
    return {"weight": (ins[0][0] if a.channelwise else 1,)}


_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def _recurrent_shape(a: RecurrentAttrs, ins: list[Shape]) -> Shape:
    _require_rank(ins[0], [2])
    return (ins[0][0], a.hidden_size * (2 if a.bidirectional else 1))


def _recurrent_params(a: RecurrentAttrs, ins: list[Shape], out: Shape) -> dict[str, Shape]:
    """``torch.nn.LSTM``/``GRU``/``RNN`` names, in their order."""
    gates, h = _GATES[a.mode] * a.hidden_size, a.hidden_size
    directions = ("", "_reverse") if a.bidirectional else ("",)
    p: dict[str, Shape] = {}
    for layer in range(a.num_layers):
        width = ins[0][1] if layer == 0 else h * len(directions)
        for d in directions:
            p[f"weight_ih_l{layer}{d}"] = (gates, width)
            p[f"weight_hh_l{layer}{d}"] = (gates, h)
            if a.bias:
                p[f"bias_ih_l{layer}{d}"] = (gates,)
                p[f"bias_hh_l{layer}{d}"] = (gates,)
    return p


def _recurrent_flops(a: RecurrentAttrs, ins: list[Shape], out: Shape) -> int:
    steps = ins[0][0]
    return steps * sum(math.prod(s) for k, s in _recurrent_params(a, ins, out).items()
                       if k.startswith("weight"))


def _recurrent_build(a: RecurrentAttrs, ins: list[Shape], out: Shape) -> nn.Module:
    kwargs: dict[str, Any] = {"num_layers": a.num_layers, "bias": a.bias, "batch_first": True,
                              "dropout": a.dropout, "bidirectional": a.bidirectional}
    if a.mode == "lstm":
        return LSTMOutput(ins[0][1], a.hidden_size, **kwargs)
    if a.mode == "gru":
        return GRUOutput(ins[0][1], a.hidden_size, **kwargs)
    return RNNOutput(ins[0][1], a.hidden_size, nonlinearity=a.mode[4:], **kwargs)


# ---- recurrent highway and hyper cells (nas_service.sequence.cells) -----------------------------


def _cell_shape(a: Any, ins: list[Shape]) -> Shape:
    _require_rank(ins[0], [2])
    return (ins[0][0], a.hidden_size)


def _rhn_params(input_size: int, hidden: int, depth: int, layer_norm: bool,
                prefix: str = "") -> dict[str, Shape]:
    """:class:`RHNCell`'s parameters in ``state_dict`` order (its own, then its children's)."""
    p = {f"{prefix}recurrent_weight": (depth, hidden, 2 * hidden),
         f"{prefix}recurrent_bias": (depth, 2 * hidden),
         f"{prefix}input_proj.weight": (2 * hidden, input_size)}
    if layer_norm:
        for layer in range(depth):
            p[f"{prefix}norms.{layer}.weight"] = (2, hidden)
            p[f"{prefix}norms.{layer}.bias"] = (2, hidden)
    return p


def _hyper_scales_params(prefix: str, hyper: int, groups: int, size: int,
                         embedding: int) -> dict[str, Shape]:
    return {f"{prefix}project": (groups, embedding, size),
            f"{prefix}embed.weight": (groups * embedding, hyper),
            f"{prefix}embed.bias": (groups * embedding,)}


def _rhn_layer_params(a: RHNAttrs, ins: list[Shape], out: Shape) -> dict[str, Shape]:
    return _rhn_params(ins[0][1], a.hidden_size, a.depth, a.layer_norm)


def _hyper_lstm_params(a: HyperLSTMAttrs, ins: list[Shape], out: Shape) -> dict[str, Shape]:
    H, N, D = a.hidden_size, a.hyper_size, ins[0][1]
    p: dict[str, Shape] = {
        "recurrent_weight": (H, 4 * H), "bias": (4 * H,), "hyper_recurrent_weight": (N, 4 * N),
        "input_proj.weight": (4 * H, D),
        "hyper_input_proj.weight": (4 * N, D), "hyper_input_proj.bias": (4 * N,),
        "hyper_state_proj.weight": (4 * N, H),
        **_hyper_scales_params("scales.", N, 3, 4 * H, a.hyper_embedding_size)}
    if a.layer_norm:
        p.update({"norm.weight": (4, H), "norm.bias": (4, H), "cell_norm.weight": (H,),
                  "cell_norm.bias": (H,), "hyper_norm.weight": (4, N), "hyper_norm.bias": (4, N)})
    return p


def _hyper_rhn_params(a: HyperRHNAttrs, ins: list[Shape], out: Shape) -> dict[str, Shape]:
    H, N, D = a.hidden_size, a.hyper_size, ins[0][1]
    p = {**_rhn_params(D, H, a.depth, a.layer_norm, "main."),
         **_rhn_params(D + H, N, a.depth, a.layer_norm, "hyper.")}
    for layer in range(a.depth):
        p.update(_hyper_scales_params(f"scales.{layer}.", N, 3 if layer == 0 else 2, 2 * H,
                                      a.hyper_embedding_size))
    return p


def _cell_flops(params: Callable[[Any, list[Shape], Shape], dict[str, Shape]]
                ) -> Callable[[Any, list[Shape], Shape], int]:
    """Every weight matrix (and stack of matrices) is multiplied once per time step; the
    biases and the layer norms' gains are added or multiplied element-wise."""
    def flops(a: Any, ins: list[Shape], out: Shape) -> int:
        return ins[0][0] * sum(math.prod(s) for k, s in params(a, ins, out).items()
                               if len(s) >= 2 and "norm" not in k and not k.endswith("bias"))
    return flops


def _embedding_shape(a: EmbeddingAttrs, ins: list[Shape]) -> Shape:
    _require_rank(ins[0], [1])
    return (ins[0][0], a.embedding_dim)


def _pad_shape(a: PadAttrs, ins: list[Shape]) -> Shape:
    (x,) = ins
    _require_rank(x, [3, 2])
    if len(a.padding) % 2 or len(a.padding) // 2 > len(x) - 1:
        raise ShapeError(f"padding {a.padding} must pad 1 axis (2 values) of a (C, L) "
                         "sequence, or 1 or 2 axes (2 or 4 values) of a map", "padding")
    if a.mode != "constant" and len(a.padding) != 2 * (len(x) - 1):
        raise ShapeError(f"{a.mode} padding pads every axis but the channels: "
                         f"{2 * (len(x) - 1)} values", "padding")
    if a.value != 0.0 and a.mode != "constant":
        raise ShapeError(f"value applies to constant padding only, not {a.mode!r}", "value")
    out = list(x)
    for i in range(len(a.padding) // 2):
        before, after = a.padding[2 * i], a.padding[2 * i + 1]
        axis = len(x) - 1 - i
        if a.mode in ("reflect", "circular") and max(before, after) >= x[axis] + (
                a.mode == "circular"):
            raise ShapeError(f"{a.mode} padding {a.padding} must be below the size "
                             f"{x[axis]} it pads", "padding")
        out[axis] += before + after
    return tuple(out)


def _reshape_shape(a: ReshapeAttrs, ins: list[Shape]) -> Shape:
    if math.prod(a.shape) != math.prod(ins[0]):
        raise ShapeError(f"cannot reshape {list(ins[0])} ({math.prod(ins[0])} elements) to "
                         f"{a.shape}", "shape")
    return tuple(a.shape)


def _permute_shape(a: PermuteAttrs, ins: list[Shape]) -> Shape:
    if sorted(a.dims) != list(range(len(ins[0]))):
        raise ShapeError(f"dims {a.dims} is not a permutation of the {len(ins[0])} axes of "
                         f"{list(ins[0])}", "dims")
    return tuple(ins[0][d] for d in a.dims)


def _opaque_build(a: OpaqueAttrs, ins: list[Shape], out: Shape) -> nn.Module:
    raise ValueError(f"an opaque node cannot be built ({a.label or 'no label'})")


def _input_shape(a: InputAttrs, ins: list[Shape]) -> Shape:
    return tuple(a.shape)


def _output_shape(a: OutputAttrs, ins: list[Shape]) -> Shape:
    (x,) = ins
    if a.task == "next_token":
        if len(x) != 2 or x[1] != a.num_classes:
            raise ShapeError(
                f"a next_token output's input must be (T, num_classes={a.num_classes}) logits, "
                f"one vector per token, got shape {list(x)}", "num_classes")
        return x
    if x != (a.num_classes,):
        raise ShapeError(
            f"the output's input must be a vector of num_classes={a.num_classes} logits, "
            f"got shape {list(x)}", "num_classes"
        )
    return x


def _activation(name: str, make: Callable[[Any], nn.Module], attrs: type[Attrs] = NoAttrs,
                description: str = "") -> OpSpec:
    return OpSpec(name, "activation", attrs, 1, 1, _same_shape,
                  lambda a, i, o: make(a), description=description)


def _module(cls: Callable[[], nn.Module]) -> Callable[[Any, list[Shape], Shape], nn.Module]:
    return lambda a, i, o: cls()


_OPS: list[OpSpec] = [
    OpSpec("input", "io", InputAttrs, 0, 0, _input_shape, _module(nn.Identity),
           description="The network's input; `shape` is one sample's shape."),
    OpSpec("output", "io", OutputAttrs, 1, 1, _output_shape, _module(nn.Identity),
           description="The network's logits; its input must be a vector of `num_classes`."),
    OpSpec("conv2d", "conv", Conv2dAttrs, 1, 1, _conv_shape, _conv_build, _conv_params,
           _conv_flops, "2-D convolution: any kernel, stride, padding, dilation and groups."),
    OpSpec("linear", "linear", LinearAttrs, 1, 1, _linear_shape,
           lambda a, i, o: nn.Linear(i[0][-1], a.out_features, a.bias), _linear_params,
           lambda a, i, o: math.prod(o) * i[0][-1],
           "Fully connected layer over the last axis."),
    OpSpec("batch_norm", "norm", BatchNormAttrs, 1, 1, _batch_norm_shape, _batch_norm_build,
           _affine_params, description="Batch norm over axis 0: channels of a map or a (C, L) sequence, "
           "features of a vector."),
    OpSpec("layer_norm", "norm", LayerNormAttrs, 1, 1, _same_shape, _layer_norm_build,
           lambda a, i, o: _affine_params(a, i, o, _layer_norm_axis(i[0])),
           description="Layer norm over the last axis (over channels for a feature map)."),
    OpSpec("group_norm", "norm", GroupNormAttrs, 1, 1, _group_norm_shape,
           lambda a, i, o: nn.GroupNorm(a.num_groups, i[0][0], a.eps, a.affine), _affine_params,
           description="Group norm over channel groups of a map or a (C, L) sequence."),
    _activation("relu", lambda a: nn.ReLU()),
    _activation("relu6", lambda a: nn.ReLU6()),
    _activation("leaky_relu", lambda a: nn.LeakyReLU(a.negative_slope), LeakyReluAttrs),
    _activation("elu", lambda a: nn.ELU(a.alpha), EluAttrs),
    _activation("gelu", lambda a: nn.GELU(a.approximate), GeluAttrs),
    _activation("silu", lambda a: nn.SiLU()),
    _activation("mish", lambda a: nn.Mish()),
    _activation("tanh", lambda a: nn.Tanh()),
    _activation("sigmoid", lambda a: nn.Sigmoid()),
    _activation("hardswish", lambda a: nn.Hardswish()),
    _activation("hardsigmoid", lambda a: nn.Hardsigmoid()),
    OpSpec("max_pool", "pool", PoolAttrs, 1, 1, _pool_shape, _max_pool_build,
           description="Max pooling; `stride` defaults to `kernel_size`."),
    OpSpec("avg_pool", "pool", AvgPoolAttrs, 1, 1, _pool_shape, _avg_pool_build,
           description="Average pooling; `stride` defaults to `kernel_size`."),
    OpSpec("adaptive_avg_pool", "pool", AdaptivePoolAttrs, 1, 1, _adaptive_shape,
           lambda a, i, o: nn.AdaptiveAvgPool2d(a.output_size),
           description="Average pooling to a fixed `output_size`."),
    OpSpec("global_avg_pool", "pool", GlobalPoolAttrs, 1, 1, _global_avg_shape,
           lambda a, i, o: GlobalPool("avg", a.keepdim, len(i[0])),
           description="Mean over all positions of a map, or over the tokens of a sequence."),
    OpSpec("global_max_pool", "pool", GlobalPoolAttrs, 1, 1, _global_max_shape,
           lambda a, i, o: GlobalPool("max", a.keepdim, 3),
           description="Max over all positions of a feature map."),
    OpSpec("add", "merge", NoAttrs, 2, None, _broadcast_shape, _module(Add),
           description="Element-wise sum of two or more inputs (PyTorch broadcasting)."),
    OpSpec("mul", "merge", NoAttrs, 2, None, _broadcast_shape, _module(Mul),
           description="Element-wise product (squeeze-excitation gates: (C,H,W) * (C,1,1))."),
    OpSpec("concat", "merge", ConcatAttrs, 1, None, _concat_shape,
           lambda a, i, o: Concat((a.axis % len(i[0])) + 1),
           description="Concatenation along `axis` of the per-sample shape (0 = channels)."),
    OpSpec("flatten", "shape", NoAttrs, 1, 1, _flatten_shape, _module(nn.Flatten),
           description="Flattens one sample to a vector."),
    OpSpec("dropout", "regularise", DropoutAttrs, 1, 1, _same_shape,
           lambda a, i, o: nn.Dropout(a.p), description="Dropout with probability `p`."),
    OpSpec("identity", "shape", NoAttrs, 1, 1, _same_shape, _module(nn.Identity),
           description="Passes its input through (skip connections)."),
    OpSpec("patch_embed", "transformer", PatchEmbedAttrs, 1, 1, _patch_embed_shape,
           lambda a, i, o: PatchEmbed(i[0][0], a.embed_dim, a.patch_size, a.patch_size,
                                      bias=a.bias),
           _patch_embed_params,
           lambda a, i, o: math.prod(o) * i[0][0] * a.patch_size[0] * a.patch_size[1],
           "Non-overlapping patches projected to `embed_dim` tokens (ViT)."),
    OpSpec("to_tokens", "shape", NoAttrs, 1, 1, _tokens_shape, _module(ToTokens),
           description="Every position of a (C,H,W) map becomes a token: (H*W, C)."),
    OpSpec("class_token", "transformer", NoAttrs, 1, 1, _class_token_shape,
           lambda a, i, o: ClassToken(i[0][1]), lambda a, i, o: {"weight": (1, 1, i[0][1])},
           description="Prepends a learned class token."),
    OpSpec("pos_embed", "transformer", NoAttrs, 1, 1, _pos_embed_shape,
           lambda a, i, o: PositionalEmbedding(*i[0]), lambda a, i, o: {"weight": (1, *i[0])},
           description="Adds a learned positional embedding."),
    OpSpec("self_attention", "transformer", AttentionAttrs, 1, 1, _attention_shape,
           lambda a, i, o: MultiHeadSelfAttention(_attention_dims(i[0])[1], a.num_heads, a.bias,
                                                  a.dropout),
           _attention_params, _attention_flops,
           "Multi-head self-attention over tokens, or over the positions of a feature map."),
    OpSpec("select_token", "transformer", SelectTokenAttrs, 1, 1, _select_token_shape,
           lambda a, i, o: SelectToken(a.index),
           description="Picks one token (the class token at `index` 0)."),
    OpSpec("scale", "merge", ScaleAttrs, 1, 1, _scale_shape,
           lambda a, i, o: Scale(i[0][a.axis], a.axis % len(i[0]), len(i[0])),
           lambda a, i, o: {"weight": (i[0][a.axis],)},
           description="Multiplies by a learned vector along `axis` (layer scale).",
           stand_in="mul"),
    OpSpec("slice", "shape", SliceAttrs, 1, 1, _slice_shape,
           lambda a, i, o: Slice(a.axis % len(i[0]), a.start, a.end, a.step),
           description="Keeps `start:end:step` of one axis (channel split, dropping a token).",
           stand_in="identity"),
    OpSpec("upsample", "pool", UpsampleAttrs, 1, 1, _upsample_shape, _upsample_build,
           description="Resizes a feature map to `size` (nearest or bilinear interpolation).",
           stand_in="adaptive_avg_pool"),
    OpSpec("conv1d", "conv", Conv1dAttrs, 1, 1, _conv1d_shape,
           lambda a, i, o: nn.Conv1d(i[0][0], a.out_channels, a.kernel_size, a.stride,
                                     a.padding, a.dilation, a.groups, a.bias),
           _conv1d_params, lambda a, i, o: math.prod(o) * (i[0][0] // a.groups) * a.kernel_size,
           "1-D convolution over a (C, L) sequence.", stand_in="conv2d"),
    OpSpec("conv_transpose2d", "conv", ConvTranspose2dAttrs, 1, 1, _conv_transpose_shape,
           _conv_transpose_build, _conv_transpose_params,
           lambda a, i, o: math.prod(i[0]) * (a.out_channels // a.groups) * a.kernel_size[0]
           * a.kernel_size[1],
           "Transposed 2-D convolution (learned upsampling).", stand_in="conv2d"),
    OpSpec("std_conv2d", "conv", StdConv2dAttrs, 1, 1, _conv_shape, _std_conv_build,
           _conv_params, _conv_flops,
           "2-D convolution whose filters are standardised before use (weight standardisation).",
           stand_in="conv2d"),
    OpSpec("prelu", "activation", PReluAttrs, 1, 1, _same_shape,
           lambda a, i, o: nn.PReLU(i[0][0] if a.channelwise else 1), _prelu_params,
           description="Leaky ReLU with learned slopes (per channel, or one shared).",
           stand_in="leaky_relu"),
    OpSpec("recurrent", "sequence", RecurrentAttrs, 1, 1, _recurrent_shape, _recurrent_build,
           _recurrent_params, _recurrent_flops,
           "LSTM, GRU or Elman RNN over (T, D) tokens; the output sequence.",
           stand_in="linear"),
    OpSpec("embedding", "sequence", EmbeddingAttrs, 1, 1, _embedding_shape,
           lambda a, i, o: nn.Embedding(a.num_embeddings, a.embedding_dim),
           lambda a, i, o: {"weight": (a.num_embeddings, a.embedding_dim)},
           description="A learned vector per integer id: (T,) ids -> (T, D).",
           stand_in="pos_embed"),
    OpSpec("pad", "shape", PadAttrs, 1, 1, _pad_shape,
           lambda a, i, o: Pad(a.padding, a.mode, a.value),
           description="Pads the last axes of a map or (C, L) sequence (F.pad).",
           stand_in="identity"),
    OpSpec("sub", "merge", NoAttrs, 2, 2, _broadcast_shape, _module(Sub),
           description="Element-wise difference of two inputs (PyTorch broadcasting).",
           stand_in="add"),
    OpSpec("reshape", "shape", ReshapeAttrs, 1, 1, _reshape_shape,
           lambda a, i, o: Reshape(a.shape),
           description="Reshapes one sample, row-major (the batch stays first).",
           stand_in="flatten"),
    OpSpec("permute", "shape", PermuteAttrs, 1, 1, _permute_shape,
           lambda a, i, o: Permute(a.dims),
           description="Permutes the axes of one sample (token mixing, channel shuffles).",
           stand_in="identity"),
    OpSpec("opaque", "opaque", OpaqueAttrs, 1, None, lambda a, i: tuple(a.shape), _opaque_build,
           lambda a, i, o: {k: tuple(v) for k, v in a.parameters.items()},
           description="A computation nas-graph/1 cannot express exactly: its inputs, output "
           "shape and parameters; cannot be built."),
    OpSpec("rhn", "sequence", RHNAttrs, 1, 1, _cell_shape,
           lambda a, i, o: RHNLayer(i[0][1], a.hidden_size, a.depth, layer_norm=a.layer_norm),
           _rhn_layer_params, _cell_flops(_rhn_layer_params),
           "Recurrent highway network layer (depth highway layers per step) over (T, D) "
           "tokens; the output sequence.", stand_in="recurrent"),
    OpSpec("hyper_lstm", "sequence", HyperLSTMAttrs, 1, 1, _cell_shape,
           lambda a, i, o: HyperLSTMLayer(i[0][1], a.hidden_size, a.hyper_size,
                                          hyper_embedding_size=a.hyper_embedding_size,
                                          layer_norm=a.layer_norm),
           _hyper_lstm_params, _cell_flops(_hyper_lstm_params),
           "HyperLSTM layer: an LSTM whose pre-activations a small LSTM scales per unit and "
           "per step; the output sequence.", stand_in="recurrent"),
    OpSpec("hyper_rhn", "sequence", HyperRHNAttrs, 1, 1, _cell_shape,
           lambda a, i, o: HyperRHNLayer(i[0][1], a.hidden_size, a.depth, a.hyper_size,
                                         hyper_embedding_size=a.hyper_embedding_size,
                                         layer_norm=a.layer_norm),
           _hyper_rhn_params, _cell_flops(_hyper_rhn_params),
           "Recurrent highway hypernetwork layer: an RHN whose pre-activations a small RHN "
           "scales per unit, depth and step; the output sequence.", stand_in="recurrent"),
]

OPS: dict[str, OpSpec] = {op.name: op for op in _OPS}
OP_NAMES: tuple[str, ...] = tuple(op.name for op in _OPS)
ACTIVATIONS: tuple[str, ...] = tuple(op.name for op in _OPS if op.category == "activation")
