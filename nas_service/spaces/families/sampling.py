"""Drawing a ``families`` genome: one function per family, all from one seeded stream.

``sample_<family>(rng, shape)`` returns the fields of a genome of that family after the header
(``space``, ``version``, ``family``), drawn for an input of ``shape``: stride-2 stages go only
where the input has halvings left, patch sizes keep the token count in bounds. The draws lean
towards what published networks do (ReLU and batch norm most often, stages widening where
the map halves). Each function draws from ``rng`` in a fixed order, so the same stream gives
the same genome; :func:`round_width`, :func:`sample_stem` and :func:`sample_classifier` are
shared with mutation.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

from ...graph import ACTIVATIONS
from ..base import Shape3, halve, halving_budget, weighted_choice
from .genome import (
    KERNELS,
    MAX_BODY_SIDE,
    MAX_GROUP_WIDTH,
    MAX_TOKENS,
    MAX_WIDTH,
    MIN_WIDTH,
    PATCHES,
    WIDTH_STEP,
)

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


def round_width(width: float, *, floor: bool = False, step: int = WIDTH_STEP,
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


def sample_stem(rng: random.Random, width: int, *, none: float = 0.0,
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
        "conv": round_width(last_width * rng.choice([2, 4])) if rng.random() < conv else None,
        "pool": pool,
        **sample_classifier(rng, mlp),
    }


def sample_classifier(rng: random.Random, mlp: float) -> dict[str, Any]:
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
        widths.append(round_width(width))
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


def sample_plain(rng: random.Random, shape: Shape3) -> dict[str, Any]:
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
        stem=sample_stem(rng, round_width(width), none=0.6, imagenet=0.05))


def sample_vgg(rng: random.Random, shape: Shape3) -> dict[str, Any]:
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
    return sample_stem(rng, width, imagenet=0.25)


def sample_resnet(family: str) -> Callable[[random.Random, Shape3], dict[str, Any]]:
    def sample(rng: random.Random, shape: Shape3) -> dict[str, Any]:
        base = _log_uniform(rng, 8, 64)
        se = rng.random() < 0.2
        return _sample_staged(
            rng, shape, family, stages=((2, 2), (3, 5), (4, 3)), base=(base, base),
            depth=((1, 3), (2, 4), (3, 3), (4, 1), (6, 1), (9, 1)), growth=(2,),
            stem=_resnet_stem(rng, round_width(base)),
            stage_fields=lambda rng, s: {"se": se and rng.random() < 0.9})
    return sample


def sample_bottleneck(rng: random.Random, shape: Shape3) -> dict[str, Any]:
    base = _log_uniform(rng, 32, 192)
    se = rng.random() < 0.2
    return _sample_staged(
        rng, shape, "resnet_bottleneck", stages=((2, 2), (3, 5), (4, 3)), base=(base, base),
        depth=((1, 3), (2, 4), (3, 3), (4, 2), (6, 1)), growth=(2,),
        stem=_resnet_stem(rng, round_width(base / 4 * rng.choice([1, 2]))),
        stage_fields=lambda rng, s: {"se": se and rng.random() < 0.9})


def sample_resnext(rng: random.Random, shape: Shape3) -> dict[str, Any]:
    base = _log_uniform(rng, 32, 192)
    groups = weighted_choice(rng, ((2, 1), (4, 2), (8, 3), (16, 2), (32, 2)))
    group_width = weighted_choice(rng, ((1, 1), (2, 2), (4, 3), (8, 1)))
    se = rng.random() < 0.15
    fields = _sample_staged(
        rng, shape, "resnext", stages=((2, 2), (3, 5), (4, 3)), base=(base, base),
        depth=((1, 3), (2, 4), (3, 3), (4, 1)), growth=(2,),
        stem=_resnet_stem(rng, round_width(base / 4 * rng.choice([1, 2]))),
        stage_fields=lambda rng, s: {"se": se, "groups": groups, "group_width": group_width})
    for s, stage in enumerate(fields["stages"]):  # ResNeXt doubles the group width per stage
        stage["group_width"] = min(MAX_GROUP_WIDTH, group_width * 2 ** s)
    return fields


def sample_mobilenet(rng: random.Random, shape: Shape3) -> dict[str, Any]:
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
        stem=sample_stem(rng, round_width(base * rng.choice([1, 2])), imagenet=0.0),
        stage_fields=fields)
    last = fields_["stages"][-1]["width"]
    if rng.random() < 0.5:  # MobileNetV2/V3's wide 1x1 conv before the pool
        fields_["head"]["conv"] = round_width(last * rng.choice([2, 4, 6]))
    return fields_


def sample_densenet(rng: random.Random, shape: Shape3) -> dict[str, Any]:
    growth = weighted_choice(rng, ((4, 1), (6, 1), (8, 2), (12, 3), (16, 2), (24, 1), (32, 1)))
    bottleneck = rng.random() < 0.7
    n = weighted_choice(rng, ((2, 2), (3, 5), (4, 3)))
    stem = sample_stem(rng, round_width(2 * growth), imagenet=0.2)
    strides = _sample_strides(rng, n, _body_budget(shape, stem))
    per_block = weighted_choice(rng, ((2, 2), (4, 3), (6, 3), (8, 2), (12, 2), (16, 1)))
    stages = [{"growth": growth, "depth": max(1, per_block + rng.choice([-1, 0, 0, 1]) * (s > 0)),
               "stride": strides[s], "bottleneck": bottleneck,
               "activation": _stage_activation(rng)} for s in range(n)]
    return {"activation": _sample_activation(rng, "densenet"),
            "norm": weighted_choice(rng, _NORM_WEIGHTS), "stem": stem, "stages": stages,
            "head": _sample_map_head(rng, flatten=0.0, mlp=0.1)}


def sample_inception(rng: random.Random, shape: Shape3) -> dict[str, Any]:
    branch = weighted_choice(rng, (("5x5", 1), ("double3x3", 1)))
    base = _log_uniform(rng, 32, 192)
    return _sample_staged(
        rng, shape, "inception", stages=((1, 2), (2, 4), (3, 3)), base=(base, base),
        depth=((1, 4), (2, 4), (3, 2)), growth=(1.5, 2),
        stem=sample_stem(rng, round_width(base / 2), imagenet=0.2),
        stage_fields=lambda rng, s: {"branch": branch})


def sample_convmixer(rng: random.Random, shape: Shape3) -> dict[str, Any]:
    side = min(shape[1:])
    # Maps of 7 to 16 per side mostly, as ConvMixers on CIFAR (patch 1-2 of 32 px) are rare.
    patches = ([(p, 4) for p in PATCHES if 7 <= side // p <= 16]
               + [(p, 1) for p in PATCHES if 4 <= side // p <= 32])
    return {"activation": _sample_activation(rng, "convmixer"),
            "norm": weighted_choice(rng, (("batch", 7), ("layer", 1), ("group", 1),
                                          ("none", 1))),
            "patch": weighted_choice(rng, patches or [(max(1, side // 4), 1)]),
            "dim": round_width(_log_uniform(rng, 32, 384)),
            "depth": weighted_choice(rng, ((2, 1), (4, 3), (6, 3), (8, 3), (12, 2), (16, 1))),
            "kernel": weighted_choice(rng, ((3, 2), (5, 3), (7, 2), (9, 2))),
            "head": _sample_map_head(rng, flatten=0.0, mlp=0.1)}


def sample_vit(rng: random.Random, shape: Shape3) -> dict[str, Any]:
    _, h, w = shape
    patches = [p for p in PATCHES if 4 <= (h // p) * (w // p) <= MAX_TOKENS] or [min(h, w) // 2]
    heads = weighted_choice(rng, ((1, 1), (2, 3), (4, 4), (8, 2)))
    step = max(WIDTH_STEP, heads)
    return {"activation": _sample_activation(rng, "vit"),
            "patch": rng.choice(patches),
            "dim": round_width(_log_uniform(rng, 16, 256), step=step, least=step),
            "depth": weighted_choice(rng, ((1, 1), (2, 2), (4, 3), (6, 3), (8, 2), (12, 1))),
            "heads": heads, "mlp_ratio": weighted_choice(rng, ((1, 1), (2, 3), (3, 1), (4, 4))),
            "head": {"pool": weighted_choice(rng, (("token", 3), ("mean", 2))),
                     **sample_classifier(rng, 0.1)}}


def sample_mlp(rng: random.Random, shape: Shape3) -> dict[str, Any]:
    layers = weighted_choice(rng, ((1, 3), (2, 4), (3, 3), (4, 1), (6, 1)))
    width = _log_uniform(rng, 64, 1536)
    taper = rng.choice([1.0, 1.0, 0.5])
    widths = [round_width(width * taper ** i) for i in range(layers)]
    return {"activation": _sample_activation(rng, "mlp"),
            "norm": weighted_choice(rng, (("none", 5), ("batch", 3), ("layer", 2))),
            "widths": widths, "dropout": weighted_choice(rng, ((0.0, 5), (0.1, 1), (0.2, 2),
                                                               (0.5, 1)))}
