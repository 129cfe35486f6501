"""Reference models, written by hand (torchvision is not a dependency).

Each function returns a plain ``torch.nn.Module`` in the style its family is usually written in
(``torch.nn`` layers, functional calls, ``+=``, ``torch.cat``, ``x.view(x.size(0), -1)``), so
``from_module`` is exercised on code that looks like real code: by the tests, by
``bench/graph_bench.py`` and by the GHN evaluation (``nas-service evaluate-ghn``), which scores
the GHN's predictions on these well-known designs. Image models take ``(B, in_channels, H, W)``
with H = W = 32 (CIFAR) or 28 (MNIST-like).

:func:`evaluation_models` picks the ones the evaluation uses for a task's input shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DARTS_V2_CONCAT",
    "DARTS_V2_NORMAL",
    "DARTS_V2_REDUCE",
    "VGG",
    "BasicBlock",
    "Bottleneck",
    "ConvBNReLU",
    "DartsCell",
    "DartsNetwork",
    "DenseBlock",
    "DenseLayer",
    "DenseNet",
    "DilConv",
    "InvertedResidual",
    "MobileNetV2",
    "ReLUConvBN",
    "ResNet",
    "SEBlock",
    "SENet",
    "SepConv",
    "SmallViT",
    "SqueezeExcitation",
    "TransformerBlock",
    "Transition",
    "darts_like",
    "densenet_bc",
    "evaluation_models",
    "mlp",
    "mobilenet_v2",
    "resnet18",
    "resnet50",
    "se_net",
    "small_vit",
    "vgg11_bn",
]

# ------------------------------------------------------------------------------------------------
# ResNets (CIFAR stem: 3x3 convolution with stride 1, no max-pool)
# ------------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(in_planes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes * self.expansion:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes * self.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * self.expansion))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock | Bottleneck], layers: Sequence[int],
                 num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, 64, layers[0], 1)
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int,
                    stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet18(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels)


def resnet50(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels)


# ------------------------------------------------------------------------------------------------
# MobileNetV2 (CIFAR variant: stride-1 stem and first 24-channel stage)
# ------------------------------------------------------------------------------------------------


class ConvBNReLU(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1):
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel_size, stride, (kernel_size - 1) // 2, groups=groups,
                      bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = c_in * expand_ratio
        self.use_res_connect = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(c_in, hidden, kernel_size=1))
        layers += [ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    # (expansion t, channels c, repeats n, stride s) as in the paper; the 24-channel stage has
    # stride 1 instead of 2 for 32x32 inputs.
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0):
        super().__init__()
        c_in = int(32 * width_mult)
        last = int(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNReLU(in_channels, c_in, stride=1)]
        for t, c, n, s in self.SETTINGS:
            c_out = int(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(c_in, c_out, s if i == 0 else 1, t))
                c_in = c_out
        features.append(ConvBNReLU(c_in, last, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


def mobilenet_v2(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return MobileNetV2(num_classes, in_channels)


# ------------------------------------------------------------------------------------------------
# VGG-11 with batch norm (32x32: five max-pools leave 1x1)
# ------------------------------------------------------------------------------------------------


class VGG(nn.Module):
    def __init__(self, cfg: Sequence[int | str], num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                assert isinstance(v, int)
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(c, 512), nn.ReLU(True), nn.Dropout(),
            nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(),
            nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = x.view(x.size(0), -1)
        return self.classifier(x)


def vgg11_bn(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return VGG([64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"], num_classes,
               in_channels)


# ------------------------------------------------------------------------------------------------
# DenseNet-BC (small): dense layers concatenate every earlier feature map
# ------------------------------------------------------------------------------------------------


class DenseLayer(nn.Module):
    def __init__(self, c_in: int, growth: int, bn_size: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(c_in, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.ModuleDict):
    def __init__(self, num_layers: int, c_in: int, growth: int, bn_size: int):
        super().__init__()
        for i in range(num_layers):
            self[f"denselayer{i + 1}"] = DenseLayer(c_in + i * growth, growth, bn_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(c_in)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)


class DenseNet(nn.Module):
    def __init__(self, growth: int = 12, blocks: Sequence[int] = (6, 6, 6), bn_size: int = 4,
                 compression: float = 0.5, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        c = 2 * growth
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(in_channels, c, 3, padding=1, bias=False))
        for i, n in enumerate(blocks):
            self.features.add_module(f"denseblock{i + 1}", DenseBlock(n, c, growth, bn_size))
            c += n * growth
            if i != len(blocks) - 1:
                c_out = int(c * compression)
                self.features.add_module(f"transition{i + 1}", Transition(c, c_out))
                c = c_out
        self.features.add_module("norm5", nn.BatchNorm2d(c))
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.features(x), inplace=True)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


def densenet_bc(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """DenseNet-BC with growth rate 12 and three blocks of six layers."""
    return DenseNet(num_classes=num_classes, in_channels=in_channels)


# ------------------------------------------------------------------------------------------------
# Squeeze-and-excitation network
# ------------------------------------------------------------------------------------------------


class SqueezeExcitation(nn.Module):
    """Channel gate (Hu et al., 2018): ``x * sigmoid(W2 relu(W1 mean_hw(x)))``."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))  # (B, C, 1, 1)
        return x * s


class SEBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.se = SqueezeExcitation(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return F.relu(out + self.shortcut(x))


class SENet(nn.Module):
    def __init__(self, widths: Sequence[int] = (32, 64, 128), num_classes: int = 10,
                 in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        blocks, c = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(SEBlock(c, w, 1 if i == 0 else 2))
            c = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(x.mean((2, 3)))


def se_net(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return SENet(num_classes=num_classes, in_channels=in_channels)


# ------------------------------------------------------------------------------------------------
# A small vision transformer
# ------------------------------------------------------------------------------------------------


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(),
                                 nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class SmallViT(nn.Module):
    def __init__(self, img: int = 32, patch: int = 4, dim: int = 64, depth: int = 2,
                 heads: int = 4, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        tokens = (img // patch) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, T, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed  # (B, T + 1, D)
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def small_vit(img: int = 32, patch: int = 4, dim: int = 64, depth: int = 2, heads: int = 4,
              num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return SmallViT(img, patch, dim, depth, heads, num_classes, in_channels)


# ------------------------------------------------------------------------------------------------
# Multi-layer perceptron
# ------------------------------------------------------------------------------------------------


def mlp(in_features: int = 784, hidden: Sequence[int] = (256, 128),
        num_classes: int = 10) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    for h in hidden:
        layers += [nn.Linear(in_features, h), nn.ReLU()]
        in_features = h
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------------------------
# DARTS-style cell network (Liu et al., 2019; genotype DARTS_V2, evaluation network for CIFAR)
# ------------------------------------------------------------------------------------------------

# (op, input state) pairs, two per intermediate node; states 0 and 1 are the cell's inputs.
DARTS_V2_NORMAL = (("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0),
                   ("sep_conv_3x3", 1), ("sep_conv_3x3", 1), ("skip_connect", 0),
                   ("skip_connect", 0), ("dil_conv_3x3", 2))
DARTS_V2_REDUCE = (("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2),
                   ("max_pool_3x3", 1), ("max_pool_3x3", 0), ("skip_connect", 2),
                   ("skip_connect", 2), ("max_pool_3x3", 1))
DARTS_V2_CONCAT = (2, 3, 4, 5)


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int):
        super().__init__(nn.ReLU(inplace=False),
                         nn.Conv2d(c_in, c_out, kernel_size, stride, padding, bias=False),
                         nn.BatchNorm2d(c_out))


class DilConv(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int,
                 dilation: int):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel_size, stride, padding, dilation, groups=c_in,
                      bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out))


class SepConv(nn.Sequential):
    """Two stacked depthwise-separable convolutions, as in DARTS."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int):
        super().__init__(
            DilConv(c_in, c_in, kernel_size, stride, padding, 1),
            DilConv(c_in, c_out, kernel_size, 1, padding, 1))


def _darts_op(name: str, c: int, stride: int) -> nn.Module:
    if name == "sep_conv_3x3":
        return SepConv(c, c, 3, stride, 1)
    if name == "sep_conv_5x5":
        return SepConv(c, c, 5, stride, 2)
    if name == "dil_conv_3x3":
        return DilConv(c, c, 3, stride, 2, 2)
    if name == "dil_conv_5x5":
        return DilConv(c, c, 5, stride, 4, 2)
    if name == "max_pool_3x3":
        return nn.MaxPool2d(3, stride, 1)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride, 1, count_include_pad=False)
    if name == "skip_connect":
        # DARTS reduces with FactorizedReduce, which shifts the input by one pixel
        # (x[:, :, 1:, 1:]); nas-graph/1 has no slicing op, so a strided 1x1 ReLUConvBN of the
        # same parameter count stands in.
        return nn.Identity() if stride == 1 else ReLUConvBN(c, c, 1, stride, 0)
    raise ValueError(f"unknown DARTS op {name!r}")


class DartsCell(nn.Module):
    def __init__(self, genotype: Sequence[tuple[str, int]], concat: Sequence[int], c_pp: int,
                 c_p: int, c: int, reduction: bool, reduction_prev: bool):
        super().__init__()
        # See the skip_connect note in _darts_op about FactorizedReduce.
        self.preprocess0 = ReLUConvBN(c_pp, c, 1, 2 if reduction_prev else 1, 0)
        self.preprocess1 = ReLUConvBN(c_p, c, 1, 1, 0)
        self.indices = [i for _, i in genotype]
        self.concat = list(concat)
        self.ops = nn.ModuleList(
            _darts_op(name, c, 2 if reduction and index < 2 else 1) for name, index in genotype)
        self.multiplier = len(concat)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(len(self.ops) // 2):
            h1 = self.ops[2 * i](states[self.indices[2 * i]])
            h2 = self.ops[2 * i + 1](states[self.indices[2 * i + 1]])
            states.append(h1 + h2)
        return torch.cat([states[i] for i in self.concat], dim=1)


class DartsNetwork(nn.Module):
    def __init__(self, C: int = 36, cells: int = 20, num_classes: int = 10,
                 in_channels: int = 3, stem_multiplier: int = 3):
        super().__init__()
        c_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_curr, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(c_curr))
        c_pp, c_p, c_curr = c_curr, c_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(cells):
            reduction = i in (cells // 3, 2 * cells // 3)
            if reduction:
                c_curr *= 2
            genotype = DARTS_V2_REDUCE if reduction else DARTS_V2_NORMAL
            cell = DartsCell(genotype, DARTS_V2_CONCAT, c_pp, c_p, c_curr, reduction,
                             reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            c_pp, c_p = c_p, cell.multiplier * c_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        out = self.global_pooling(s1)
        return self.classifier(out.view(out.size(0), -1))


def darts_like(cells: int = 20, C: int = 36, num_classes: int = 10,
               in_channels: int = 3) -> nn.Module:
    return DartsNetwork(C, cells, num_classes, in_channels)


# ------------------------------------------------------------------------------------------------
# The set the GHN evaluation scores
# ------------------------------------------------------------------------------------------------


def evaluation_models(input_shape: Sequence[int], num_classes: int
                      ) -> tuple[dict[str, Callable[[], nn.Module]], dict[str, str]]:
    """The reference models the GHN evaluation scores, built for one task.

    Returns ``(factories, skipped)``: ``factories`` maps a display name to a zero-argument
    function building the model for ``input_shape = (C, H, W)`` and ``num_classes`` (in a fixed
    order: ResNet-18, ResNet-50, MobileNetV2, VGG-11-BN, DenseNet-BC, small ViT, MLP);
    ``skipped`` maps the name of each model that cannot take this input to the reason.
    """
    if len(input_shape) != 3:
        raise ValueError(f"reference models take images (C, H, W), got {tuple(input_shape)}")
    c, h, w = (int(s) for s in input_shape)
    factories: dict[str, Callable[[], nn.Module]] = {
        "ResNet-18": lambda: resnet18(num_classes, c),
        "ResNet-50": lambda: resnet50(num_classes, c),
        "MobileNetV2": lambda: mobilenet_v2(num_classes, c),
    }
    skipped: dict[str, str] = {}
    # Five 2x2 max-pools, then a classifier that expects exactly 1x1 maps.
    if h == w == 32:
        factories["VGG-11-BN"] = lambda: vgg11_bn(num_classes, c)
    else:
        skipped["VGG-11-BN"] = f"needs 32x32 inputs (five 2x2 max-pools), the task has {h}x{w}"
    factories["DenseNet-BC"] = lambda: densenet_bc(num_classes, c)
    if h == w and h % 4 == 0:
        factories["ViT (small)"] = lambda: small_vit(img=h, patch=4, num_classes=num_classes,
                                                     in_channels=c)
    else:
        skipped["ViT (small)"] = f"needs square inputs divisible by its 4x4 patches, got {h}x{w}"
    factories["MLP"] = lambda: mlp(in_features=c * h * w, num_classes=num_classes)
    return factories, skipped
