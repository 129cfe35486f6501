"""Ordinary hand-written CNNs: the networks people write for a small image task, as they write
them, to measure how a GHN does outside its training spaces.

Each is a plain ``torch.nn.Module`` in one of four common shapes (a plain conv stack, VGG-style
blocks, a small ResNet, a MobileNet-style stack of inverted residuals) with the choices people
vary: depth (2 to 9 blocks), widths, batch norm or none, the activation (ReLU, GELU, SiLU, Tanh,
Hardswish), squeeze-excitation, grouped convolutions, a linear or MLP head with dropout. The
configurations in :data:`HANDWRITTEN` were chosen by hand once, to span those choices, and are
never used to train or tune a GHN or a ranking: they are an out-of-distribution test set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True), "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh,
    "hardswish": nn.Hardswish,
}


@dataclass(frozen=True)
class Choices:
    """What varies between the hand-written networks of one shape."""

    widths: tuple[int, ...]
    """Output channels of each block; a block after the first halves the resolution when its
    index is in ``downsample``."""
    act: str = "relu"
    batch_norm: bool = True
    downsample: tuple[int, ...] = (1, 2)
    se: bool = False
    groups: int = 1
    head: tuple[int, ...] = ()
    """Hidden widths of an MLP head (empty: one linear classifier)."""
    dropout: float = 0.0


def _norm(channels: int, choices: Choices) -> nn.Module:
    return nn.BatchNorm2d(channels) if choices.batch_norm else nn.Identity()


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, act: str, reduction: int = 4):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = ACTIVATIONS[act]()
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(s))))


def _head(channels: int, num_classes: int, choices: Choices) -> nn.Sequential:
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    for hidden in choices.head:
        layers += [nn.Linear(channels, hidden), ACTIVATIONS[choices.act]()]
        if choices.dropout:
            layers.append(nn.Dropout(choices.dropout))
        channels = hidden
    layers.append(nn.Linear(channels, num_classes))
    return nn.Sequential(*layers)


class PlainCNN(nn.Module):
    """conv-(BN)-act blocks, a stride-2 conv where the resolution halves."""

    def __init__(self, choices: Choices, in_channels: int, num_classes: int):
        super().__init__()
        blocks, c = [], in_channels
        for i, w in enumerate(choices.widths):
            stride = 2 if i in choices.downsample else 1
            groups = choices.groups if i > 0 and c % choices.groups == 0 \
                and w % choices.groups == 0 else 1
            blocks += [nn.Conv2d(c, w, 3, stride, 1, groups=groups,
                                 bias=not choices.batch_norm),
                       _norm(w, choices), ACTIVATIONS[choices.act]()]
            if choices.se:
                blocks.append(SqueezeExcite(w, choices.act))
            c = w
        self.features = nn.Sequential(*blocks)
        self.classifier = _head(c, num_classes, choices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class VGGNet(nn.Module):
    """Blocks of two 3x3 convs, max-pooling between blocks; the head flattens the last map."""

    def __init__(self, choices: Choices, in_channels: int, num_classes: int, size: int):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for i, w in enumerate(choices.widths):
            if i in choices.downsample:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            for _ in range(2):
                layers += [nn.Conv2d(c, w, 3, padding=1), _norm(w, choices),
                           ACTIVATIONS[choices.act]()]
                c = w
        self.features = nn.Sequential(*layers)
        features = c * size * size
        head: list[nn.Module] = []
        for hidden in choices.head:
            head += [nn.Linear(features, hidden), ACTIVATIONS[choices.act](),
                     nn.Dropout(choices.dropout)]
            features = hidden
        head.append(nn.Linear(features, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(x.view(x.size(0), -1))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, choices: Choices):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=not choices.batch_norm)
        self.bn1 = _norm(c_out, choices)
        groups = choices.groups if c_out % choices.groups == 0 else 1
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, groups=groups,
                               bias=not choices.batch_norm)
        self.bn2 = _norm(c_out, choices)
        self.act = ACTIVATIONS[choices.act]()
        self.se = SqueezeExcite(c_out, choices.act) if choices.se else nn.Identity()
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          _norm(c_out, choices))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return self.act(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """A 3x3 stem, one basic residual block per width, a linear or MLP head."""

    def __init__(self, choices: Choices, in_channels: int, num_classes: int):
        super().__init__()
        c = choices.widths[0]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, 1, 1, bias=not choices.batch_norm),
                                  _norm(c, choices), ACTIVATIONS[choices.act]())
        blocks = []
        for i, w in enumerate(choices.widths):
            blocks.append(BasicBlock(c, w, 2 if i in choices.downsample else 1, choices))
            c = w
        self.layers = nn.Sequential(*blocks)
        self.head = _head(c, num_classes, choices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)))


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int, choices: Choices):
        super().__init__()
        hidden = c_in * expand
        self.use_residual = stride == 1 and c_in == c_out
        self.block = nn.Sequential(
            nn.Conv2d(c_in, hidden, 1, bias=False), _norm(hidden, choices),
            ACTIVATIONS[choices.act](),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            _norm(hidden, choices), ACTIVATIONS[choices.act](),
            SqueezeExcite(hidden, choices.act) if choices.se else nn.Identity(),
            nn.Conv2d(hidden, c_out, 1, bias=False), _norm(c_out, choices))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetLike(nn.Module):
    """A stride-1 stem, inverted residuals (expansion 4, depthwise 3x3), a 1x1 conv to 4x the
    last width, then the head."""

    def __init__(self, choices: Choices, in_channels: int, num_classes: int):
        super().__init__()
        c = choices.widths[0]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, c, 3, 1, 1, bias=False),
                                   _norm(c, choices), ACTIVATIONS[choices.act]()]
        for i, w in enumerate(choices.widths):
            layers.append(InvertedResidual(c, w, 2 if i in choices.downsample else 1, 4, choices))
            c = w
        layers += [nn.Conv2d(c, 4 * c, 1, bias=False), _norm(4 * c, choices),
                   ACTIVATIONS[choices.act]()]
        self.features = nn.Sequential(*layers)
        self.classifier = _head(4 * c, num_classes, choices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _build(shape: str, choices: Choices, input_shape: Sequence[int], num_classes: int
           ) -> nn.Module:
    c, h, _ = (int(s) for s in input_shape)
    if shape == "plain":
        return PlainCNN(choices, c, num_classes)
    if shape == "vgg":
        return VGGNet(choices, c, num_classes, h)
    if shape == "resnet":
        return SmallResNet(choices, c, num_classes)
    return MobileNetLike(choices, c, num_classes)


C = Choices
HANDWRITTEN: dict[str, tuple[str, Choices]] = {
    "plain-2-relu": ("plain", C((32, 64), downsample=(1,))),
    "plain-3-relu-nobn": ("plain", C((32, 64, 64), batch_norm=False)),
    "plain-4-gelu": ("plain", C((32, 32, 64, 64), act="gelu", downsample=(1, 3))),
    "plain-5-tanh-nobn": ("plain", C((16, 32, 32, 64, 64), act="tanh", batch_norm=False,
                                     downsample=(1, 3))),
    "plain-6-silu-mlp": ("plain", C((32, 32, 64, 64, 128, 128), act="silu", downsample=(2, 4),
                                    head=(128,), dropout=0.3)),
    "plain-4-hardswish-se": ("plain", C((32, 64, 64, 128), act="hardswish", se=True)),
    "plain-5-relu-grouped": ("plain", C((32, 64, 64, 128, 128), groups=4, downsample=(1, 3))),
    "vgg-2-relu": ("vgg", C((32, 64), downsample=(1,), head=(128,), dropout=0.5)),
    "vgg-3-relu": ("vgg", C((32, 64, 128), downsample=(1, 2), head=(256,), dropout=0.5)),
    "vgg-3-gelu-nobn": ("vgg", C((16, 32, 64), act="gelu", batch_norm=False, downsample=(1, 2),
                                 head=(64,))),
    "vgg-2-tanh": ("vgg", C((32, 32), act="tanh", downsample=(1,))),
    "vgg-3-silu": ("vgg", C((16, 32, 64), act="silu", downsample=(1, 2), head=(128, 64),
                            dropout=0.2)),
    "resnet-3-relu": ("resnet", C((32, 64, 128))),
    "resnet-4-relu": ("resnet", C((16, 32, 64, 64), downsample=(1, 2))),
    "resnet-6-gelu": ("resnet", C((32, 32, 64, 64, 128, 128), act="gelu", downsample=(2, 4))),
    "resnet-4-silu-se": ("resnet", C((32, 64, 64, 128), act="silu", se=True, downsample=(1, 3))),
    "resnet-3-tanh-nobn": ("resnet", C((32, 64, 64), act="tanh", batch_norm=False)),
    "resnet-5-relu-grouped": ("resnet", C((32, 64, 64, 128, 128), groups=8, downsample=(1, 3))),
    "resnet-4-hardswish-mlp": ("resnet", C((32, 64, 64, 128), act="hardswish",
                                           downsample=(1, 3), head=(64,), dropout=0.2)),
    "resnet-9-relu": ("resnet", C((16, 16, 16, 32, 32, 32, 64, 64, 64), downsample=(3, 6))),
    "mobilenet-3-relu": ("mobilenet", C((16, 24, 32))),
    "mobilenet-5-hardswish-se": ("mobilenet", C((16, 24, 24, 40, 40), act="hardswish", se=True,
                                                 downsample=(1, 3))),
    "mobilenet-6-silu": ("mobilenet", C((16, 24, 24, 32, 32, 64), act="silu",
                                        downsample=(1, 3))),
    "mobilenet-4-gelu-mlp": ("mobilenet", C((16, 24, 32, 48), act="gelu", downsample=(1, 2),
                                            head=(128,), dropout=0.2)),
    "mobilenet-4-relu-nobn": ("mobilenet", C((16, 24, 32, 48), batch_norm=False,
                                             downsample=(1, 2))),
    "mobilenet-8-relu": ("mobilenet", C((16, 16, 24, 24, 32, 32, 48, 48), downsample=(2, 4, 6))),
}
"""Name -> (shape, choices). The name says the shape, the number of blocks, the activation and
what else sets the network apart."""


def handwritten_models(input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10
                       ) -> dict[str, Callable[[], nn.Module]]:
    """Name -> zero-argument factory of every network of :data:`HANDWRITTEN` for one task."""
    if len(input_shape) != 3:
        raise ValueError(f"hand-written CNNs take images (C, H, W), got {tuple(input_shape)}")
    return {name: (lambda s=shape, c=choices: _build(s, c, input_shape, num_classes))
            for name, (shape, choices) in HANDWRITTEN.items()}
