"""The abstract values a conversion computes with, in place of tensors.

What a value can be while converting:

* a tensor computed by the graph (:class:`_Tensor`), possibly seen through a pending reshape or a
  channels-last permute that only a later call resolves (``x.flatten(2).transpose(1, 2)`` is a
  ``to_tokens``, and a ``to_tokens`` of a patch-sized strided convolution is a ``patch_embed``);
* a parameter or buffer of the module (:class:`_Param`, from ``get_attr``: class tokens,
  positional embeddings, weights of functional calls);
* sizes: Python ints, or :data:`_BATCH`, the symbolic batch size (``x.size(0)``, ``x.shape[0]``);
* the ``(output, weights)`` pair of ``nn.MultiheadAttention`` (:class:`_AttentionResult`);
* when a forward pass is recorded (:mod:`.recorder`): a tensor computed from parameters and
  constants only (:class:`_Derived`: a standardised weight, a sliced positional embedding), and a
  tensor the graph cannot hold (:class:`_Pending`: its batch is not its first dimension, or one
  sample has more than three dimensions), which becomes an ``opaque`` node where a computation
  leaves such tensors behind.

All are immutable: a rule makes a new value rather than changing one it was given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..ops import Shape


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
    tensor: torch.Tensor = field(repr=False)  # messages quote values: no tensor printing
    batched: bool = False

    def full_shape(self) -> tuple[Any, ...]:
        shape = tuple(self.tensor.shape)
        return (_BATCH, *shape[1:]) if self.batched else shape


@dataclass(frozen=True, slots=True)
class _AttentionResult:
    """``nn.MultiheadAttention`` returns ``(output, weights)``; only the output is a graph value."""

    output: _Tensor


def _not_plain(t: _Tensor) -> str:
    """Why a rule cannot take ``t`` as it is seen (a pending view), as an error message says it."""
    if t.nhwc:
        return ("its input is a channels-last permute (x.permute(0, 2, 3, 1)) of a map, which "
                "nas-graph/1 only supports around LayerNorm over channels")
    return (f"its input is a {list(t.phys or ())} reshape of a {list(t.shape or ())} tensor, "
            "which nas-graph/1 cannot express")


@dataclass(frozen=True, slots=True)
class _Derived:
    """A tensor computed from the module's parameters and constants only, not from the input.

    ``leaves`` are the parameters it was computed from (``(name, parameter)``)."""

    tensor: torch.Tensor = field(repr=False)
    leaves: tuple[tuple[str, torch.Tensor], ...] = field(repr=False)

    def __repr__(self) -> str:
        return f"a tensor computed from {[name for name, _ in self.leaves] or 'constants'}"


@dataclass(frozen=True, slots=True)
class _Pending:
    """A recorded tensor the graph cannot hold: computed from graph nodes ``deps`` and from
    parameters ``params``, by the calls ``labels``; an ``opaque`` node takes them over once a
    computation returns to a tensor of batch-first shape."""

    deps: tuple[str, ...]
    params: tuple[tuple[str, torch.Tensor], ...] = field(repr=False)
    labels: tuple[str, ...] = field(repr=False)

    def __repr__(self) -> str:
        return "a tensor whose batch is not its first dimension"
