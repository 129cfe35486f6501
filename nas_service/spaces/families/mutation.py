"""Mutating and narrowing a ``families`` genome; neither ever changes the family.

:func:`mutate` returns a valid child that differs from its parent: in
:data:`STRUCTURAL_MUTATION_RATE` of the draws a stage, a block or a layer is added or removed,
otherwise one field takes another of its allowed values (a width scaled by 0.5-2, a depth
moved by one, a flag toggled, ...). :func:`narrow` scales every width of a genome down, to fit
parameter and MAC bounds. Both work on a copy; the parent is never changed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from ...graph import ACTIVATIONS
from ..base import Genome, copy_genome
from .genome import (
    BRANCHES,
    DEPTHWISE_KERNELS,
    DOWNSAMPLES,
    DROPOUTS,
    EXPANSIONS,
    GROUPS,
    HEADS,
    KERNELS,
    MAP_POOLS,
    MAX_BLOCKS,
    MAX_GROUP_WIDTH,
    MAX_GROWTH,
    MAX_MLP_LAYERS,
    MAX_STAGE_DEPTH,
    MAX_STAGES,
    MAX_WIDTH,
    MIN_GROWTH,
    MIN_WIDTH,
    MLP_NORMS,
    MLP_RATIOS,
    NORMS,
    PATCHES,
    TOKEN_POOLS,
    WIDTH_STEP,
    genome_problem,
)
from .sampling import round_width, sample_classifier, sample_stem

STRUCTURAL_MUTATION_RATE = 0.15
"""Share of mutations that add or remove a stage, a block or a layer (the rest change one
field); no mutation changes the family."""


def mutate(genome: Genome, rng: random.Random) -> Genome:
    """A copy of the valid ``genome`` with one random change, itself valid and different."""
    for _ in range(100):
        child = copy_genome(genome)
        if rng.random() < STRUCTURAL_MUTATION_RATE:
            _mutate_structure(child, rng)
        else:
            _mutate_field(child, rng)
        if child != genome and genome_problem(child) is None:
            return child
    raise AssertionError("no valid mutation found in 100 draws")  # a depth always works


def narrow(genome: Genome, factor: float) -> Genome | None:
    """A copy of ``genome`` with every width scaled by ``factor`` (rounded down to its step,
    never below its least value, never wider than before); ``None`` when that changes nothing."""
    smaller = copy_genome(genome)
    _scale_widths(smaller, factor)
    return None if smaller == genome else smaller


# ---- one field, or the structure (each edits a copy in place; the caller checks it) ------------


def _other(options: Sequence[Any]) -> Callable[[Any, random.Random, dict], Any]:
    return lambda value, rng, where: rng.choice([o for o in options if o != value] or [value])


def _scaled(step: int = WIDTH_STEP, least: int = MIN_WIDTH, most: int = MAX_WIDTH
            ) -> Callable[[Any, random.Random, dict], Any]:
    return lambda value, rng, where: round_width(
        value * rng.choice([0.5, 0.75, 1.25, 1.5, 2]), step=step, least=least, most=most)


def _stepped(most: int) -> Callable[[Any, random.Random, dict], Any]:
    return lambda value, rng, where: min(most, max(1, value + rng.choice([-1, 1])))


def _new_dim(value: int, rng: random.Random, where: dict) -> int:
    step = max(WIDTH_STEP, where.get("heads", 1))
    return round_width(value * rng.choice([0.5, 0.75, 1.25, 1.5, 2]), step=step, least=step)


def _new_heads(value: int, rng: random.Random, where: dict) -> int:
    return rng.choice([h for h in HEADS if h != value and where["dim"] % h == 0] or [value])


def _new_hidden(value: list[int], rng: random.Random, where: dict) -> list[int]:
    return sample_classifier(rng, 0.7)["hidden"]


def _new_head_conv(value: int | None, rng: random.Random, where: dict) -> int | None:
    return None if value else rng.choice([128, 256, 512])


def _new_stem(value: dict | None, rng: random.Random, where: dict) -> dict | None:
    width = value["width"] if value else 16
    return sample_stem(rng, width, none=0.2 if value else 0.0, imagenet=0.3)


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
        return min(value, round_width(value * factor, floor=True, **kwargs))

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
