"""The ``families`` space: the networks people write for small-image classification.

Every architecture belongs to one named **family** (:data:`FAMILIES`), and a mutation never
leaves it, so that a GHN can be trained without some families and evaluated on them:

* ``plain``: conv - norm - act layers in stages, a stage opening with a stride-2 conv or a 2x2
  max/avg pool; any kernel in 1-7, dilation 1-3. ``vgg``: the same vocabulary, sampled as VGG
  (Simonyan & Zisserman 2015): blocks of 2-4 3x3 convs, 2x2 max pools between, often a
  flatten - MLP - dropout classifier.
* ``resnet`` (basic blocks), ``resnet_bottleneck`` (1x1 - 3x3 - 1x1, width/4 inside), ``resnext``
  (bottlenecks whose 3x3 is grouped, Xie et al. 2017), ``preact_resnet`` (norm - act before each
  conv, He et al. 2016b); CIFAR stems (3x3 conv) or ImageNet stems (7x7 stride 2 + 3x3 max pool,
  as torchvision/timm models applied to 28-32 px inputs have); optional squeeze-excitation.
* ``mobilenet``: inverted residuals (MobileNetV2/V3: 1x1 expand - depthwise kxk - [SE] - linear
  1x1 projection), often with a wide 1x1 conv before the pool.
* ``densenet``: dense blocks (Huang et al. 2017) whose layers (norm - act - [1x1 conv to 4 x
  growth - norm - act] - 3x3 conv to ``growth``) each concatenate their output to their input;
  transitions of norm - act - 1x1 conv halving the channels - [2x2 avg pool]; the classifier
  reads every concatenated channel.
* ``inception``: modules of parallel 1x1, 1x1 - 3x3, 1x1 - 5x5 (or 1x1 - 3x3 - 3x3) and
  3x3 max pool - 1x1 branches, concatenated (Szegedy et al. 2015/2016).
* ``convmixer`` (Trockman & Kolter 2022): a patch conv, then blocks of residual depthwise kxk and
  pointwise convs, each followed by act - norm.
* ``vit`` (Dosovitskiy et al. 2021): ``patch_embed`` - [``class_token``] - ``pos_embed`` -
  pre-norm blocks of self-attention and an MLP, each around an ``add`` - ``layer_norm`` - the
  class token (``select_token``) or the mean of the tokens - classifier.
* ``mlp``: flatten - (linear - norm - act - dropout) x 1-6 - linear (inputs of over 16,384
  values are average-pooled first).

Norms (one per network): ``batch``, ``layer`` (over the channels of a map, as in ConvNeXt),
``group`` (groups of at least 4 channels, at most 32 groups) or ``none`` (convs then have a
bias). Activations: every activation op of the graph format, one per network, sometimes
overridden per stage. Heads: [1x1 conv - norm - act] - global avg/max pool or flatten -
[dropout - linear - act] x 0-2 - [dropout] - linear.

Genome (``docs/spaces.md`` lists every family's fields)::

    {"space": "families", "version": 1, "family": "resnet",
     "activation": "relu", "norm": "batch",
     "stem": {"width": 16, "kernel": 3, "stride": 1, "pool": false},     # or null
     "stages": [{"width": 16, "depth": 3, "stride": 1, "se": false, "activation": null},
                {"width": 32, "depth": 3, "stride": 2, "se": false, "activation": "silu"}],
     "head": {"conv": null, "pool": "avg", "hidden": [], "dropout": 0.0}}

A ``"stride": 2`` that would bring a map below 2x2 is not applied (so one genome builds at any
input of at least 8x8); inputs over 64 per side get 3x3 stride-2 max pools after the stem.

Restricted views: ``FamilySpace(["resnet", "vgg"])`` (or ``get_space("families[resnet,vgg]")``)
samples only those families, ``get_space("families[-densenet,-vit]")`` all but those. A view
has its own name, hence its own seeded stream; it builds and mutates any ``families`` genome.
Graph names carry the family: ``"families/resnet/seed=3"``,
``"families[-vit]/mlp/mutant/seed=1/parent=..."``; :func:`family_of` reads it back.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..graph import ACTIVATIONS, DEFAULT_LIMITS, ArchitectureGraph, GraphLimits
from .base import (
    DEFAULT_INPUT_SHAPE,
    Genome,
    GenomeSearchSpace,
    LayerWriter,
    SearchSpaceError,
    Shape3,
    check_input_shape,
    copy_genome,
    halve,
    halving_budget,
    weighted_choice,
)

SPACE_NAME = "families"
VERSION = 1

FAMILIES: tuple[str, ...] = (
    "plain", "vgg", "resnet", "preact_resnet", "resnet_bottleneck", "resnext", "mobilenet",
    "densenet", "inception", "convmixer", "vit", "mlp",
)
STAGED_FAMILIES: tuple[str, ...] = FAMILIES[:9]
"""Families whose genome is a stem, a list of stages and a head."""

NORMS: tuple[str, ...] = ("batch", "layer", "group", "none")
MLP_NORMS: tuple[str, ...] = ("batch", "layer", "none")
MAP_POOLS: tuple[str, ...] = ("avg", "max", "flatten")
TOKEN_POOLS: tuple[str, ...] = ("token", "mean")
DOWNSAMPLES: tuple[str, ...] = ("conv", "max_pool", "avg_pool")
BRANCHES: tuple[str, ...] = ("5x5", "double3x3")
KERNELS: tuple[int, ...] = (1, 3, 5, 7)
DEPTHWISE_KERNELS: tuple[int, ...] = (3, 5, 7, 9)
GROUPS: tuple[int, ...] = (2, 4, 8, 16, 32)
EXPANSIONS: tuple[int, ...] = (1, 2, 3, 4, 6)
PATCHES: tuple[int, ...] = (1, 2, 3, 4, 5, 7, 8, 14, 16)
HEADS: tuple[int, ...] = (1, 2, 4, 8)
MLP_RATIOS: tuple[int, ...] = (1, 2, 3, 4)
DROPOUTS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5)

MIN_WIDTH, MAX_WIDTH = 4, 2048
WIDTH_STEP = 4
MIN_GROWTH, MAX_GROWTH = 2, 256
MAX_GROUP_WIDTH = 256
MAX_STAGES = 6
MAX_STAGE_DEPTH = 32
MAX_BLOCKS = 32
MAX_MLP_LAYERS = 6
MAX_HIDDEN_LAYERS = 2
MAX_BODY_SIDE = 64
"""Maps wider than this after the stem are max-pooled down (large inputs)."""
MAX_TOKENS = 256
"""Patch sizes are sampled so that attention sees at most this many tokens."""
MAX_FLAT_FEATURES = 16384
"""An MLP's input is average-pooled down to at most this many features (64 channels of 16x16)."""
STRUCTURAL_MUTATION_RATE = 0.15
"""Share of mutations that add or remove a stage, a block or a layer (the rest change one
field); no mutation changes the family."""


# ------------------------------------------------------------------------------------------------
# The space
# ------------------------------------------------------------------------------------------------


class FamilySpace(GenomeSearchSpace):
    """Networks of the named families (see the module docstring); ``families`` restricts the
    view to some of them (all when ``None``)."""

    version = VERSION

    def __init__(self, families: Iterable[str] | None = None):
        allowed = (FAMILIES if families is None else (families,) if isinstance(families, str)
                   else tuple(families))
        unknown = sorted(set(allowed) - set(FAMILIES))
        if unknown:
            raise SearchSpaceError(f"unknown famil{'y' if len(unknown) == 1 else 'ies'} "
                                   f"{', '.join(map(repr, unknown))}; known families: "
                                   f"{', '.join(FAMILIES)}")
        if not allowed:
            raise SearchSpaceError("a families view must allow at least one family")
        self.families: tuple[str, ...] = tuple(f for f in FAMILIES if f in set(allowed))
        self.name = _view_name(self.families)

    @classmethod
    def from_name(cls, name: str) -> FamilySpace:
        """The view ``"families"``, ``"families[a,b]"`` (only those) or ``"families[-a,-b]"``
        (all but those); :class:`SearchSpaceError` for anything else."""
        if name == SPACE_NAME:
            return cls()
        if not (name.startswith(f"{SPACE_NAME}[") and name.endswith("]")):
            raise SearchSpaceError(f"{name!r} is not a families view: write "
                                   f"'{SPACE_NAME}[a,b]' or '{SPACE_NAME}[-a,-b]'")
        items = [item.strip() for item in name[len(SPACE_NAME) + 1:-1].split(",")]
        if not all(items):
            raise SearchSpaceError(f"{name!r}: empty family name; known families: "
                                   f"{', '.join(FAMILIES)}")
        excluded = [item.startswith("-") for item in items]
        if any(excluded) and not all(excluded):
            raise SearchSpaceError(f"{name!r}: either list the families to keep or, each with "
                                   f"a leading '-', those to leave out, not both")
        names = [item.lstrip("-").strip() for item in items]
        cls(names)  # names the unknown ones
        return cls([f for f in FAMILIES if f not in names] if all(excluded) else names)

    # ---- what a space defines ------------------------------------------------------------------

    def sample_genome(self, rng: random.Random,
                      input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE) -> Genome:
        shape = check_input_shape(input_shape)
        family = rng.choice(self.families)
        return {"space": SPACE_NAME, "version": VERSION, "family": family,
                **_SAMPLERS[family](rng, shape)}

    def mutate_genome(self, genome: Genome, rng: random.Random,
                      input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE) -> Genome:
        self.check_genome(genome)
        check_input_shape(input_shape)
        for _ in range(100):
            child = copy_genome(genome)
            if rng.random() < STRUCTURAL_MUTATION_RATE:
                _mutate_structure(child, rng)
            else:
                _mutate_field(child, rng)
            if child != genome and _genome_problem(child) is None:
                return child
        raise AssertionError("no valid mutation found in 100 draws")  # a depth always works

    def shrink_genome(self, genome: Genome, factor: float) -> Genome | None:
        smaller = copy_genome(genome)
        _scale_widths(smaller, factor)
        return None if smaller == genome else smaller

    def check_genome(self, genome: Any) -> None:
        if not isinstance(genome, dict):
            raise SearchSpaceError(
                f"a {SPACE_NAME!r} genome must be a dict, got {type(genome).__name__}")
        if genome.get("space") != SPACE_NAME:
            raise SearchSpaceError(
                f"genome of space {genome.get('space')!r} given to space {self.name!r}")
        if genome.get("version") != VERSION:
            raise SearchSpaceError(
                f"{SPACE_NAME!r} genome version {genome.get('version')!r} is not supported "
                f"(expected {VERSION})")
        problem = _genome_problem(genome)
        if problem:
            raise SearchSpaceError(f"invalid {SPACE_NAME!r} genome: {problem}")

    def genome_to_graph(self, genome: Genome, input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
                        num_classes: int = 10, *, name: str | None = None,
                        limits: GraphLimits = DEFAULT_LIMITS) -> ArchitectureGraph:
        """The graph of ``genome``. A ``name`` of this space (``"<space>/<rest>"``, as sampling
        and mutation give) gets the family after the space: ``"<space>/<family>/<rest>"``."""
        self.check_genome(genome)
        shape = check_input_shape(input_shape)
        family = genome["family"]
        if name is not None and name.startswith(f"{self.name}/") and family_of(name) is None:
            name = f"{self.name}/{family}/{name[len(self.name) + 1:]}"
        net = _NetWriter(shape, name, genome.get("norm", "none"), genome["activation"])
        logits = _WRITERS[family](net, genome, num_classes)
        return net.build(logits, num_classes, limits)


def family_of(graph_or_name: ArchitectureGraph | Genome | str | None) -> str | None:
    """The family of a graph sampled or mutated by a families space (read from its name), of a
    ``families`` genome, or of such a graph's name; ``None`` for anything else."""
    if isinstance(graph_or_name, dict):
        family = graph_or_name.get("family")
        return family if graph_or_name.get("space") == SPACE_NAME and family in FAMILIES \
            else None
    name = graph_or_name.name if isinstance(graph_or_name, ArchitectureGraph) else graph_or_name
    if not isinstance(name, str):
        return None
    space, _, rest = name.partition("/")
    family = rest.partition("/")[0]
    if family in FAMILIES and (space == SPACE_NAME or space.startswith(f"{SPACE_NAME}[")):
        return family
    return None


def _view_name(families: tuple[str, ...]) -> str:
    """``families``, or the shorter of the two bracket forms (the same set, the same name)."""
    if families == FAMILIES:
        return SPACE_NAME
    left_out = [f for f in FAMILIES if f not in families]
    if len(left_out) < len(families):
        return f"{SPACE_NAME}[{','.join('-' + f for f in left_out)}]"
    return f"{SPACE_NAME}[{','.join(families)}]"


# ------------------------------------------------------------------------------------------------
# Writing graphs
# ------------------------------------------------------------------------------------------------


def _num_groups(channels: int) -> int:
    """Group norm's groups: at most 32, of at least 4 channels where the width allows."""
    return math.gcd(channels, max(1, min(32, channels // 4)))


class _NetWriter(LayerWriter):
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


def _write_staged(net: _NetWriter, g: Genome, num_classes: int) -> str:
    family = g["family"]
    x = _write_stem(net, g, net.input)
    for s, stage in enumerate(g["stages"]):
        x = _STAGE_WRITERS[family](net, g, x, f"stage{s}", stage, s)
    if family in ("preact_resnet", "densenet"):  # their blocks end on a conv
        x = net.norm_act(x, "final", g["activation"])
    return net.map_head(x, g["head"], num_classes)


def _write_stem(net: _NetWriter, g: Genome, x: str) -> str:
    stem = g["stem"]
    if stem is not None:
        stride = stem["stride"] if net.can_halve(x) else 1
        x = net.conv(x, "stem_conv", stem["width"], stem["kernel"], stride, bias=net.conv_bias)
        if g["family"] != "preact_resnet" or stem["pool"]:  # pre-activation blocks norm first
            x = net.norm_act(x, "stem", g["activation"])
        if stem["pool"] and net.can_halve(x):
            x = net.pool(x, "stem_pool", "max_pool", 3, 2)
    return net.reduce_large(x, "stem_reduce")


def _stage_stride(net: _NetWriter, x: str, stage: dict[str, Any], floor: bool = False) -> int:
    return 2 if stage["stride"] == 2 and net.can_halve(x, floor=floor) else 1


def _act(g: Genome, stage: dict[str, Any]) -> str:
    return stage["activation"] or g["activation"]


def _shortcut(net: _NetWriter, x: str, p: str, width: int, stride: int,
              source: str | None = None) -> str:
    """The input itself when the shape is kept, else a strided 1x1 conv [- norm]."""
    if stride == 1 and net.shapes[x][0] == width:
        return x
    y = net.conv(source or x, f"{p}_shortcut_conv", width, 1, stride, bias=net.conv_bias)
    return y if source else net.norm(y, f"{p}_shortcut_norm")


def _plain_stage(net: _NetWriter, g: Genome, x: str, p: str, stage: dict[str, Any],
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


def _basic_stage(net: _NetWriter, g: Genome, x: str, p: str, stage: dict[str, Any],
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


def _preact_stage(net: _NetWriter, g: Genome, x: str, p: str, stage: dict[str, Any],
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


def _bottleneck_stage(net: _NetWriter, g: Genome, x: str, p: str, stage: dict[str, Any],
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


def _inverted_stage(net: _NetWriter, g: Genome, x: str, p: str, stage: dict[str, Any],
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


def _dense_stage(net: _NetWriter, g: Genome, x: str, p: str, stage: dict[str, Any],
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


def _inception_stage(net: _NetWriter, g: Genome, x: str, p: str, stage: dict[str, Any],
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


def _write_convmixer(net: _NetWriter, g: Genome, num_classes: int) -> str:
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


def _write_vit(net: _NetWriter, g: Genome, num_classes: int) -> str:
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


def _write_mlp(net: _NetWriter, g: Genome, num_classes: int) -> str:
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


_WRITERS: dict[str, Callable[[_NetWriter, Genome, int], str]] = {
    **{family: _write_staged for family in STAGED_FAMILIES},
    "convmixer": _write_convmixer, "vit": _write_vit, "mlp": _write_mlp,
}


# ------------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------------

_ACTIVATION_WEIGHTS: dict[str, float] = {
    "relu": 40, "gelu": 9, "silu": 9, "relu6": 6, "leaky_relu": 7, "elu": 5, "hardswish": 5,
    "mish": 4, "tanh": 6, "sigmoid": 2, "hardsigmoid": 1,
}
_FAMILY_ACTIVATIONS: dict[str, dict[str, float]] = {
    "mobilenet": {"relu6": 30, "hardswish": 25, "silu": 20, "relu": 20},
    "vit": {"gelu": 70, "relu": 10, "silu": 10},
    "convmixer": {"gelu": 60, "relu": 20, "silu": 10},
}
_NORM_WEIGHTS = (("batch", 62), ("none", 16), ("group", 11), ("layer", 11))


def _round_width(width: float, *, floor: bool = False, step: int = WIDTH_STEP,
                 least: int = MIN_WIDTH, most: int = MAX_WIDTH) -> int:
    steps = int(width // step) if floor else round(width / step)
    return min(most, max(least, steps * step))


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _sample_activation(rng: random.Random, family: str) -> str:
    table = _FAMILY_ACTIVATIONS.get(family)
    if table and rng.random() < 0.85:
        return weighted_choice(rng, tuple(table.items()))
    return weighted_choice(rng, tuple(_ACTIVATION_WEIGHTS.items()))


def _stage_activation(rng: random.Random) -> str | None:
    """Most networks use one activation throughout; some change it in a stage."""
    return rng.choice(ACTIVATIONS) if rng.random() < 0.12 else None


def _sample_strides(rng: random.Random, stages: int, budget: int) -> list[int]:
    """Where the stages reduce: nowhere, at one stage, at every stage after the first
    (the usual schedule) or at every stage, as the input's ``budget`` of halvings allows."""
    schedule = weighted_choice(rng, (("none", 1), ("one", 2), ("usual", 8), ("every", 2)))
    if schedule == "none" or stages == 1 and schedule != "every":
        picked: list[int] = []
    elif schedule == "one":
        picked = [rng.randrange(1, stages)]
    elif schedule == "usual":
        picked = list(range(1, stages))
    else:
        picked = list(range(stages))
    picked = picked[-budget:] if budget else []  # the last ones: reduce late rather than early
    return [2 if s in picked else 1 for s in range(stages)]


def _sample_stem(rng: random.Random, width: int, *, none: float = 0.0,
                 imagenet: float = 0.2) -> dict[str, Any] | None:
    u = rng.random()
    if u < none:
        return None
    if u < none + imagenet:  # torchvision / timm ResNets and friends on small inputs
        return {"width": width, "kernel": 7, "stride": 2, "pool": True}
    return {"width": width, "kernel": weighted_choice(rng, ((3, 8), (5, 1))),
            "stride": weighted_choice(rng, ((1, 5), (2, 1))), "pool": False}


def _stem_halvings(stem: dict[str, Any] | None) -> int:
    return 0 if stem is None else (stem["stride"] == 2) + stem["pool"]


def _body_budget(shape: Shape3, stem: dict[str, Any] | None) -> int:
    side = min(shape[1:])
    while side > MAX_BODY_SIDE:
        side = halve(side)
    return max(0, halving_budget(side) - _stem_halvings(stem))


def _sample_map_head(rng: random.Random, *, flatten: float = 0.1, conv: float = 0.05,
                     last_width: int = 64, mlp: float = 0.2) -> dict[str, Any]:
    pool = "flatten" if rng.random() < flatten else weighted_choice(rng, (("avg", 6),
                                                                          ("max", 1)))
    return {
        "conv": _round_width(last_width * rng.choice([2, 4])) if rng.random() < conv else None,
        "pool": pool,
        **_sample_classifier(rng, mlp),
    }


def _sample_classifier(rng: random.Random, mlp: float) -> dict[str, Any]:
    hidden = []
    if rng.random() < mlp:
        hidden = [rng.choice([64, 128, 256, 512])]
        if rng.random() < 0.3:
            hidden.append(rng.choice([32, 64, 128]))
    dropout = weighted_choice(rng, ((0.0, 5), (0.1, 1), (0.2, 2), (0.3, 1), (0.5, 2)))
    return {"hidden": hidden, "dropout": dropout if hidden or rng.random() < 0.4 else 0.0}


def _final_side(shape: Shape3, stem: dict[str, Any] | None, strides: list[int]) -> int:
    side = min(shape[1:])
    for _ in range(_stem_halvings(stem)):
        side = halve(side)
    while side > MAX_BODY_SIDE:
        side = halve(side)
    for s in strides:
        if s == 2 and halve(side) >= 2:
            side = halve(side)
    return side


def _stage_widths(rng: random.Random, base: float, strides: list[int],
                  growth: tuple[float, ...] = (1.5, 2, 2)) -> list[int]:
    widths, width = [], base
    for s, stride in enumerate(strides):
        if s > 0:
            width *= rng.choice(growth) if stride == 2 else rng.choice([1, 1, 1.5])
        widths.append(_round_width(width))
    return widths


def _sample_staged(rng: random.Random, shape: Shape3, family: str, *,
                   stages: tuple[tuple[int, float], ...], base: tuple[float, float],
                   stem: dict[str, Any] | None,
                   stage_fields: Callable[[random.Random, int], dict[str, Any]],
                   depth: tuple[tuple[int, float], ...] = ((1, 3), (2, 4), (3, 3), (4, 2)),
                   growth: tuple[float, ...] = (1.5, 2, 2),
                   schedule: Callable[[random.Random, int, int], list[int]] = _sample_strides
                   ) -> dict[str, Any]:
    """Fields of a staged genome: stages widen where they reduce; ``stage_fields(rng, s)``
    adds the family's own fields to stage ``s``."""
    n = weighted_choice(rng, stages)
    strides = schedule(rng, n, _body_budget(shape, stem))
    widths = _stage_widths(rng, _log_uniform(rng, *base), strides, growth)
    body = []
    for s in range(n):
        stage: dict[str, Any] = {"width": widths[s], "depth": weighted_choice(rng, depth),
                                 "stride": strides[s]}
        stage.update(stage_fields(rng, s))
        stage["activation"] = _stage_activation(rng)
        body.append(stage)
    final = _final_side(shape, stem, strides)
    head = _sample_map_head(rng, flatten=0.25 if final <= 7 else 0.0, last_width=widths[-1])
    return {"activation": _sample_activation(rng, family),
            "norm": weighted_choice(rng, _NORM_WEIGHTS),
            "stem": stem, "stages": body, "head": head}


def _sample_plain(rng: random.Random, shape: Shape3) -> dict[str, Any]:
    kernel = weighted_choice(rng, ((3, 12), (5, 3), (7, 1), (1, 1)))
    downsample = weighted_choice(rng, (("max_pool", 5), ("conv", 4), ("avg_pool", 2)))
    dilation = weighted_choice(rng, ((1, 10), (2, 2), (3, 1)))

    def fields(rng: random.Random, s: int) -> dict[str, Any]:
        return {"downsample": downsample,
                "kernel": kernel if rng.random() < 0.8 else rng.choice(KERNELS),
                "dilation": dilation if rng.random() < 0.8 else 1}

    width = _log_uniform(rng, 12, 64)
    return _sample_staged(
        rng, shape, "plain", stages=((1, 2), (2, 4), (3, 4), (4, 3), (5, 1)),
        base=(12, 96), depth=((1, 5), (2, 4), (3, 2)), stage_fields=fields,
        stem=_sample_stem(rng, _round_width(width), none=0.6, imagenet=0.05))


def _sample_vgg(rng: random.Random, shape: Shape3) -> dict[str, Any]:
    fields = _sample_staged(
        rng, shape, "vgg", stages=((2, 2), (3, 4), (4, 3), (5, 1)), base=(8, 64),
        depth=((2, 5), (3, 3), (4, 1)), growth=(2,), stem=None,
        stage_fields=lambda rng, s: {"downsample": "max_pool", "kernel": 3, "dilation": 1},
        schedule=lambda rng, n, budget: [1] + [2] * (n - 1))  # a max pool between blocks
    fields["stages"][0]["depth"] = min(fields["stages"][0]["depth"], 2)
    if rng.random() < 0.5:  # VGG's classifier: flatten - (linear - act - dropout) x 2
        fields["head"] = {"conv": None, "pool": "flatten",
                          "hidden": [rng.choice([128, 256, 512])] * rng.choice([1, 2]),
                          "dropout": 0.5}
    return fields


def _resnet_stem(rng: random.Random, width: int) -> dict[str, Any] | None:
    return _sample_stem(rng, width, imagenet=0.25)


def _sample_resnet(family: str) -> Callable[[random.Random, Shape3], dict[str, Any]]:
    def sample(rng: random.Random, shape: Shape3) -> dict[str, Any]:
        base = _log_uniform(rng, 8, 64)
        se = rng.random() < 0.2
        return _sample_staged(
            rng, shape, family, stages=((2, 2), (3, 5), (4, 3)), base=(base, base),
            depth=((1, 3), (2, 4), (3, 3), (4, 1), (6, 1), (9, 1)), growth=(2,),
            stem=_resnet_stem(rng, _round_width(base)),
            stage_fields=lambda rng, s: {"se": se and rng.random() < 0.9})
    return sample


def _sample_bottleneck(rng: random.Random, shape: Shape3) -> dict[str, Any]:
    base = _log_uniform(rng, 32, 192)
    se = rng.random() < 0.2
    return _sample_staged(
        rng, shape, "resnet_bottleneck", stages=((2, 2), (3, 5), (4, 3)), base=(base, base),
        depth=((1, 3), (2, 4), (3, 3), (4, 2), (6, 1)), growth=(2,),
        stem=_resnet_stem(rng, _round_width(base / 4 * rng.choice([1, 2]))),
        stage_fields=lambda rng, s: {"se": se and rng.random() < 0.9})


def _sample_resnext(rng: random.Random, shape: Shape3) -> dict[str, Any]:
    base = _log_uniform(rng, 32, 192)
    groups = weighted_choice(rng, ((2, 1), (4, 2), (8, 3), (16, 2), (32, 2)))
    group_width = weighted_choice(rng, ((1, 1), (2, 2), (4, 3), (8, 1)))
    se = rng.random() < 0.15
    fields = _sample_staged(
        rng, shape, "resnext", stages=((2, 2), (3, 5), (4, 3)), base=(base, base),
        depth=((1, 3), (2, 4), (3, 3), (4, 1)), growth=(2,),
        stem=_resnet_stem(rng, _round_width(base / 4 * rng.choice([1, 2]))),
        stage_fields=lambda rng, s: {"se": se, "groups": groups, "group_width": group_width})
    for s, stage in enumerate(fields["stages"]):  # ResNeXt doubles the group width per stage
        stage["group_width"] = min(MAX_GROUP_WIDTH, group_width * 2 ** s)
    return fields


def _sample_mobilenet(rng: random.Random, shape: Shape3) -> dict[str, Any]:
    se = weighted_choice(rng, (("none", 5), ("late", 3), ("all", 2)))
    kernel = weighted_choice(rng, ((3, 6), (5, 3), (7, 1)))

    def fields(rng: random.Random, s: int) -> dict[str, Any]:
        return {"expansion": 1 if s == 0 and rng.random() < 0.6 else
                weighted_choice(rng, ((2, 1), (3, 2), (4, 2), (6, 4))),
                "kernel": kernel if rng.random() < 0.7 else rng.choice([3, 5, 7]),
                "se": se == "all" or se == "late" and s >= 2}

    base = _log_uniform(rng, 8, 32)
    fields_ = _sample_staged(
        rng, shape, "mobilenet", stages=((3, 2), (4, 3), (5, 3), (6, 2)), base=(base, base),
        depth=((1, 4), (2, 4), (3, 3), (4, 1)), growth=(1.5, 2),
        stem=_sample_stem(rng, _round_width(base * rng.choice([1, 2])), imagenet=0.0),
        stage_fields=fields)
    last = fields_["stages"][-1]["width"]
    if rng.random() < 0.5:  # MobileNetV2/V3's wide 1x1 conv before the pool
        fields_["head"]["conv"] = _round_width(last * rng.choice([2, 4, 6]))
    return fields_


def _sample_densenet(rng: random.Random, shape: Shape3) -> dict[str, Any]:
    growth = weighted_choice(rng, ((4, 1), (6, 1), (8, 2), (12, 3), (16, 2), (24, 1), (32, 1)))
    bottleneck = rng.random() < 0.7
    n = weighted_choice(rng, ((2, 2), (3, 5), (4, 3)))
    stem = _sample_stem(rng, _round_width(2 * growth), imagenet=0.2)
    strides = _sample_strides(rng, n, _body_budget(shape, stem))
    per_block = weighted_choice(rng, ((2, 2), (4, 3), (6, 3), (8, 2), (12, 2), (16, 1)))
    stages = [{"growth": growth, "depth": max(1, per_block + rng.choice([-1, 0, 0, 1]) * (s > 0)),
               "stride": strides[s], "bottleneck": bottleneck,
               "activation": _stage_activation(rng)} for s in range(n)]
    return {"activation": _sample_activation(rng, "densenet"),
            "norm": weighted_choice(rng, _NORM_WEIGHTS), "stem": stem, "stages": stages,
            "head": _sample_map_head(rng, flatten=0.0, mlp=0.1)}


def _sample_inception(rng: random.Random, shape: Shape3) -> dict[str, Any]:
    branch = weighted_choice(rng, (("5x5", 1), ("double3x3", 1)))
    base = _log_uniform(rng, 32, 192)
    return _sample_staged(
        rng, shape, "inception", stages=((1, 2), (2, 4), (3, 3)), base=(base, base),
        depth=((1, 4), (2, 4), (3, 2)), growth=(1.5, 2),
        stem=_sample_stem(rng, _round_width(base / 2), imagenet=0.2),
        stage_fields=lambda rng, s: {"branch": branch})


def _sample_convmixer(rng: random.Random, shape: Shape3) -> dict[str, Any]:
    side = min(shape[1:])
    # Maps of 7 to 16 per side mostly, as ConvMixers on CIFAR (patch 1-2 of 32 px) are rare.
    patches = ([(p, 4) for p in PATCHES if 7 <= side // p <= 16]
               + [(p, 1) for p in PATCHES if 4 <= side // p <= 32])
    return {"activation": _sample_activation(rng, "convmixer"),
            "norm": weighted_choice(rng, (("batch", 7), ("layer", 1), ("group", 1),
                                          ("none", 1))),
            "patch": weighted_choice(rng, patches or [(max(1, side // 4), 1)]),
            "dim": _round_width(_log_uniform(rng, 32, 384)),
            "depth": weighted_choice(rng, ((2, 1), (4, 3), (6, 3), (8, 3), (12, 2), (16, 1))),
            "kernel": weighted_choice(rng, ((3, 2), (5, 3), (7, 2), (9, 2))),
            "head": _sample_map_head(rng, flatten=0.0, mlp=0.1)}


def _sample_vit(rng: random.Random, shape: Shape3) -> dict[str, Any]:
    _, h, w = shape
    patches = [p for p in PATCHES if 4 <= (h // p) * (w // p) <= MAX_TOKENS] or [min(h, w) // 2]
    heads = weighted_choice(rng, ((1, 1), (2, 3), (4, 4), (8, 2)))
    step = max(WIDTH_STEP, heads)
    return {"activation": _sample_activation(rng, "vit"),
            "patch": rng.choice(patches),
            "dim": _round_width(_log_uniform(rng, 16, 256), step=step, least=step),
            "depth": weighted_choice(rng, ((1, 1), (2, 2), (4, 3), (6, 3), (8, 2), (12, 1))),
            "heads": heads, "mlp_ratio": weighted_choice(rng, ((1, 1), (2, 3), (3, 1), (4, 4))),
            "head": {"pool": weighted_choice(rng, (("token", 3), ("mean", 2))),
                     **_sample_classifier(rng, 0.1)}}


def _sample_mlp(rng: random.Random, shape: Shape3) -> dict[str, Any]:
    layers = weighted_choice(rng, ((1, 3), (2, 4), (3, 3), (4, 1), (6, 1)))
    width = _log_uniform(rng, 64, 1536)
    taper = rng.choice([1.0, 1.0, 0.5])
    widths = [_round_width(width * taper ** i) for i in range(layers)]
    return {"activation": _sample_activation(rng, "mlp"),
            "norm": weighted_choice(rng, (("none", 5), ("batch", 3), ("layer", 2))),
            "widths": widths, "dropout": weighted_choice(rng, ((0.0, 5), (0.1, 1), (0.2, 2),
                                                               (0.5, 1)))}


_SAMPLERS: dict[str, Callable[[random.Random, Shape3], dict[str, Any]]] = {
    "plain": _sample_plain, "vgg": _sample_vgg, "resnet": _sample_resnet("resnet"),
    "preact_resnet": _sample_resnet("preact_resnet"), "resnet_bottleneck": _sample_bottleneck,
    "resnext": _sample_resnext, "mobilenet": _sample_mobilenet, "densenet": _sample_densenet,
    "inception": _sample_inception, "convmixer": _sample_convmixer, "vit": _sample_vit,
    "mlp": _sample_mlp,
}


# ------------------------------------------------------------------------------------------------
# Mutation and narrowing (each edits a copy in place; the caller checks it)
# ------------------------------------------------------------------------------------------------


def _other(options: Sequence[Any]) -> Callable[[Any, random.Random, dict], Any]:
    return lambda value, rng, where: rng.choice([o for o in options if o != value] or [value])


def _scaled(step: int = WIDTH_STEP, least: int = MIN_WIDTH, most: int = MAX_WIDTH
            ) -> Callable[[Any, random.Random, dict], Any]:
    return lambda value, rng, where: _round_width(
        value * rng.choice([0.5, 0.75, 1.25, 1.5, 2]), step=step, least=least, most=most)


def _stepped(most: int) -> Callable[[Any, random.Random, dict], Any]:
    return lambda value, rng, where: min(most, max(1, value + rng.choice([-1, 1])))


def _new_dim(value: int, rng: random.Random, where: dict) -> int:
    step = max(WIDTH_STEP, where.get("heads", 1))
    return _round_width(value * rng.choice([0.5, 0.75, 1.25, 1.5, 2]), step=step, least=step)


def _new_heads(value: int, rng: random.Random, where: dict) -> int:
    return rng.choice([h for h in HEADS if h != value and where["dim"] % h == 0] or [value])


def _new_hidden(value: list[int], rng: random.Random, where: dict) -> list[int]:
    return _sample_classifier(rng, 0.7)["hidden"]


def _new_head_conv(value: int | None, rng: random.Random, where: dict) -> int | None:
    return None if value else rng.choice([128, 256, 512])


def _new_stem(value: dict | None, rng: random.Random, where: dict) -> dict | None:
    width = value["width"] if value else 16
    return _sample_stem(rng, width, none=0.2 if value else 0.0, imagenet=0.3)


def _new_stage_activation(value: str | None, rng: random.Random, where: dict) -> str | None:
    return None if value else rng.choice(ACTIVATIONS)


def _toggle(value: bool, rng: random.Random, where: dict) -> bool:
    return not value


_ALTERNATIVES: dict[str, Callable[[Any, random.Random, dict], Any]] = {
    "width": _scaled(), "conv": _new_head_conv, "growth": _scaled(1, MIN_GROWTH, MAX_GROWTH),
    "group_width": _scaled(1, 1, MAX_GROUP_WIDTH), "depth": _stepped(MAX_STAGE_DEPTH),
    "stride": lambda value, rng, where: 3 - value, "downsample": _other(DOWNSAMPLES),
    "kernel": lambda value, rng, where: rng.choice(
        [k for k in (DEPTHWISE_KERNELS if "patch" in where or "expansion" in where
                     else KERNELS) if k != value]),
    "dilation": _other((1, 2, 3)), "se": _toggle, "bottleneck": _toggle,
    "groups": _other(GROUPS), "expansion": _other(EXPANSIONS), "branch": _other(BRANCHES),
    "patch": _other(PATCHES), "dim": _new_dim, "heads": _new_heads,
    "mlp_ratio": _other(MLP_RATIOS), "dropout": _other(DROPOUTS), "hidden": _new_hidden,
    "stem": _new_stem,
    "pool": lambda value, rng, where: rng.choice(
        [p for p in (MAP_POOLS if "conv" in where else TOKEN_POOLS) if p != value]),
}
"""For each mutable field: ``(value, rng, the dict holding it) -> another value``."""


def _mutate_field(g: Genome, rng: random.Random) -> None:
    """Changes one field: of the network, of one stage, of the head or one MLP width."""
    sites: list[tuple[dict | list, Any]] = []
    holders: list[dict] = [g, g["head"]] if "head" in g else [g]
    holders += g.get("stages", [])
    for holder in holders:
        sites += [(holder, key) for key in holder
                  if key in _ALTERNATIVES or key == "activation" or key == "norm"]
    sites += [(g["widths"], i) for i in range(len(g.get("widths", [])))]
    holder, key = rng.choice(sites)
    if isinstance(holder, list):  # an MLP width
        holder[key] = _ALTERNATIVES["width"](holder[key], rng, g)
    elif key == "activation":
        holder[key] = (_new_stage_activation(holder[key], rng, holder) if holder is not g
                       else _other(ACTIVATIONS)(holder[key], rng, holder))
    elif key == "norm":
        holder[key] = _other(MLP_NORMS if g["family"] == "mlp" else NORMS)(holder[key], rng, g)
    else:
        holder[key] = _ALTERNATIVES[key](holder[key], rng, holder)


def _mutate_structure(g: Genome, rng: random.Random) -> None:
    """Adds or removes a stage (staged families), a block (convmixer, vit) or a layer (mlp)."""
    if "stages" in g:
        items, limit, new = g["stages"], MAX_STAGES, lambda s: {**copy_genome(s), "stride": 1}
    elif "widths" in g:
        items, limit, new = g["widths"], MAX_MLP_LAYERS, lambda w: w
    else:
        g["depth"] = _stepped(MAX_BLOCKS)(g["depth"], rng, g)
        return
    i = rng.randrange(len(items))
    if len(items) == 1 or len(items) < limit and rng.random() < 0.5:
        items.insert(i + 1, new(items[i]))
    else:
        items.pop(i)


def _scale_widths(g: Genome, factor: float) -> None:
    def scaled(value: int, **kwargs: int) -> int:
        return min(value, _round_width(value * factor, floor=True, **kwargs))

    if g.get("stem"):
        g["stem"]["width"] = scaled(g["stem"]["width"])
    for stage in g.get("stages", []):
        if "width" in stage:
            stage["width"] = scaled(stage["width"])
        if "growth" in stage:
            stage["growth"] = scaled(stage["growth"], step=1, least=MIN_GROWTH)
        if "group_width" in stage:
            stage["group_width"] = scaled(stage["group_width"], step=1, least=1)
    if "widths" in g:
        g["widths"] = [scaled(w) for w in g["widths"]]
    if "dim" in g:
        step = max(WIDTH_STEP, g.get("heads", 1))
        g["dim"] = scaled(g["dim"], step=step, least=step)
    head = g.get("head")
    if head:
        if head.get("conv"):
            head["conv"] = scaled(head["conv"])
        head["hidden"] = [scaled(w) for w in head["hidden"]]


# ------------------------------------------------------------------------------------------------
# Checking a genome (hostile input: every field's type and range)
# ------------------------------------------------------------------------------------------------


def _is_int(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _int_in(lo: int, hi: int) -> Callable[[Any], str | None]:
    return lambda v: None if _is_int(v, lo, hi) else f"an int in [{lo}, {hi}]"


def _one_of(options: Sequence[Any]) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        ok = any(v == o and type(v) is type(o) for o in options)
        return None if ok else f"one of {list(options)}"
    return check


def _flag(v: Any) -> str | None:
    return None if isinstance(v, bool) else "a bool"


def _maybe_activation(v: Any) -> str | None:
    return None if v is None or v in ACTIVATIONS else f"null or one of {list(ACTIVATIONS)}"


def _probability(v: Any) -> str | None:
    ok = isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v < 1
    return None if ok else "a number in [0, 1)"


def _int_list(lo: int, hi: int, min_len: int, max_len: int) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        ok = (isinstance(v, list) and min_len <= len(v) <= max_len
              and all(_is_int(w, lo, hi) for w in v))
        return None if ok else f"a list of {min_len} to {max_len} ints in [{lo}, {hi}]"
    return check


_WIDTH = _int_in(MIN_WIDTH, MAX_WIDTH)
_HIDDEN = _int_list(MIN_WIDTH, MAX_WIDTH, 0, MAX_HIDDEN_LAYERS)
_ACTIVATION = _one_of(ACTIVATIONS)

_STEM_FIELDS = {"width": _WIDTH, "kernel": _one_of(KERNELS), "stride": _int_in(1, 2),
                "pool": _flag}
_MAP_HEAD_FIELDS = {"conv": lambda v: None if v is None or _WIDTH(v) is None
                    else f"null or {_WIDTH(v)}",
                    "pool": _one_of(MAP_POOLS), "hidden": _HIDDEN, "dropout": _probability}
_TOKEN_HEAD_FIELDS = {"pool": _one_of(TOKEN_POOLS), "hidden": _HIDDEN, "dropout": _probability}

_STAGE_COMMON = {"depth": _int_in(1, MAX_STAGE_DEPTH), "stride": _int_in(1, 2),
                 "activation": _maybe_activation}
_PLAIN_STAGE = {"width": _WIDTH, **_STAGE_COMMON, "downsample": _one_of(DOWNSAMPLES),
                "kernel": _one_of(KERNELS), "dilation": _int_in(1, 3)}
_RESIDUAL_STAGE = {"width": _WIDTH, **_STAGE_COMMON, "se": _flag}
_STAGE_FIELDS: dict[str, dict[str, Callable[[Any], str | None]]] = {
    "plain": _PLAIN_STAGE, "vgg": _PLAIN_STAGE, "resnet": _RESIDUAL_STAGE,
    "preact_resnet": _RESIDUAL_STAGE, "resnet_bottleneck": _RESIDUAL_STAGE,
    "resnext": {**_RESIDUAL_STAGE, "groups": _one_of(GROUPS),
                "group_width": _int_in(1, MAX_GROUP_WIDTH)},
    "mobilenet": {**_RESIDUAL_STAGE, "expansion": _one_of(EXPANSIONS),
                  "kernel": _one_of(DEPTHWISE_KERNELS)},
    "densenet": {"growth": _int_in(MIN_GROWTH, MAX_GROWTH), **_STAGE_COMMON,
                 "bottleneck": _flag},
    "inception": {"width": _WIDTH, **_STAGE_COMMON, "branch": _one_of(BRANCHES)},
}

_HEADER = ("space", "version", "family")
_FIELDS: dict[str, dict[str, Callable[[Any], str | None]]] = {
    **{family: {"activation": _ACTIVATION, "norm": _one_of(NORMS)}
       for family in STAGED_FAMILIES},  # + stem, stages, head: checked below
    "convmixer": {"activation": _ACTIVATION, "norm": _one_of(NORMS),
                  "patch": _one_of(PATCHES), "dim": _WIDTH,
                  "depth": _int_in(1, MAX_BLOCKS), "kernel": _one_of(DEPTHWISE_KERNELS)},
    "vit": {"activation": _ACTIVATION, "patch": _one_of(PATCHES), "dim": _WIDTH,
            "depth": _int_in(1, MAX_BLOCKS), "heads": _one_of(HEADS),
            "mlp_ratio": _one_of(MLP_RATIOS)},
    "mlp": {"activation": _ACTIVATION, "norm": _one_of(MLP_NORMS),
            "widths": _int_list(MIN_WIDTH, MAX_WIDTH, 1, MAX_MLP_LAYERS),
            "dropout": _probability},
}
_HEAD_FIELDS = {**{family: _MAP_HEAD_FIELDS for family in (*STAGED_FAMILIES, "convmixer")},
                "vit": _TOKEN_HEAD_FIELDS}


def _fields_problem(where: str, value: Any, fields: dict[str, Callable[[Any], str | None]]
                    ) -> str | None:
    if not isinstance(value, dict):
        return f"{where} must be a dict with the keys {sorted(fields)}"
    if set(value) != set(fields):
        return (f"{where}: missing keys {sorted(set(fields) - set(value))}, "
                f"unknown keys {sorted(set(value) - set(fields), key=str)}")
    for key, check in fields.items():
        wanted = check(value[key])
        if wanted:
            return f"{where}: {key!r} must be {wanted}, got {value[key]!r}"
    return None


def _genome_problem(g: dict[str, Any]) -> str | None:
    """The first thing wrong with a families genome (header checked by the caller)."""
    family = g.get("family")
    if not isinstance(family, str) or family not in FAMILIES:
        return f"'family' must be one of {list(FAMILIES)}, got {family!r}"
    top = {key: value for key, value in g.items() if key not in _HEADER}
    fields: dict[str, Callable[[Any], str | None]] = dict(_FIELDS[family])
    structured = ({"stem", "stages", "head"} if family in STAGED_FAMILIES
                  else {"head"} if family in _HEAD_FIELDS else set())
    expected = set(fields) | structured
    if set(top) != expected:
        return (f"a {family!r} genome has the keys {sorted({*_HEADER, *expected})}: missing "
                f"{sorted(expected - set(top))}, unknown {sorted(set(top) - expected, key=str)}")
    problem = _fields_problem("the genome", {k: top[k] for k in fields}, fields)
    if problem:
        return problem
    if family == "vit" and g["dim"] % g["heads"]:
        return f"'dim' ({g['dim']}) must be divisible by 'heads' ({g['heads']})"
    if "head" in structured:
        problem = _fields_problem("'head'", g["head"], _HEAD_FIELDS[family])
        if problem:
            return problem
    if family not in STAGED_FAMILIES:
        return None
    if g["stem"] is not None:
        problem = _fields_problem("'stem'", g["stem"], _STEM_FIELDS)
        if problem:
            return f"{problem} (or the stem is null)"
    stages = g["stages"]
    if not isinstance(stages, list) or not 1 <= len(stages) <= MAX_STAGES:
        return f"'stages' must be a list of 1 to {MAX_STAGES} stages"
    for s, stage in enumerate(stages):
        problem = _fields_problem(f"stage {s}", stage, _STAGE_FIELDS[family])
        if problem:
            return problem
    return None
