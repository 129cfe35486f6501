"""Real-model fixtures for ``from_module``: common families written the way their libraries
write them, and ``transformers`` vision models built from small configs (never downloaded).

Each maker takes ``(in_channels, size, num_classes)`` and returns a module mapping
``(B, in_channels, size, size)`` images to ``(B, num_classes)`` logits. :data:`OWN` are written
here in the style of the library each family comes from (timm's fused BN + activation and
weight-standardised convolutions, ConvNeXt's channels-last layer norm and layer scale,
GhostNet's channel slicing, ...); :data:`TORCH_NN` use ``torch.nn``'s own transformer and
recurrent layers; :func:`transformers_models` wraps Hugging Face models to return logits (empty
when ``transformers`` is not installed). :func:`all_models` lists them all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Maker = Callable[[int, int, int], nn.Module]


# ---- timm-style building blocks ------------------------------------------------------------------


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's fused batch norm + activation: ``F.batch_norm`` called in forward."""

    def __init__(self, channels: int, act: type[nn.Module] = nn.ReLU):
        super().__init__(channels)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # a cumulative average
                factor = 1.0 / float(self.num_batches_tracked)
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         self.training, factor, self.eps)
        return self.act(x)


class StdConv2d(nn.Conv2d):
    """timm's weight-standardised convolution (standardisation by ``F.batch_norm``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                         training=True, momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class BiTConv2d(nn.Conv2d):
    """Big Transfer's weight standardisation (``var_mean``, eps 1e-10)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v, m = torch.var_mean(self.weight, dim=[1, 2, 3], keepdim=True, unbiased=False)
        w = (self.weight - m) / torch.sqrt(v + 1e-10)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int, gate: Callable = torch.sigmoid):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)
        self.gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(F.silu(self.reduce(s))))


def _head(channels: int, num_classes: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


# ---- families --------------------------------------------------------------------------------------


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7, channels-last LayerNorm, pointwise MLP as Linear, layer scale."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


def convnext(c: int, size: int, classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c, 16, 4, 4), ConvNeXtBlock(16), ConvNeXtBlock(16),
                         nn.Conv2d(16, 32, 2, 2), ConvNeXtBlock(32), _head(32, classes))


class GhostModule(nn.Module):
    """GhostNet: half the channels from a conv, half from a cheap depthwise conv, sliced."""

    def __init__(self, inp: int, oup: int):
        super().__init__()
        self.oup = oup
        init = math.ceil(oup / 2)
        self.primary = nn.Sequential(nn.Conv2d(inp, init, 1, bias=False), nn.BatchNorm2d(init),
                                     nn.ReLU(inplace=True))
        self.cheap = nn.Sequential(nn.Conv2d(init, init, 3, 1, 1, groups=init, bias=False),
                                   nn.BatchNorm2d(init), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary(x)
        out = torch.cat([x1, self.cheap(x1)], dim=1)
        return out[:, :self.oup, :, :]


def ghostnet(c: int, size: int, classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                         GhostModule(16, 23), SqueezeExcite(23, 8, F.hardsigmoid),
                         GhostModule(23, 40), _head(40, classes))


class MBConv(nn.Module):
    """EfficientNet's inverted residual: timm's BatchNormAct2d, swish, SE, drop path."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4):
        super().__init__()
        mid = cin * expand
        self.conv_pw = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = BatchNormAct2d(mid, nn.SiLU)
        self.conv_dw = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = BatchNormAct2d(mid, nn.SiLU)
        self.se = SqueezeExcite(mid, max(1, cin // 4))
        self.conv_pwl = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = BatchNormAct2d(cout, nn.Identity)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn3(self.conv_pwl(self.se(self.bn2(self.conv_dw(self.bn1(self.conv_pw(x)))))))
        if self.residual:
            if self.training:  # drop path
                keep = torch.rand(x.shape[0], 1, 1, 1, device=x.device) > 0.1
                y = y * keep / 0.9
            y = y + x
        return y


def efficientnet(c: int, size: int, classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c, 16, 3, 2, 1, bias=False), BatchNormAct2d(16, nn.SiLU),
                         MBConv(16, 16, 1), MBConv(16, 24, 2), MBConv(24, 24, 1),
                         nn.Conv2d(24, 64, 1), BatchNormAct2d(64, nn.SiLU), _head(64, classes))


class RegNetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, group_width: int = 8):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), BatchNormAct2d(cout))
        self.b = nn.Sequential(nn.Conv2d(cout, cout, 3, stride, 1, groups=cout // group_width,
                                         bias=False), BatchNormAct2d(cout))
        self.se = SqueezeExcite(cout, cin // 4)
        self.c = nn.Sequential(nn.Conv2d(cout, cout, 1, bias=False),
                               BatchNormAct2d(cout, nn.Identity))
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                       nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.c(self.se(self.b(self.a(x)))) + self.shortcut(x))


def regnet(c: int, size: int, classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c, 16, 3, 2, 1, bias=False), BatchNormAct2d(16),
                         RegNetBlock(16, 24, 2), RegNetBlock(24, 24, 1), RegNetBlock(24, 48, 2),
                         _head(48, classes))


class PreActBottleneck(nn.Module):
    """Big Transfer (ResNetV2): group norm, weight-standardised convolutions, pre-activation."""

    def __init__(self, cin: int, cout: int, stride: int, conv: type[nn.Conv2d]):
        super().__init__()
        mid = cout // 4
        self.norm1 = nn.GroupNorm(4, cin)
        self.conv1 = conv(cin, mid, 1, bias=False)
        self.norm2 = nn.GroupNorm(4, mid)
        self.conv2 = conv(mid, mid, 3, stride, 1, bias=False)
        self.norm3 = nn.GroupNorm(4, mid)
        self.conv3 = conv(mid, cout, 1, bias=False)
        self.downsample = conv(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout \
            else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(x))
        shortcut = self.downsample(x) if self.downsample is not None else x
        x = self.conv1(x)
        x = self.conv2(F.relu(self.norm2(x)))
        x = self.conv3(F.relu(self.norm3(x)))
        return x + shortcut


def _ws_resnet(conv: type[nn.Conv2d]) -> Maker:
    def make(c: int, size: int, classes: int) -> nn.Module:
        return nn.Sequential(conv(c, 16, 3, 1, 1, bias=False), PreActBottleneck(16, 32, 1, conv),
                             PreActBottleneck(32, 64, 2, conv), nn.GroupNorm(4, 64), nn.ReLU(),
                             _head(64, classes))
    return make


class UNetClassifier(nn.Module):
    """An encoder-decoder with skip connections and three ways to upsample, then a head."""

    def __init__(self, c: int, classes: int):
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.InstanceNorm2d(8, affine=True),
                                  nn.PReLU(8))
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.PReLU())
        self.enc3 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU())
        self.up3 = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.dec2 = nn.Conv2d(32, 16, 3, padding=1)
        self.up2 = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec1 = nn.Conv2d(24, 8, 3, padding=1)
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = F.relu(self.dec2(torch.cat([self.up3(e3), e2], dim=1)))
        d2 = d2 + F.interpolate(e3, size=d2.shape[-2:], mode="bilinear",
                                align_corners=False)[:, :16]
        d1 = F.relu(self.dec1(torch.cat([self.up2(d2), e1], dim=1)))
        return self.head(d1.mean((2, 3)))


class Attention(nn.Module):
    """timm's attention: fused qkv, reshape/permute/unbind, scaled dot product."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.ls1 = nn.Parameter(1e-5 * torch.ones(dim))
        self.ls2 = nn.Parameter(1e-5 * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1 * self.attn(self.norm1(x))
        return x + self.ls2 * self.mlp(self.norm2(x))


class TimmViT(nn.Module):
    def __init__(self, c: int, size: int, classes: int, dim: int = 32, patch: int = 4):
        super().__init__()
        self.patch_embed = nn.Conv2d(c, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (size // patch) ** 2 + 1, dim))
        self.blocks = nn.Sequential(ViTBlock(dim, 2), ViTBlock(dim, 2))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


class TransformerClassifier(nn.Module):
    """``nn.TransformerEncoder`` over patch tokens, mean-pooled."""

    def __init__(self, c: int, size: int, classes: int, dim: int = 32, norm_first: bool = True):
        super().__init__()
        self.embed = nn.Conv2d(c, dim, 4, 4)
        self.pos = nn.Parameter(torch.zeros(1, (size // 4) ** 2, dim))
        layer = nn.TransformerEncoderLayer(dim, 2, 64, dropout=0.1, batch_first=True,
                                           norm_first=norm_first, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.encoder(x).mean(1))


class RecurrentClassifier(nn.Module):
    """Rows of the image as a sequence: Conv1d, BatchNorm1d, an LSTM or GRU, the last step."""

    def __init__(self, c: int, size: int, classes: int, cell: type[nn.RNNBase] = nn.LSTM):
        super().__init__()
        self.conv = nn.Conv1d(c * size, 32, 3, padding=1)
        self.bn = nn.BatchNorm1d(32)
        self.rnn = cell(size, 24, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(48, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1, 2)  # (B, C * H, W): channels and rows, then columns
        x = F.relu(self.bn(self.conv(x)))  # (B, 32, W)
        out, _ = self.rnn(x)  # 32 steps of W features
        return self.head(out[:, -1])


class MixerBlock(nn.Module):
    def __init__(self, tokens: int, dim: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, 2 * tokens), nn.GELU(),
                                       nn.Linear(2 * tokens, tokens))
        self.channel_mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(),
                                         nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


def mlp_mixer(c: int, size: int, classes: int) -> nn.Module:
    tokens = (size // 4) ** 2

    class Mixer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(c, 32, 4, 4)
            self.blocks = nn.Sequential(MixerBlock(tokens, 32), MixerBlock(tokens, 32))
            self.head = nn.Linear(32, classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x).flatten(2).transpose(1, 2)
            return self.head(self.blocks(x).mean(1))

    return Mixer()


class ShuffleUnit(nn.Module):
    """ShuffleNetV2: split channels, convolve half, concatenate, shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(nn.Conv2d(half, half, 1), nn.BatchNorm2d(half), nn.ReLU(),
                                    nn.Conv2d(half, half, 3, padding=1, groups=half),
                                    nn.BatchNorm2d(half), nn.Conv2d(half, half, 1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        out = torch.cat((x1, self.branch(x2)), dim=1)
        b, c, h, w = out.shape
        return out.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)


def shufflenet(c: int, size: int, classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c, 24, 3, 2, 1), nn.BatchNorm2d(24), nn.ReLU(),
                         ShuffleUnit(24), ShuffleUnit(24), _head(24, classes))


class Affine(nn.Module):
    """ResMLP's affine normalisation: a learned scale and shift per channel."""

    def __init__(self, dim: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * x + self.beta


def resmlp(c: int, size: int, classes: int) -> nn.Module:
    class ResMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(c, 32, 4, 4)
            self.norm = Affine(32)
            self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
            self.head = nn.Linear(32, classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x).flatten(2).transpose(1, 2)
            x = x + self.mlp(self.norm(x))
            return self.head(x.mean(1))

    return ResMLP()


def conv_mixer(c: int, size: int, classes: int) -> nn.Module:
    class Residual(nn.Module):
        def __init__(self, fn: nn.Module) -> None:
            super().__init__()
            self.fn = fn

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fn(x) + x

    dim = 32
    layers: list[nn.Module] = [nn.Conv2d(c, dim, 2, 2), nn.GELU(), nn.BatchNorm2d(dim)]
    for _ in range(2):
        layers += [Residual(nn.Sequential(nn.Conv2d(dim, dim, 5, groups=dim, padding="same"),
                                          nn.GELU(), nn.BatchNorm2d(dim))),
                   nn.Conv2d(dim, dim, 1), nn.GELU(), nn.BatchNorm2d(dim)]
    return nn.Sequential(*layers, _head(dim, classes))


def squeezenet(c: int, size: int, classes: int) -> nn.Module:
    class Fire(nn.Module):
        def __init__(self, cin: int, squeeze: int, expand: int) -> None:
            super().__init__()
            self.squeeze = nn.Conv2d(cin, squeeze, 1)
            self.e1 = nn.Conv2d(squeeze, expand, 1)
            self.e3 = nn.Conv2d(squeeze, expand, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.relu(self.squeeze(x), inplace=True)
            return torch.cat([F.relu(self.e1(x)), F.relu(self.e3(x))], 1)

    return nn.Sequential(nn.Conv2d(c, 32, 3, 2), nn.ReLU(inplace=True),
                         nn.MaxPool2d(3, 2, ceil_mode=True), Fire(32, 8, 16), Fire(32, 8, 16),
                         nn.Dropout(0.5), nn.Conv2d(32, classes, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


OWN: dict[str, Maker] = {
    "convnext": convnext,
    "ghostnet": ghostnet,
    "efficientnet": efficientnet,
    "regnet": regnet,
    "bit_resnet_timm_stdconv": _ws_resnet(StdConv2d),
    "bit_resnet_var_mean": _ws_resnet(BiTConv2d),
    "unet_classifier": lambda c, s, k: UNetClassifier(c, k),
    "vit_fused_qkv_layer_scale": TimmViT,
    "mlp_mixer": mlp_mixer,
    "shufflenet_v2": shufflenet,
    "resmlp": resmlp,
    "conv_mixer": conv_mixer,
    "squeezenet": squeezenet,
}
"""Families written here in their libraries' style."""

TORCH_NN: dict[str, Maker] = {
    "transformer_encoder_pre_norm": TransformerClassifier,
    "transformer_encoder_post_norm": lambda c, s, k: TransformerClassifier(c, s, k,
                                                                           norm_first=False),
    "lstm_rows": RecurrentClassifier,
    "gru_rows": lambda c, s, k: RecurrentClassifier(c, s, k, nn.GRU),
}
"""``torch.nn``'s transformer and recurrent layers."""


class Logits(nn.Module):
    """A Hugging Face image classifier that returns its logits tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def transformers_models() -> dict[str, Maker]:
    """Small ``transformers`` vision classifiers built from configs; {} without the library."""
    try:
        import transformers as T
    except ImportError:
        return {}

    def hf(model: str, config: str, **kw: Any) -> Maker:
        def make(c: int, size: int, classes: int) -> nn.Module:
            cfg = getattr(T, config)(num_channels=c, num_labels=classes, **{
                k: (v(size) if callable(v) else v) for k, v in kw.items()})
            return Logits(getattr(T, model)(cfg))
        return make

    vit = {"patch_size": 4, "hidden_size": 32, "num_hidden_layers": 2,
           "num_attention_heads": 2, "intermediate_size": 64, "image_size": lambda s: s}
    return {
        "hf_resnet": hf("ResNetForImageClassification", "ResNetConfig", embedding_size=16,
                        hidden_sizes=[16, 32], depths=[1, 1]),
        "hf_resnet_bottleneck": hf("ResNetForImageClassification", "ResNetConfig",
                                   embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1],
                                   layer_type="bottleneck"),
        "hf_vit": hf("ViTForImageClassification", "ViTConfig", **vit),
        "hf_deit": hf("DeiTForImageClassification", "DeiTConfig", **vit),
        "hf_beit": hf("BeitForImageClassification", "BeitConfig", **vit,
                      use_relative_position_bias=True, layer_scale_init_value=0.1),
        "hf_dinov2": hf("Dinov2ForImageClassification", "Dinov2Config", **vit),
        "hf_mobilenet_v1": hf("MobileNetV1ForImageClassification", "MobileNetV1Config",
                              depth_multiplier=0.25, image_size=lambda s: s),
        "hf_mobilenet_v2": hf("MobileNetV2ForImageClassification", "MobileNetV2Config",
                              depth_multiplier=0.25, image_size=lambda s: s),
        "hf_regnet": hf("RegNetForImageClassification", "RegNetConfig", embedding_size=16,
                        hidden_sizes=[16, 32], depths=[1, 1], groups_width=8),
        "hf_swin": hf("SwinForImageClassification", "SwinConfig", image_size=lambda s: s,
                      patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                      window_size=7),
        "hf_swinv2": hf("Swinv2ForImageClassification", "Swinv2Config", image_size=lambda s: s,
                        patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                        window_size=7),
        "hf_poolformer": hf("PoolFormerForImageClassification", "PoolFormerConfig",
                            hidden_sizes=[16, 32, 32, 32], depths=[1, 1, 1, 1]),
        "hf_convnext": hf("ConvNextForImageClassification", "ConvNextConfig",
                          hidden_sizes=[16, 32], depths=[1, 1], num_stages=2),
        "hf_convnextv2": hf("ConvNextV2ForImageClassification", "ConvNextV2Config",
                            hidden_sizes=[16, 32], depths=[1, 1], num_stages=2),
        "hf_bit": hf("BitForImageClassification", "BitConfig", embedding_size=32,
                     hidden_sizes=[64, 128], depths=[1, 1], layer_type="preactivation",
                     num_groups=8),
        "hf_levit": hf("LevitForImageClassification", "LevitConfig", image_size=lambda s: s,
                       hidden_sizes=[32, 48, 64], num_attention_heads=[2, 2, 2],
                       depths=[1, 1, 1], key_dim=[8, 8, 8]),
        "hf_pvt": hf("PvtForImageClassification", "PvtConfig", image_size=lambda s: s,
                     num_encoder_blocks=2, depths=[1, 1], sequence_reduction_ratios=[2, 1],
                     hidden_sizes=[16, 32], patch_sizes=[4, 2], strides=[4, 2],
                     num_attention_heads=[1, 2], mlp_ratios=[2, 2]),
        "hf_pvt_v2": hf("PvtV2ForImageClassification", "PvtV2Config", num_encoder_blocks=2,
                        depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
                        patch_sizes=[3, 3], strides=[2, 2], num_attention_heads=[1, 2],
                        mlp_ratios=[2, 2]),
        "hf_segformer": hf("SegformerForImageClassification", "SegformerConfig",
                           num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
                           hidden_sizes=[16, 32], patch_sizes=[3, 3], strides=[2, 2],
                           num_attention_heads=[1, 2], mlp_ratios=[2, 2]),
        "hf_focalnet": hf("FocalNetForImageClassification", "FocalNetConfig", embed_dim=16,
                          depths=[1, 1], patch_size=2, image_size=lambda s: s),
        "hf_efficientnet": hf("EfficientNetForImageClassification", "EfficientNetConfig",
                              width_coefficient=0.25, depth_coefficient=0.2, hidden_dim=320,
                              image_size=lambda s: s, kernel_sizes=[3, 3, 3, 3, 3, 3, 3],
                              strides=[1, 2, 2, 1, 1, 1, 1]),
        "hf_mobilevit": hf("MobileViTForImageClassification", "MobileViTConfig",
                           image_size=lambda s: s, hidden_sizes=[16, 24, 32],
                           neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 32], patch_size=2),
        "hf_convnext_layer_scale": hf("ConvNextForImageClassification", "ConvNextConfig",
                                      hidden_sizes=[16, 32, 48], depths=[1, 1, 1],
                                      num_stages=3, layer_scale_init_value=0.5),
    }


def all_models() -> dict[str, tuple[str, Maker]]:
    """``{name: (library, maker)}``: ``own``, ``torch.nn`` and ``transformers``."""
    out: dict[str, tuple[str, Maker]] = {k: ("own", m) for k, m in OWN.items()}
    out.update((k, ("torch.nn", m)) for k, m in TORCH_NN.items())
    out.update((k, ("transformers", m)) for k, m in transformers_models().items())
    return out
