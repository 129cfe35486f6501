"""The ``macro`` space: ResNet / MobileNet-like networks of stages of blocks.

A network is a stem (conv 3x3 - BN - activation), 2 to 4 stages of 1 to 4 blocks each, and a
head (global average pool - [dropout] - linear). Every stage after the first starts with a
stride-2 block while the input is large enough (maps never shrink below 2x2); widths never
decrease from one stage to the next. Block types:

* ``basic`` (He et al. 2016): conv3x3 - BN - act - conv3x3 - BN [- SE] + shortcut - act;
* ``bottleneck`` (He et al. 2016): conv1x1 (width/4) - BN - act - conv3x3 - BN - act - conv1x1 -
  BN [- SE] + shortcut - act; the shortcut of both is a 1x1 conv (stride s) - BN when the shape
  changes, the identity otherwise;
* ``inverted`` (MobileNetV2, Sandler et al. 2018): [conv1x1 expand x t - BN - act] - depthwise
  kxk - BN - act [- SE, MobileNetV3-style] - conv1x1 project - BN, plus the input when shapes
  match (no projection shortcut, as in MobileNetV2).

Genome (``docs/spaces.md`` has a full example)::

    {"space": "macro", "version": 1,
     "stem": {"width": 16, "stride": 1},
     "activation": "relu",          # relu, relu6, silu, hardswish or gelu
     "stages": [{"block": "basic", "depth": 2, "width": 16, "se": false},
                {"block": "inverted", "depth": 3, "width": 32, "se": true,
                 "expansion": 6, "kernel": 5}],      # expansion and kernel: inverted only
     "dropout": 0.0}
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from ..graph import DEFAULT_LIMITS, ArchitectureGraph, GraphLimits
from .base import (
    DEFAULT_INPUT_SHAPE,
    Genome,
    GenomeSearchSpace,
    LayerWriter,
    SearchSpaceError,
    Shape3,
    check_input_shape,
    copy_genome,
    halving_budget,
    stem_halvings,
    weighted_choice,
)

BLOCKS: tuple[str, ...] = ("basic", "bottleneck", "inverted")
ACTIVATIONS: tuple[str, ...] = ("relu", "relu6", "silu", "hardswish", "gelu")
EXPANSIONS: tuple[int, ...] = (1, 3, 6)
KERNELS: tuple[int, ...] = (3, 5, 7)
MIN_STAGES, MAX_STAGES = 2, 4
MAX_DEPTH = 4
MIN_WIDTH, MAX_WIDTH = 4, 2048
WIDTH_STEP = 4
"""Stage widths are multiples of 4 (so that a bottleneck's inner width is width / 4)."""

_BASE_WIDTHS = ((8, 2), (12, 2), (16, 5), (24, 4), (32, 3), (48, 1))
_ACTIVATIONS = (("relu", 5), ("relu6", 2), ("silu", 2), ("hardswish", 1), ("gelu", 1))
_MUTATIONS = (("depth", 25), ("width", 15), ("block", 10), ("se", 10), ("kernel", 8),
              ("expansion", 8), ("num_stages", 8), ("activation", 6), ("stem", 5),
              ("dropout", 5))


class MacroSpace(GenomeSearchSpace):
    """ResNet/MobileNet-like stage-and-block networks (see the module docstring)."""

    name = "macro"

    def sample_genome(self, rng: random.Random,
                      input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE) -> Genome:
        check_input_shape(input_shape)
        base = weighted_choice(rng, _BASE_WIDTHS)
        num_stages = weighted_choice(rng, ((2, 3), (3, 4), (4, 3)))
        # Most real networks use one block family throughout; a few mix (EfficientNet-style).
        family = weighted_choice(rng, (("basic", 3), ("bottleneck", 2), ("inverted", 3)))
        mixed = rng.random() < 0.3
        stages, width = [], base
        for s in range(num_stages):
            if s > 0:
                width = _round_width(width * weighted_choice(rng, ((1.5, 1), (2, 2))))
            stages.append(_sample_stage(rng, rng.choice(BLOCKS) if mixed else family, width))
        return self._new_genome(
            stem={"width": _round_width(base * rng.choice([0.5, 1])),
                  "stride": weighted_choice(rng, ((1, 3), (2, 1)))},
            activation=weighted_choice(rng, _ACTIVATIONS),
            stages=stages,
            dropout=weighted_choice(rng, ((0.0, 6), (0.1, 1), (0.2, 2), (0.3, 1))),
        )

    def mutate_genome(self, genome: Genome, rng: random.Random,
                      input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE) -> Genome:
        self.check_genome(genome)
        check_input_shape(input_shape)
        for _ in range(100):
            child = copy_genome(genome)
            _MUTATORS[weighted_choice(rng, _MUTATIONS)](child, rng)
            if child != genome and _genome_problem(child) is None:
                return child
        raise AssertionError("no valid mutation found in 100 draws")  # depth always works

    def shrink_genome(self, genome: Genome, factor: float) -> Genome | None:
        smaller = copy_genome(genome)
        smaller["stem"]["width"] = _round_width(genome["stem"]["width"] * factor, floor=True)
        for stage in smaller["stages"]:
            stage["width"] = _round_width(stage["width"] * factor, floor=True)
        return None if smaller == genome else smaller

    def check_genome(self, genome: Any) -> None:
        self._check_header(genome)
        problem = _genome_problem(genome)
        if problem:
            raise SearchSpaceError(f"invalid 'macro' genome: {problem}")

    def genome_to_graph(self, genome: Genome, input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
                        num_classes: int = 10, *, name: str | None = None,
                        limits: GraphLimits = DEFAULT_LIMITS) -> ArchitectureGraph:
        self.check_genome(genome)
        shape = check_input_shape(input_shape)
        stem_strides, stage_strides = _strides(genome, shape)
        net = LayerWriter(shape, name, activation=genome["activation"])
        x = net.input
        x = net.act(net.bn(net.conv(x, "stem_conv", genome["stem"]["width"], 3, stem_strides[0]),
                           "stem_bn"), "stem_act")
        for k in range(1, len(stem_strides)):  # large inputs: ResNet's max pool, repeated
            x = net.pool(x, f"stem_pool{k}", "max_pool", 3, 2)
        for s, (stage, stride) in enumerate(zip(genome["stages"], stage_strides, strict=True)):
            for b in range(stage["depth"]):
                x = _BLOCK_WRITERS[stage["block"]](net, x, f"stage{s}_block{b}", stage,
                                                   stride if b == 0 else 1)
        logits = net.classifier(x, num_classes, dropout=genome["dropout"])
        return net.build(logits, num_classes, limits)


# ------------------------------------------------------------------------------------------------
# Layout
# ------------------------------------------------------------------------------------------------


def _strides(genome: Genome, shape: Shape3) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Strides of the stem's layers and of each stage's first block."""
    size = min(shape[1:])
    auto = stem_halvings(size)
    left = halving_budget(size) - auto
    stage_halvings = min(len(genome["stages"]) - 1, left)
    extra = 1 if genome["stem"]["stride"] == 2 and left - stage_halvings >= 1 else 0
    stem = auto + extra
    stem_strides = (2 if stem else 1,) + (2,) * max(0, stem - 1)
    stage_strides = tuple(2 if 0 < s <= stage_halvings else 1
                          for s in range(len(genome["stages"])))
    return stem_strides, stage_strides


def _round_width(width: float, floor: bool = False) -> int:
    steps = int(width // WIDTH_STEP) if floor else round(width / WIDTH_STEP)
    return min(MAX_WIDTH, max(MIN_WIDTH, steps * WIDTH_STEP))


# ------------------------------------------------------------------------------------------------
# Blocks
# ------------------------------------------------------------------------------------------------


def _gate(net: LayerWriter) -> str:
    # MobileNetV3 pairs hard-swish with a hard-sigmoid gate.
    return "hardsigmoid" if net.activation == "hardswish" else "sigmoid"


def _residual(net: LayerWriter, x: str, y: str, p: str, stride: int) -> str:
    out = net.shapes[y][0]
    if stride == 1 and net.shapes[x][0] == out:
        shortcut = x
    else:
        shortcut = net.bn(net.conv(x, f"{p}_shortcut_conv", out, 1, stride), f"{p}_shortcut_bn")
    return net.add([y, shortcut], f"{p}_add")


def _basic_block(net: LayerWriter, x: str, p: str, stage: dict[str, Any], stride: int) -> str:
    w = stage["width"]
    y = net.act(net.bn(net.conv(x, f"{p}_conv1", w, 3, stride), f"{p}_bn1"), f"{p}_act1")
    y = net.bn(net.conv(y, f"{p}_conv2", w, 3), f"{p}_bn2")
    if stage["se"]:
        y = net.squeeze_excite(y, f"{p}_se", gate=_gate(net))
    return net.act(_residual(net, x, y, p, stride), f"{p}_act2")


def _bottleneck_block(net: LayerWriter, x: str, p: str, stage: dict[str, Any],
                      stride: int) -> str:
    w = stage["width"]
    mid = max(MIN_WIDTH, w // 4)
    y = net.act(net.bn(net.conv(x, f"{p}_conv1", mid, 1), f"{p}_bn1"), f"{p}_act1")
    y = net.act(net.bn(net.conv(y, f"{p}_conv2", mid, 3, stride), f"{p}_bn2"), f"{p}_act2")
    y = net.bn(net.conv(y, f"{p}_conv3", w, 1), f"{p}_bn3")
    if stage["se"]:
        y = net.squeeze_excite(y, f"{p}_se", gate=_gate(net))
    return net.act(_residual(net, x, y, p, stride), f"{p}_act3")


def _inverted_block(net: LayerWriter, x: str, p: str, stage: dict[str, Any],
                    stride: int) -> str:
    hidden = net.shapes[x][0] * stage["expansion"]
    y = x
    if stage["expansion"] != 1:
        y = net.act(net.bn(net.conv(y, f"{p}_expand_conv", hidden, 1), f"{p}_expand_bn"),
                    f"{p}_expand_act")
    y = net.conv(y, f"{p}_dw_conv", hidden, stage["kernel"], stride, groups=hidden)
    y = net.act(net.bn(y, f"{p}_dw_bn"), f"{p}_dw_act")
    if stage["se"]:
        y = net.squeeze_excite(y, f"{p}_se", gate=_gate(net))
    y = net.bn(net.conv(y, f"{p}_project_conv", stage["width"], 1), f"{p}_project_bn")
    if stride == 1 and net.shapes[x][0] == stage["width"]:
        y = net.add([y, x], f"{p}_add")
    return y


_BLOCK_WRITERS = {"basic": _basic_block, "bottleneck": _bottleneck_block,
                  "inverted": _inverted_block}


# ------------------------------------------------------------------------------------------------
# Sampling and mutation
# ------------------------------------------------------------------------------------------------


def _sample_stage(rng: random.Random, block: str, width: int) -> dict[str, Any]:
    stage: dict[str, Any] = {
        "block": block,
        "depth": weighted_choice(rng, ((1, 3), (2, 4), (3, 2), (4, 1))),
        "width": width,
        "se": rng.random() < 0.25,
    }
    if block == "inverted":
        _add_inverted_fields(stage, rng)
    return stage


def _add_inverted_fields(stage: dict[str, Any], rng: random.Random) -> None:
    stage["expansion"] = weighted_choice(rng, ((1, 1), (3, 2), (6, 3)))
    stage["kernel"] = weighted_choice(rng, ((3, 5), (5, 3), (7, 1)))


def _mutate_depth(g: Genome, rng: random.Random) -> None:
    stage = rng.choice(g["stages"])
    stage["depth"] = min(MAX_DEPTH, max(1, stage["depth"] + rng.choice([-1, 1])))


def _mutate_width(g: Genome, rng: random.Random) -> None:
    stages = g["stages"]
    s = rng.randrange(len(stages))
    width = _round_width(stages[s]["width"] * rng.choice([0.67, 0.75, 1.25, 1.5]))
    stages[s]["width"] = width
    # Keep widths non-decreasing: push later stages up, earlier ones down.
    for later in stages[s + 1:]:
        later["width"] = max(later["width"], width)
    for earlier in stages[:s]:
        earlier["width"] = min(earlier["width"], width)


def _mutate_block(g: Genome, rng: random.Random) -> None:
    stage = rng.choice(g["stages"])
    stage["block"] = rng.choice([b for b in BLOCKS if b != stage["block"]])
    stage.pop("expansion", None)
    stage.pop("kernel", None)
    if stage["block"] == "inverted":
        _add_inverted_fields(stage, rng)


def _mutate_se(g: Genome, rng: random.Random) -> None:
    stage = rng.choice(g["stages"])
    stage["se"] = not stage["se"]


def _mutate_inverted_field(field: str, options: tuple[int, ...]):
    def mutate(g: Genome, rng: random.Random) -> None:
        inverted = [s for s in g["stages"] if s["block"] == "inverted"]
        if inverted:  # otherwise a no-op, and the caller draws another mutation
            stage = rng.choice(inverted)
            stage[field] = rng.choice([v for v in options if v != stage[field]])
    return mutate


def _mutate_num_stages(g: Genome, rng: random.Random) -> None:
    stages = g["stages"]
    grow = len(stages) == MIN_STAGES or (len(stages) < MAX_STAGES and rng.random() < 0.5)
    if grow:
        last = stages[-1]
        stages.append(_sample_stage(rng, last["block"],
                                    _round_width(last["width"] * rng.choice([1.5, 2]))))
    else:
        stages.pop()


def _mutate_activation(g: Genome, rng: random.Random) -> None:
    g["activation"] = rng.choice([a for a in ACTIVATIONS if a != g["activation"]])


def _mutate_stem(g: Genome, rng: random.Random) -> None:
    if rng.random() < 0.5:
        g["stem"]["stride"] = 3 - g["stem"]["stride"]
    else:
        g["stem"]["width"] = _round_width(g["stem"]["width"] * rng.choice([0.5, 0.75, 1.5, 2]))


def _mutate_dropout(g: Genome, rng: random.Random) -> None:
    g["dropout"] = rng.choice([p for p in (0.0, 0.1, 0.2, 0.3) if p != g["dropout"]])


_MUTATORS = {
    "depth": _mutate_depth, "width": _mutate_width, "block": _mutate_block, "se": _mutate_se,
    "kernel": _mutate_inverted_field("kernel", KERNELS),
    "expansion": _mutate_inverted_field("expansion", EXPANSIONS),
    "num_stages": _mutate_num_stages, "activation": _mutate_activation, "stem": _mutate_stem,
    "dropout": _mutate_dropout,
}


# ------------------------------------------------------------------------------------------------
# Checking a genome
# ------------------------------------------------------------------------------------------------


def _is_int(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _genome_problem(g: dict[str, Any]) -> str | None:
    """The first thing wrong with a macro genome (header already checked), or ``None``."""
    expected = {"space", "version", "stem", "activation", "stages", "dropout"}
    if set(g) != expected:
        return (f"missing keys {sorted(expected - set(g))}, "
                f"unknown keys {sorted(set(g) - expected)}")
    stem = g["stem"]
    if not (isinstance(stem, dict) and set(stem) == {"width", "stride"}
            and _is_int(stem["width"], MIN_WIDTH, MAX_WIDTH) and _is_int(stem["stride"], 1, 2)):
        return (f"'stem' must be {{'width': int in [{MIN_WIDTH}, {MAX_WIDTH}], "
                f"'stride': 1 or 2}}, got {stem!r}")
    if g["activation"] not in ACTIVATIONS:
        return f"'activation' must be one of {list(ACTIVATIONS)}, got {g['activation']!r}"
    p = g["dropout"]
    if not (isinstance(p, int | float) and not isinstance(p, bool) and 0 <= p < 1):
        return f"'dropout' must be a number in [0, 1), got {p!r}"
    stages = g["stages"]
    if not isinstance(stages, list) or not MIN_STAGES <= len(stages) <= MAX_STAGES:
        return f"'stages' must be a list of {MIN_STAGES} to {MAX_STAGES} stages"
    previous = 0
    for s, stage in enumerate(stages):
        where = f"stage {s}"
        if not isinstance(stage, dict) or stage.get("block") not in BLOCKS:
            return f"{where}: 'block' must be one of {list(BLOCKS)}"
        keys = {"block", "depth", "width", "se"}
        if stage["block"] == "inverted":
            keys |= {"expansion", "kernel"}
        if set(stage) != keys:
            return f"{where}: a {stage['block']!r} stage has exactly the keys {sorted(keys)}"
        if not _is_int(stage["depth"], 1, MAX_DEPTH):
            return f"{where}: 'depth' must be an int in [1, {MAX_DEPTH}], got {stage['depth']!r}"
        if not _is_int(stage["width"], MIN_WIDTH, MAX_WIDTH):
            return (f"{where}: 'width' must be an int in [{MIN_WIDTH}, {MAX_WIDTH}], "
                    f"got {stage['width']!r}")
        if stage["width"] < previous:
            return f"{where}: widths must not decrease from stage to stage"
        previous = stage["width"]
        if not isinstance(stage["se"], bool):
            return f"{where}: 'se' must be a bool"
        if stage["block"] == "inverted":
            if not _is_int(stage["expansion"], 1, 6) or stage["expansion"] not in EXPANSIONS:
                return f"{where}: 'expansion' must be one of {list(EXPANSIONS)}"
            if not _is_int(stage["kernel"], 3, 7) or stage["kernel"] not in KERNELS:
                return f"{where}: 'kernel' must be one of {list(KERNELS)}"
    return None
