"""Reading the arguments of a call: what a rule may assume about each one, or why it refuses.

Each helper returns the argument in the form a rule needs (a :class:`_Tensor`, a constant
``int``, a normalised dimension, a pair) or raises :class:`_Unsupported` with a message for the
user. ``_bind`` matches ``args``/``kwargs`` against a ``_sig_*`` function that mirrors the torch
signature, so positional and keyword forms of one call convert alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .errors import _Unsupported
from .values import _not_plain, _Param, _Tensor


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
