"""Writing the graph of a ``families`` genome: the network's units, then one writer per family.

:class:`NetWriter` is a :class:`LayerWriter` that knows the network's norm (batch, layer over
channels, group, or none with biased convs) and writes the units the families share
(``conv - norm - act``, squeeze-excitation, patchify, heads). :func:`write_staged` writes a
stem, the stages (one stage writer per staged family) and a map head; :func:`write_convmixer`,
:func:`write_vit` and :func:`write_mlp` write the others. Each returns the logits' node. The
writers draw nothing, so a genome always gives the same graph. Node ids say where a node sits
(``stage1_block0_conv2``, ``block3_attn``, ``head_fc``).

A stride that would bring a map below 2x2 is skipped, and maps over :data:`MAX_BODY_SIDE` per
side are max-pooled down after the stem, so one genome builds at any input of at least 8x8.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from ..base import Genome, LayerWriter, Shape3, halve
from .genome import MAX_BODY_SIDE, MAX_FLAT_FEATURES


def _num_groups(channels: int) -> int:
    """Group norm's groups: at most 32, of at least 4 channels where the width allows."""
    return math.gcd(channels, max(1, min(32, channels // 4)))


class NetWriter(LayerWriter):
    """A :class:`LayerWriter` with the network's norm, and the units the families share."""

    def __init__(self, input_shape: Shape3, name: str | None, norm: str, activation: str):
        super().__init__(input_shape, name, batch_norm=norm == "batch", activation=activation)
        self.norm_kind = norm

    @property
    def conv_bias(self) -> bool:
        return self.norm_kind == "none"

    def norm(self, x: str, id: str) -> str:
        if self.norm_kind == "none":
            return x
        if self.norm_kind == "group":
            node = self.builder.add("group_norm", x, id=id,
                                    num_groups=_num_groups(self.shapes[x][0]))
        else:
            node = self.builder.add(f"{self.norm_kind}_norm", x, id=id)
        return self._same(x, node)

    def unit(self, x: str, p: str, width: int, kernel: int, stride: int = 1, *,
             act: str | None, tag: str = "", groups: int = 1, dilation: int = 1) -> str:
        """``conv - norm [- act]``: ids ``<p>_conv<tag>``, ``<p>_norm<tag>``, ``<p>_act<tag>``."""
        x = self.conv(x, f"{p}_conv{tag}", width, kernel, stride, groups=groups,
                      dilation=dilation, bias=self.conv_bias)
        x = self.norm(x, f"{p}_norm{tag}")
        return x if act is None else self.act(x, f"{p}_act{tag}", act)

    def norm_act(self, x: str, p: str, act: str, tag: str = "") -> str:
        return self.act(self.norm(x, f"{p}_norm{tag}"), f"{p}_act{tag}", act)

    def side(self, x: str) -> int:
        return min(self.shapes[x][1:])

    def can_halve(self, x: str, *, floor: bool = False) -> bool:
        """Whether a stride-2 window keeps the map at 2x2 or more (``floor``: a 2x2 pool)."""
        side = self.side(x)
        return (side // 2 if floor else halve(side)) >= 2

    def gate(self, x: str, p: str, act: str) -> str:
        """Squeeze-excitation (Hu et al. 2018): ``x * sigmoid(fc2(act(fc1(mean_hw(x)))))``
        with 1x1 convs as the two linear layers, as timm writes it."""
        c = self.shapes[x][0]
        s = self.builder.add("global_avg_pool", x, id=f"{p}_pool", keepdim=True)
        self.shapes[s] = (c, 1, 1)
        s = self.act(self.conv(s, f"{p}_fc1", max(1, c // 4), 1, bias=True), f"{p}_act", act)
        s = self.conv(s, f"{p}_fc2", c, 1, bias=True)
        # MobileNetV3 pairs hard-swish with a hard-sigmoid gate.
        s = self.act(s, f"{p}_gate", "hardsigmoid" if act == "hardswish" else "sigmoid")
        return self._same(x, self.builder.add("mul", x, s, id=f"{p}_scale"))

    def patchify(self, x: str, id: str, width: int, patch: int) -> str:
        """A conv whose kernel and stride are ``patch``, unpadded: ``(C, H, W) ->
        (width, H // patch, W // patch)``."""
        c, h, w = self.shapes[x]
        self.builder.add("conv2d", x, id=id, out_channels=width, kernel_size=patch,
                         stride=patch, padding=0, bias=True)
        self.shapes[id] = (width, h // patch, w // patch)
        return id

    def reduce_large(self, x: str, prefix: str) -> str:
        k = 0
        while self.side(x) > MAX_BODY_SIDE:
            x, k = self.pool(x, f"{prefix}{k}", "max_pool", 3, 2), k + 1
        return x

    def classify(self, x: str, num_classes: int, *, hidden: Sequence[int] = (),
                   dropout: float = 0.0, act: str | None = None) -> str:
        """``[[dropout] - linear - act] x len(hidden) - [dropout] - linear`` on a vector."""
        for i, width in enumerate(hidden):
            if dropout > 0:
                x = self.builder.add("dropout", x, id=f"head_dropout{i}", p=dropout)
            x = self.builder.add("linear", x, id=f"head_fc{i}", out_features=width)
            x = self.builder.add(act or self.activation, x, id=f"head_act{i}")
        if dropout > 0:
            x = self.builder.add("dropout", x, id="head_dropout", p=dropout)
        return self.builder.add("linear", x, id="head_fc", out_features=num_classes)

    def map_head(self, x: str, head: dict[str, Any], num_classes: int) -> str:
        """``[conv1x1 - norm - act] - pool - classifier`` on a feature map."""
        if head["conv"]:
            x = self.unit(x, "head", head["conv"], 1, act=self.activation)
        if head["pool"] == "flatten":
            x = self.builder.add("flatten", x, id="head_flatten")
        else:
            x = self.builder.add(f"global_{head['pool']}_pool", x, id="head_pool")
        return self.classify(x, num_classes, hidden=head["hidden"], dropout=head["dropout"])


def _effective_patch(patch: int, shape: Shape3) -> int:
    """The genome's patch, enlarged so the map is at most 64 per side, and shrunk so that it
    is at least 2x2 (the input allowing both, shrinking wins)."""
    _, h, w = shape
    patch = max(patch, -(-min(h, w) // MAX_BODY_SIDE))
    return max(1, min(patch, min(h, w) // 2))


# ---- staged families: stem, stages, head -------------------------------------------------------


def write_staged(net: NetWriter, g: Genome, num_classes: int) -> str:
    family = g["family"]
    x = _write_stem(net, g, net.input)
    for s, stage in enumerate(g["stages"]):
        x = _STAGE_WRITERS[family](net, g, x, f"stage{s}", stage, s)
    if family in ("preact_resnet", "densenet"):  # their blocks end on a conv
        x = net.norm_act(x, "final", g["activation"])
    return net.map_head(x, g["head"], num_classes)


def _write_stem(net: NetWriter, g: Genome, x: str) -> str:
    stem = g["stem"]
    if stem is not None:
        stride = stem["stride"] if net.can_halve(x) else 1
        x = net.conv(x, "stem_conv", stem["width"], stem["kernel"], stride, bias=net.conv_bias)
        if g["family"] != "preact_resnet" or stem["pool"]:  # pre-activation blocks norm first
            x = net.norm_act(x, "stem", g["activation"])
        if stem["pool"] and net.can_halve(x):
            x = net.pool(x, "stem_pool", "max_pool", 3, 2)
    return net.reduce_large(x, "stem_reduce")


def _stage_stride(net: NetWriter, x: str, stage: dict[str, Any], floor: bool = False) -> int:
    return 2 if stage["stride"] == 2 and net.can_halve(x, floor=floor) else 1


def _act(g: Genome, stage: dict[str, Any]) -> str:
    return stage["activation"] or g["activation"]


def _shortcut(net: NetWriter, x: str, p: str, width: int, stride: int,
              source: str | None = None) -> str:
    """The input itself when the shape is kept, else a strided 1x1 conv [- norm]."""
    if stride == 1 and net.shapes[x][0] == width:
        return x
    y = net.conv(source or x, f"{p}_shortcut_conv", width, 1, stride, bias=net.conv_bias)
    return y if source else net.norm(y, f"{p}_shortcut_norm")


def _plain_stage(net: NetWriter, g: Genome, x: str, p: str, stage: dict[str, Any],
                 s: int) -> str:
    act, stride = _act(g, stage), 1
    if stage["downsample"] == "conv":
        stride = _stage_stride(net, x, stage)
    elif _stage_stride(net, x, stage, floor=True) == 2:
        x = net.pool(x, f"{p}_pool", stage["downsample"], 2, 2)
    for b in range(stage["depth"]):
        x = net.unit(x, f"{p}_layer{b}", stage["width"], stage["kernel"],
                     stride if b == 0 else 1, act=act, dilation=stage["dilation"])
    return x


def _basic_stage(net: NetWriter, g: Genome, x: str, p: str, stage: dict[str, Any],
                 s: int) -> str:
    act, w = _act(g, stage), stage["width"]
    for b in range(stage["depth"]):
        q, stride = f"{p}_block{b}", _stage_stride(net, x, stage) if b == 0 else 1
        y = net.unit(x, q, w, 3, stride, act=act, tag="1")
        y = net.unit(y, q, w, 3, act=None, tag="2")
        if stage["se"]:
            y = net.gate(y, f"{q}_se", act)
        x = net.act(net.add([y, _shortcut(net, x, q, w, stride)], f"{q}_add"), f"{q}_act", act)
    return x


def _preact_stage(net: NetWriter, g: Genome, x: str, p: str, stage: dict[str, Any],
                  s: int) -> str:
    act, w = _act(g, stage), stage["width"]
    for b in range(stage["depth"]):
        q, stride = f"{p}_block{b}", _stage_stride(net, x, stage) if b == 0 else 1
        pre = net.norm_act(x, q, act, "1")
        y = net.conv(pre, f"{q}_conv1", w, 3, stride, bias=net.conv_bias)
        y = net.conv(net.norm_act(y, q, act, "2"), f"{q}_conv2", w, 3, bias=net.conv_bias)
        if stage["se"]:
            y = net.gate(y, f"{q}_se", act)
        x = net.add([y, _shortcut(net, x, q, w, stride, source=pre)], f"{q}_add")
    return x


def _bottleneck_stage(net: NetWriter, g: Genome, x: str, p: str, stage: dict[str, Any],
                      s: int) -> str:
    act, w = _act(g, stage), stage["width"]
    if g["family"] == "resnext":
        groups, mid = stage["groups"], stage["groups"] * stage["group_width"]
    else:
        groups, mid = 1, max(1, w // 4)
    for b in range(stage["depth"]):
        q, stride = f"{p}_block{b}", _stage_stride(net, x, stage) if b == 0 else 1
        y = net.unit(x, q, mid, 1, act=act, tag="1")
        y = net.unit(y, q, mid, 3, stride, act=act, tag="2", groups=groups)
        y = net.unit(y, q, w, 1, act=None, tag="3")
        if stage["se"]:
            y = net.gate(y, f"{q}_se", act)
        x = net.act(net.add([y, _shortcut(net, x, q, w, stride)], f"{q}_add"), f"{q}_act", act)
    return x


def _inverted_stage(net: NetWriter, g: Genome, x: str, p: str, stage: dict[str, Any],
                    s: int) -> str:
    act, w = _act(g, stage), stage["width"]
    for b in range(stage["depth"]):
        q, stride = f"{p}_block{b}", _stage_stride(net, x, stage) if b == 0 else 1
        hidden = net.shapes[x][0] * stage["expansion"]
        y = x
        if stage["expansion"] != 1:
            y = net.unit(y, f"{q}_expand", hidden, 1, act=act)
        y = net.unit(y, f"{q}_dw", hidden, stage["kernel"], stride, act=act, groups=hidden)
        if stage["se"]:
            y = net.gate(y, f"{q}_se", act)
        y = net.unit(y, f"{q}_project", w, 1, act=None)  # linear bottleneck
        x = net.add([y, x], f"{q}_add") if stride == 1 and net.shapes[x][0] == w else y
    return x


def _dense_stage(net: NetWriter, g: Genome, x: str, p: str, stage: dict[str, Any],
                 s: int) -> str:
    act, growth = _act(g, stage), stage["growth"]
    if s > 0:
        t = f"{p}_transition"
        c = net.shapes[x][0]
        x = net.conv(net.norm_act(x, t, act), f"{t}_conv", max(1, c // 2), 1,
                     bias=net.conv_bias)
        if _stage_stride(net, x, stage, floor=True) == 2:
            x = net.pool(x, f"{t}_pool", "avg_pool", 2, 2)
    elif _stage_stride(net, x, stage, floor=True) == 2:
        x = net.pool(x, f"{p}_pool", "avg_pool", 2, 2)
    for layer in range(stage["depth"]):
        q = f"{p}_layer{layer}"
        y = net.norm_act(x, q, act, "1")
        if stage["bottleneck"]:
            y = net.conv(y, f"{q}_conv1", 4 * growth, 1, bias=net.conv_bias)
            y = net.norm_act(y, q, act, "2")
        y = net.conv(y, f"{q}_conv2", growth, 3, bias=net.conv_bias)
        x = net.concat([x, y], f"{q}_concat")
    return x


def _inception_stage(net: NetWriter, g: Genome, x: str, p: str, stage: dict[str, Any],
                     s: int) -> str:
    act, w = _act(g, stage), stage["width"]
    if _stage_stride(net, x, stage) == 2:
        x = net.pool(x, f"{p}_pool", "max_pool", 3, 2)
    # GoogLeNet's proportions: 1/4 1x1, 1/2 3x3 (reduced to 3/4 first), 1/8 5x5 (reduced to
    # half first), the rest pool projection.
    b1, b3, b5 = max(1, w // 4), max(1, w // 2), max(1, w // 8)
    bp = max(1, w - b1 - b3 - b5)
    for m in range(stage["depth"]):
        q = f"{p}_module{m}"
        one = net.unit(x, f"{q}_b1", b1, 1, act=act)
        three = net.unit(net.unit(x, f"{q}_b3_reduce", max(1, 3 * b3 // 4), 1, act=act),
                         f"{q}_b3", b3, 3, act=act)
        five = net.unit(x, f"{q}_b5_reduce", max(1, b5 // 2), 1, act=act)
        if stage["branch"] == "5x5":
            five = net.unit(five, f"{q}_b5", b5, 5, act=act)
        else:
            five = net.unit(net.unit(five, f"{q}_b5a", b5, 3, act=act), f"{q}_b5b", b5, 3,
                            act=act)
        pool = net.unit(net.pool(x, f"{q}_pool", "max_pool", 3, 1), f"{q}_pool_proj", bp, 1,
                        act=act)
        x = net.concat([one, three, five, pool], f"{q}_concat")
    return x


_STAGE_WRITERS: dict[str, Callable[..., str]] = {
    "plain": _plain_stage, "vgg": _plain_stage, "resnet": _basic_stage,
    "preact_resnet": _preact_stage, "resnet_bottleneck": _bottleneck_stage,
    "resnext": _bottleneck_stage, "mobilenet": _inverted_stage, "densenet": _dense_stage,
    "inception": _inception_stage,
}


# ---- convmixer, vit, mlp -----------------------------------------------------------------------


def write_convmixer(net: NetWriter, g: Genome, num_classes: int) -> str:
    act, dim = g["activation"], g["dim"]
    x = net.patchify(net.input, "patch_conv", dim,
                     _effective_patch(g["patch"], net.shapes[net.input]))
    x = net.norm(net.act(x, "patch_act", act), "patch_norm")
    for b in range(g["depth"]):
        q = f"block{b}"
        y = net.conv(x, f"{q}_dw_conv", dim, g["kernel"], groups=dim, bias=True)
        y = net.norm(net.act(y, f"{q}_dw_act", act), f"{q}_dw_norm")
        x = net.add([y, x], f"{q}_add")
        x = net.conv(x, f"{q}_pw_conv", dim, 1, bias=True)
        x = net.norm(net.act(x, f"{q}_pw_act", act), f"{q}_pw_norm")
    return net.map_head(x, g["head"], num_classes)


def write_vit(net: NetWriter, g: Genome, num_classes: int) -> str:
    add, dim, head = net.builder.add, g["dim"], g["head"]
    x = add("patch_embed", net.input, id="patch_embed", embed_dim=dim,
            patch_size=_effective_patch(g["patch"], net.shapes[net.input]))  # (T, D)
    if head["pool"] == "token":
        x = add("class_token", x, id="class_token")  # (T + 1, D)
    x = add("pos_embed", x, id="pos_embed")
    for b in range(g["depth"]):
        q = f"block{b}"
        y = add("layer_norm", x, id=f"{q}_norm1")
        y = add("self_attention", y, id=f"{q}_attn", num_heads=g["heads"])
        x = add("add", x, y, id=f"{q}_add1")
        y = add("layer_norm", x, id=f"{q}_norm2")
        y = add("linear", y, id=f"{q}_fc1", out_features=dim * g["mlp_ratio"])
        y = add(g["activation"], y, id=f"{q}_act")
        y = add("linear", y, id=f"{q}_fc2", out_features=dim)
        x = add("add", x, y, id=f"{q}_add2")
    x = add("layer_norm", x, id="final_norm")
    if head["pool"] == "token":
        x = add("select_token", x, id="head_pool", index=0)  # (D,)
    else:
        x = add("global_avg_pool", x, id="head_pool")  # mean over tokens: (D,)
    return net.classify(x, num_classes, hidden=head["hidden"], dropout=head["dropout"])


def write_mlp(net: NetWriter, g: Genome, num_classes: int) -> str:
    add = net.builder.add
    x = net.reduce_large(net.input, "stem_reduce")
    k = 0
    while math.prod(net.shapes[x]) > MAX_FLAT_FEATURES and net.can_halve(x):
        x, k = net.pool(x, f"stem_pool{k}", "avg_pool", 3, 2), k + 1
    x = add("flatten", x, id="flatten")
    for i, width in enumerate(g["widths"]):
        x = add("linear", x, id=f"layer{i}_fc", out_features=width)
        if g["norm"] != "none":
            x = add(f"{g['norm']}_norm", x, id=f"layer{i}_norm")
        x = add(g["activation"], x, id=f"layer{i}_act")
        if g["dropout"] > 0:
            x = add("dropout", x, id=f"layer{i}_dropout", p=g["dropout"])
    return add("linear", x, id="head_fc", out_features=num_classes)

