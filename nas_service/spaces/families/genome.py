"""The ``families`` genome: its vocabulary, its bounds, and the check of a hostile genome.

Every field a family's genome may hold is listed here with the values it may take.
:func:`genome_problem` reads a genome from outside (an API request, a stored row) as hostile:
it names the first key missing or unknown and the first field of the wrong type or out of
range (a ``bool`` never passes for an ``int``), so the graph writers only ever see the fields
they expect, in range. ``docs/spaces.md`` lists every family's fields.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ...graph import ACTIVATIONS

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


def genome_problem(g: dict[str, Any]) -> str | None:
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
