"""Target networks: the networks whose weights a hypernetwork generates or a baseline trains.

Both are ordinary modules with a shared trunk and one output head per task, so the same class
serves a baseline (``heads = number of tasks``, trained directly) and a hypernetwork (``heads =
1``: every task gets its own complete set of generated weights, head included, and the module's
own parameters only declare the shapes). A hypernetwork runs them with generated weights through
:func:`torch.func.functional_call`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .errors import ContinualError

__all__ = ["TargetCNN", "TargetMLP", "TargetNetwork", "parameter_shapes"]


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ContinualError(f"{name} must be a positive int, got {value!r}")
    return value


class TargetNetwork(nn.Module):
    """A trunk shared by all tasks and ``heads`` linear output heads.

    Shapes:
        ``forward(x, task)``: ``x`` ``(B, *input_shape)`` → logits ``(B, classes)`` of head
        ``task`` (``0 <= task < heads``).
    """

    input_shape: tuple[int, ...]
    classes: int

    def __init__(self, trunk: nn.Module, features: int, classes: int, heads: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.classes = _positive("classes", classes)
        self.heads = nn.ModuleList(nn.Linear(features, classes) for _ in range(
            _positive("heads", heads)))

    def forward(self, x: torch.Tensor, task: int = 0) -> torch.Tensor:
        if not 0 <= task < len(self.heads):
            raise ContinualError(f"task {task} has no head: the network has {len(self.heads)}")
        return self.heads[task](self.trunk(x))


class TargetMLP(TargetNetwork):
    """A fully connected network ``in → hidden[0] → … → hidden[-1] → classes`` with ReLUs.

    The paper's Split-MNIST target is ``784-400-400``; ``784-100-100`` is its small setting and
    this project's default. Input images of any shape are flattened.
    """

    def __init__(self, input_shape: Sequence[int], classes: int, *,
                 hidden: Sequence[int] = (100, 100), heads: int = 1) -> None:
        shape = tuple(_positive("input_shape entry", int(s)) for s in input_shape)
        if not shape:
            raise ContinualError("input_shape must not be empty")
        widths = [int(torch.tensor(shape).prod())] + [_positive("hidden width", h)
                                                       for h in hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        super().__init__(nn.Sequential(*layers), widths[-1], classes, heads)
        self.input_shape = shape


class TargetCNN(TargetNetwork):
    """A small convolutional network for ``(C, H, W)`` images.

    ``conv5×5(C→channels[0]) → ReLU → maxpool2 → conv5×5(→channels[1]) → ReLU → maxpool2 →
    flatten → linear(→features) → ReLU → head``; convolutions keep the size (padding 2), so
    the flattened width is ``channels[1] · ⌊H/4⌋ · ⌊W/4⌋``.
    """

    def __init__(self, input_shape: Sequence[int], classes: int, *,
                 channels: Sequence[int] = (16, 32), features: int = 64,
                 heads: int = 1) -> None:
        shape = tuple(int(s) for s in input_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ContinualError(f"TargetCNN needs a (C, H, W) input_shape, got {input_shape!r}")
        if len(channels) != 2:
            raise ContinualError(f"channels must hold two widths, got {channels!r}")
        c1, c2 = (_positive("channels entry", c) for c in channels)
        c, h, w = shape
        if h < 4 or w < 4:
            raise ContinualError(f"TargetCNN needs images of at least 4×4, got {h}×{w}")
        trunk = nn.Sequential(
            nn.Conv2d(c, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(c2 * (h // 4) * (w // 4), _positive("features", features)),
            nn.ReLU())
        super().__init__(trunk, features, classes, heads)
        self.input_shape = shape


def parameter_shapes(module: nn.Module) -> dict[str, torch.Size]:
    """``{parameter name: shape}`` of ``module``, in ``named_parameters`` order: what a
    hypernetwork must generate for :func:`torch.func.functional_call` to run the module."""
    return {name: p.shape for name, p in module.named_parameters()}
