"""The ``cells`` space: DARTS / DeepNets-1M-style networks of stacked cells.

A network is a stem, a stack of ``num_cells`` cells and a classifier head (Liu et al., "DARTS",
ICLR 2019; Knyazev et al., "Parameter Prediction for Unseen Deep Architectures", NeurIPS 2021).
Every *normal* cell shares one genotype and every *reduction* cell another. A cell reads the
outputs of the two previous cells (``s0``, ``s1``), brings both to its width with a ReLU-conv1x1-BN
(or a factorized reduce when ``s0`` is twice the size of ``s1``), then computes ``n`` intermediate
nodes; node ``j`` sums two ops applied to two distinct earlier states (``s0``, ``s1`` or nodes
``< j``). The cell's output concatenates the intermediate nodes no other node reads. Reduction
cells sit at ``num_cells // 3`` and ``2 * num_cells // 3``; their edges from ``s0``/``s1`` have
stride 2, and they double the width.

Genome (``docs/spaces.md`` has a full example)::

    {"space": "cells", "version": 1,
     "width": 16,                 # C: channels of the first cells (x2 after each reduction)
     "stem": "conv3x3",           # or "conv3x3_double"
     "stem_multiplier": 3,        # stem width = C * stem_multiplier
     "stem_stride": 1,            # 2: an extra reduction in the stem where the input allows it
     "num_cells": 8,
     "normal": [[["sep_conv_3x3", 1], ["skip_connect", 0]], ...],   # per node: 2 [op, input]
     "reduce": [[["max_pool_3x3", 0], ["dil_conv_5x5", 1]], ...],   # input 0 = s0, 1 = s1,
                                                                    # k + 2 = node k
     "batch_norm": true, "activation": "relu", "sep_conv_repeats": 2, "attention_heads": 2,
     "head": {"hidden": null, "dropout": 0.0}}
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
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
    halve,
    halving_budget,
    stem_halvings,
    weighted_choice,
)

CELL_OPS: tuple[str, ...] = (
    "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
    "dil_conv_3x3", "dil_conv_5x5", "conv_1x1", "conv_7x1_1x7", "conv_3x3", "conv_5x5",
    "conv_7x7", "self_attention", "squeeze_excite",
)
"""Edge ops, named as in DARTS; ``none`` drops the edge (the node then has one input)."""

_OP_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("none", 4), ("max_pool_3x3", 6), ("avg_pool_3x3", 6), ("skip_connect", 8),
    ("sep_conv_3x3", 10), ("sep_conv_5x5", 7), ("dil_conv_3x3", 7), ("dil_conv_5x5", 5),
    # Dense kxk convolutions dominate the parameter count at 4C channels: keep them rarer.
    ("conv_1x1", 6), ("conv_7x1_1x7", 3), ("conv_3x3", 4), ("conv_5x5", 2), ("conv_7x7", 1),
    ("self_attention", 5), ("squeeze_excite", 4),
)
_SHORT = {
    "max_pool_3x3": "maxpool3x3", "avg_pool_3x3": "avgpool3x3", "skip_connect": "skip",
    "sep_conv_3x3": "sep3x3", "sep_conv_5x5": "sep5x5", "dil_conv_3x3": "dil3x3",
    "dil_conv_5x5": "dil5x5", "conv_1x1": "conv1x1", "conv_7x1_1x7": "conv7x1_1x7",
    "conv_3x3": "conv3x3", "conv_5x5": "conv5x5", "conv_7x7": "conv7x7",
    "self_attention": "attn", "squeeze_excite": "se",
}
_UNSTRIDED_OPS = frozenset({"self_attention", "squeeze_excite"})
"""Ops with no strided form: never on the ``s0``/``s1`` edges of a reduction cell."""

STEMS: tuple[str, ...] = ("conv3x3", "conv3x3_double")
ACTIVATIONS: tuple[str, ...] = ("relu", "gelu", "silu", "elu", "leaky_relu", "hardswish",
                                "mish")
MIN_WIDTH, MAX_WIDTH = 4, 256
MAX_CELLS = 12
MAX_NODES = 5
MAX_ATTENTION_TOKENS = 256
"""Attention is only sampled where every instance of the cell sees at most 16x16 positions..."""
MAX_ATTENTION_WIDTH = 256
"""...and at most this many channels, so that its cost stays comparable to a convolution's."""

_WIDTHS = ((8, 12), (12, 12), (16, 16), (20, 10), (24, 8), (32, 6), (40, 3), (48, 2),
           (64, 1), (96, 0.5))
_NUM_CELLS = tuple((n, w) for n, w in zip(range(1, MAX_CELLS + 1),
                                          (2, 4, 7, 9, 9, 9, 8, 7, 5, 3, 2, 1), strict=True))
_NUM_NODES = ((1, 1), (2, 3), (3, 5), (4, 4), (5, 2))
_ACTIVATIONS = (("relu", 75), ("gelu", 5), ("silu", 5), ("elu", 3), ("leaky_relu", 4),
                ("hardswish", 4), ("mish", 4))
_MUTATIONS = (("edge_op", 40), ("edge_input", 15), ("num_nodes", 10), ("width", 8),
              ("num_cells", 8), ("stem", 4), ("activation", 4), ("head", 4), ("batch_norm", 2),
              ("sep_conv_repeats", 3), ("attention_heads", 2))


@dataclass(frozen=True)
class _Cell:
    reduction: bool
    channels: int
    """Width of every op inside the cell."""
    height: int
    width: int
    """Spatial size of the cell's output."""


@dataclass(frozen=True)
class _Layout:
    stem_strides: tuple[int, ...]
    stem_shape: Shape3
    cells: tuple[_Cell, ...]


class CellSpace(GenomeSearchSpace):
    """DeepNets-1M-style cell networks (see the module docstring for the genome)."""

    name = "cells"

    # ---- sampling ------------------------------------------------------------------------------

    def sample_genome(self, rng: random.Random,
                      input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE) -> Genome:
        shape = check_input_shape(input_shape)
        width = weighted_choice(rng, _WIDTHS)
        genome = self._new_genome(
            width=width,
            stem=weighted_choice(rng, (("conv3x3", 7), ("conv3x3_double", 3))),
            stem_multiplier=weighted_choice(rng, ((1, 3), (2, 2), (3, 5))),
            stem_stride=weighted_choice(rng, ((1, 3), (2, 1))),
            num_cells=weighted_choice(rng, _NUM_CELLS),
            normal=[], reduce=[],
            batch_norm=rng.random() >= 0.1,
            activation=weighted_choice(rng, _ACTIVATIONS),
            sep_conv_repeats=weighted_choice(rng, ((1, 2), (2, 3))),
            attention_heads=rng.choice([h for h in (1, 2, 4) if width % h == 0]),
            head=_sample_head(rng),
        )
        num_nodes = weighted_choice(rng, _NUM_NODES)
        attention = _attention_allowed(genome, shape)
        for kind in ("normal", "reduce"):
            genome[kind] = [_sample_node(rng, j, kind == "reduce", attention[kind])
                            for j in range(num_nodes)]
        return genome

    def mutate_genome(self, genome: Genome, rng: random.Random,
                      input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE) -> Genome:
        self.check_genome(genome)
        shape = check_input_shape(input_shape)
        for _ in range(100):
            child = copy_genome(genome)
            _MUTATORS[weighted_choice(rng, _MUTATIONS)](child, rng)
            _drop_costly_attention(child, rng, shape)
            if child != genome and _genome_problem(child) is None:
                return child
        raise AssertionError("no valid mutation found in 100 draws")  # an edge op always works

    def shrink_genome(self, genome: Genome, factor: float) -> Genome | None:
        heads = genome["attention_heads"]
        width = max(MIN_WIDTH, int(genome["width"] * factor) // heads * heads)
        if width >= genome["width"]:
            return None
        smaller = copy_genome(genome)
        smaller["width"] = width
        hidden = smaller["head"]["hidden"]
        if hidden:
            smaller["head"]["hidden"] = min(hidden, max(8, int(hidden * factor)))
        return smaller

    def check_genome(self, genome: Any) -> None:
        self._check_header(genome)
        problem = _genome_problem(genome)
        if problem:
            raise SearchSpaceError(f"invalid 'cells' genome: {problem}")

    # ---- building ------------------------------------------------------------------------------

    def genome_to_graph(self, genome: Genome, input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
                        num_classes: int = 10, *, name: str | None = None,
                        limits: GraphLimits = DEFAULT_LIMITS) -> ArchitectureGraph:
        self.check_genome(genome)
        shape = check_input_shape(input_shape)
        layout = _layout(genome, shape)
        net = LayerWriter(shape, name, batch_norm=genome["batch_norm"],
                          activation=genome["activation"])
        writer = _CellWriter(net, genome)
        stem = writer.stem(layout.stem_strides)
        s0 = s1 = stem
        for i, cell in enumerate(layout.cells):
            s0, s1 = s1, writer.cell(i, cell, s0, s1)
        head = genome["head"]
        logits = net.classifier(s1, num_classes, hidden=head["hidden"], dropout=head["dropout"])
        return net.build(logits, num_classes, limits)


# ------------------------------------------------------------------------------------------------
# Layout: where the reductions go, and what each cell sees
# ------------------------------------------------------------------------------------------------


def _layout(genome: Genome, shape: Shape3) -> _Layout:
    c, h, w = shape
    budget = halving_budget(min(h, w))
    auto = stem_halvings(min(h, w))
    n = genome["num_cells"]
    # DARTS puts reductions at n//3 and 2n//3; tiny inputs get fewer so maps stay >= 2x2.
    positions = sorted({n // 3, 2 * n // 3})[:max(0, budget - auto)]
    extra = 1 if genome["stem_stride"] == 2 and budget - auto - len(positions) >= 1 else 0
    convs = 2 if genome["stem"] == "conv3x3_double" else 1
    halvings = auto + extra
    strides = tuple(2 if k < halvings else 1 for k in range(max(convs, halvings)))
    for s in strides:
        if s == 2:
            h, w = halve(h), halve(w)
    stem_shape = (genome["width"] * genome["stem_multiplier"], h, w)
    cells, channels = [], genome["width"]
    for i in range(n):
        reduction = i in positions
        if reduction:
            channels, h, w = channels * 2, halve(h), halve(w)
        cells.append(_Cell(reduction, channels, h, w))
    return _Layout(strides, stem_shape, tuple(cells))


def _attention_allowed(genome: Genome, shape: Shape3) -> dict[str, bool]:
    """Whether attention is cheap in every normal / every reduction cell of this genome."""
    cells = _layout(genome, shape).cells
    return {kind: all(c.height * c.width <= MAX_ATTENTION_TOKENS
                      and c.channels <= MAX_ATTENTION_WIDTH
                      for c in cells if c.reduction == (kind == "reduce"))
            for kind in ("normal", "reduce")}


def _op_allowed(op: str, reduction: bool, source: int, attention: bool) -> bool:
    if op in _UNSTRIDED_OPS and reduction and source < 2:
        return False
    return attention or op != "self_attention"


def _drop_costly_attention(genome: Genome, rng: random.Random, shape: Shape3) -> None:
    """After a change of depth, stem or width, replace attention where it became expensive."""
    allowed = _attention_allowed(genome, shape)
    for kind in ("normal", "reduce"):
        if allowed[kind]:
            continue
        for node in genome[kind]:
            for edge in node:
                if edge[0] == "self_attention":
                    edge[0] = _sample_op(rng, kind == "reduce", edge[1], False, must_be_real=True)


# ------------------------------------------------------------------------------------------------
# Sampling pieces
# ------------------------------------------------------------------------------------------------


def _sample_op(rng: random.Random, reduction: bool, source: int, attention: bool, *,
               must_be_real: bool = False) -> str:
    table = [(op, w) for op, w in _OP_WEIGHTS
             if _op_allowed(op, reduction, source, attention)
             and not (must_be_real and op == "none")]
    return weighted_choice(rng, table)


def _sample_node(rng: random.Random, j: int, reduction: bool, attention: bool) -> list[list]:
    sources = rng.sample(range(j + 2), 2)
    # Node 0 always reads s1 through a real op, so every cell feeds the next one (no dead cells).
    ops = [_sample_op(rng, reduction, s, attention, must_be_real=(j == 0 and s == 1))
           for s in sources]
    if ops == ["none", "none"]:
        ops[1] = _sample_op(rng, reduction, sources[1], attention, must_be_real=True)
    return [[op, s] for op, s in zip(ops, sources, strict=True)]


def _sample_head(rng: random.Random) -> dict[str, Any]:
    kind = weighted_choice(rng, (("linear", 6), ("dropout_linear", 2), ("mlp", 2)))
    return {
        "hidden": rng.choice([64, 128, 256]) if kind == "mlp" else None,
        "dropout": rng.choice([0.1, 0.2, 0.3, 0.5]) if kind == "dropout_linear" else 0.0,
    }


# ------------------------------------------------------------------------------------------------
# Mutations (each edits the genome in place; the caller copies and checks)
# ------------------------------------------------------------------------------------------------


def _random_edge(genome: Genome, rng: random.Random) -> tuple[str, int, list]:
    kind = rng.choice(["normal", "reduce"])
    j = rng.randrange(len(genome[kind]))
    return kind, j, genome[kind][j]


def _mutate_edge_op(genome: Genome, rng: random.Random) -> None:
    kind, _, node = _random_edge(genome, rng)
    edge = rng.choice(node)
    choices = [op for op in CELL_OPS if op != edge[0]
               and _op_allowed(op, kind == "reduce", edge[1], True)]
    edge[0] = rng.choice(choices)


def _mutate_edge_input(genome: Genome, rng: random.Random) -> None:
    _, j, node = _random_edge(genome, rng)
    e = rng.randrange(2)
    free = [s for s in range(j + 2) if s not in (node[0][1], node[1][1])]
    if free:
        node[e][1] = rng.choice(free)
    else:  # node 0 reads s0 and s1: swap which op reads which
        node[0][1], node[1][1] = node[1][1], node[0][1]


def _mutate_num_nodes(genome: Genome, rng: random.Random) -> None:
    kind = rng.choice(["normal", "reduce"])
    nodes = genome[kind]
    grow = len(nodes) == 1 or (len(nodes) < MAX_NODES and rng.random() < 0.5)
    if grow:
        nodes.append(_sample_node(rng, len(nodes), kind == "reduce", True))
    else:
        nodes.pop()  # only the last node: no later node can read it


def _mutate_width(genome: Genome, rng: random.Random) -> None:
    heads = genome["attention_heads"]
    scaled = round(genome["width"] * rng.choice([0.67, 0.75, 1.25, 1.5]) / heads) * heads
    genome["width"] = min(MAX_WIDTH, max(MIN_WIDTH, scaled))


def _mutate_num_cells(genome: Genome, rng: random.Random) -> None:
    n = genome["num_cells"] + rng.choice([-1, 1])
    genome["num_cells"] = min(MAX_CELLS, max(1, n))


def _mutate_stem(genome: Genome, rng: random.Random) -> None:
    field = rng.choice(["stem", "stem_multiplier", "stem_stride"])
    options = {"stem": STEMS, "stem_multiplier": (1, 2, 3), "stem_stride": (1, 2)}[field]
    genome[field] = rng.choice([v for v in options if v != genome[field]])


def _mutate_activation(genome: Genome, rng: random.Random) -> None:
    genome["activation"] = rng.choice([a for a in ACTIVATIONS if a != genome["activation"]])


def _mutate_head(genome: Genome, rng: random.Random) -> None:
    genome["head"] = _sample_head(rng)


def _mutate_batch_norm(genome: Genome, rng: random.Random) -> None:
    genome["batch_norm"] = not genome["batch_norm"]


def _mutate_sep_conv_repeats(genome: Genome, rng: random.Random) -> None:
    genome["sep_conv_repeats"] = 3 - genome["sep_conv_repeats"]


def _mutate_attention_heads(genome: Genome, rng: random.Random) -> None:
    genome["attention_heads"] = rng.choice(
        [h for h in (1, 2, 4) if genome["width"] % h == 0 and h != genome["attention_heads"]]
        or [genome["attention_heads"]])


_MUTATORS = {
    "edge_op": _mutate_edge_op, "edge_input": _mutate_edge_input,
    "num_nodes": _mutate_num_nodes, "width": _mutate_width, "num_cells": _mutate_num_cells,
    "stem": _mutate_stem, "activation": _mutate_activation, "head": _mutate_head,
    "batch_norm": _mutate_batch_norm, "sep_conv_repeats": _mutate_sep_conv_repeats,
    "attention_heads": _mutate_attention_heads,
}


# ------------------------------------------------------------------------------------------------
# Checking a genome
# ------------------------------------------------------------------------------------------------


def _is_int(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _genome_problem(g: dict[str, Any]) -> str | None:
    """The first thing wrong with a cells genome (header already checked), or ``None``."""
    expected = {"space", "version", "width", "stem", "stem_multiplier", "stem_stride",
                "num_cells", "normal", "reduce", "batch_norm", "activation", "sep_conv_repeats",
                "attention_heads", "head"}
    if set(g) != expected:
        missing, unknown = sorted(expected - set(g)), sorted(set(g) - expected)
        return f"missing keys {missing}, unknown keys {unknown}"
    if not _is_int(g["width"], MIN_WIDTH, MAX_WIDTH):
        return f"'width' must be an int in [{MIN_WIDTH}, {MAX_WIDTH}], got {g['width']!r}"
    if g["stem"] not in STEMS:
        return f"'stem' must be one of {list(STEMS)}, got {g['stem']!r}"
    if not _is_int(g["stem_multiplier"], 1, 3):
        return f"'stem_multiplier' must be 1, 2 or 3, got {g['stem_multiplier']!r}"
    if not _is_int(g["stem_stride"], 1, 2):
        return f"'stem_stride' must be 1 or 2, got {g['stem_stride']!r}"
    if not _is_int(g["num_cells"], 1, MAX_CELLS):
        return f"'num_cells' must be an int in [1, {MAX_CELLS}], got {g['num_cells']!r}"
    if not isinstance(g["batch_norm"], bool):
        return f"'batch_norm' must be a bool, got {g['batch_norm']!r}"
    if g["activation"] not in ACTIVATIONS:
        return f"'activation' must be one of {list(ACTIVATIONS)}, got {g['activation']!r}"
    if not _is_int(g["sep_conv_repeats"], 1, 2):
        return f"'sep_conv_repeats' must be 1 or 2, got {g['sep_conv_repeats']!r}"
    heads = g["attention_heads"]
    if not _is_int(heads, 1, 4) or heads == 3 or g["width"] % heads:
        return f"'attention_heads' must be 1, 2 or 4 and divide 'width', got {heads!r}"
    head = g["head"]
    if not (isinstance(head, dict) and set(head) == {"hidden", "dropout"}):
        return "'head' must be {'hidden': int | null, 'dropout': float}"
    if head["hidden"] is not None and not _is_int(head["hidden"], 1, 4096):
        return f"'head.hidden' must be null or an int in [1, 4096], got {head['hidden']!r}"
    if not (isinstance(head["dropout"], int | float) and not isinstance(head["dropout"], bool)
            and 0 <= head["dropout"] < 1):
        return f"'head.dropout' must be a number in [0, 1), got {head['dropout']!r}"
    for kind in ("normal", "reduce"):
        problem = _genotype_problem(g[kind], kind)
        if problem:
            return problem
    return None


def _genotype_problem(nodes: Any, kind: str) -> str | None:
    if not isinstance(nodes, list) or not 1 <= len(nodes) <= MAX_NODES:
        return f"'{kind}' must be a list of 1 to {MAX_NODES} nodes"
    reads_s1 = False
    for j, node in enumerate(nodes):
        where = f"'{kind}' node {j}"
        if not (isinstance(node, list) and len(node) == 2 and all(
                isinstance(e, list) and len(e) == 2 for e in node)):
            return f"{where} must be two [op, input] pairs"
        for op, source in node:
            if op not in CELL_OPS:
                return f"{where}: unknown op {op!r} (known: {', '.join(CELL_OPS)})"
            if not _is_int(source, 0, j + 1):
                return f"{where}: input must be an int in [0, {j + 1}], got {source!r}"
            if not _op_allowed(op, kind == "reduce", source, True):
                return f"{where}: {op!r} has no strided form and cannot read s0/s1 here"
            reads_s1 |= source == 1 and op != "none"
        if node[0][1] == node[1][1]:
            return f"{where}: the two inputs must differ"
        if node[0][0] == node[1][0] == "none":
            return f"{where}: at least one op must not be 'none'"
    if not reads_s1:
        return f"'{kind}' must read s1 (input 1) through at least one op"
    return None


# ------------------------------------------------------------------------------------------------
# Writing the graph
# ------------------------------------------------------------------------------------------------


class _CellWriter:
    """Writes the stem and the cells of one genome into a :class:`LayerWriter`."""

    def __init__(self, net: LayerWriter, genome: Genome):
        self.net, self.genome = net, genome

    def stem(self, strides: tuple[int, ...]) -> str:
        net = self.net
        width = self.genome["width"] * self.genome["stem_multiplier"]
        x = net.input
        for k, stride in enumerate(strides, start=1):
            if k > 1:
                x = net.act(x, f"stem_act{k - 1}")
            x = net.conv(x, f"stem_conv{k}", width, 3, stride)
            x = net.bn(x, f"stem_bn{k}")
        return x

    def cell(self, i: int, cell: _Cell, s0: str, s1: str) -> str:
        net, c = self.net, cell.channels
        kind = "reduce" if cell.reduction else "normal"
        states: list[str | None] = [None, None]
        raw = (s0, s1)

        def state(k: int) -> str:
            if states[k] is None:  # preprocess only the inputs the genotype reads
                prefix = f"cell{i}_pre{k}"
                if net.shapes[raw[k]][1:] != net.shapes[s1][1:]:
                    states[k] = self.factorized_reduce(raw[k], f"{prefix}_reduce", c)
                else:
                    x = net.act(raw[k], f"{prefix}_act")
                    states[k] = net.bn(net.conv(x, f"{prefix}_conv", c, 1), f"{prefix}_bn")
            return states[k]  # type: ignore[return-value]

        nodes: list[str] = []
        read: set[int] = set()
        for j, node in enumerate(self.genome[kind]):
            outs = []
            for e, (op, source) in enumerate(node):
                if op == "none":
                    continue
                x = state(source) if source < 2 else nodes[source - 2]
                stride = 2 if cell.reduction and source < 2 else 1
                outs.append(self.edge(op, x, stride, f"cell{i}_node{j}_edge{e}_{_SHORT[op]}"))
                read.add(source)
            nodes.append(outs[0] if len(outs) == 1 else net.add(outs, f"cell{i}_node{j}"))
        loose = [x for j, x in enumerate(nodes) if j + 2 not in read]
        return loose[0] if len(loose) == 1 else net.concat(loose, f"cell{i}_concat")

    def edge(self, op: str, x: str, stride: int, p: str) -> str:
        net, g = self.net, self.genome
        c = net.shapes[x][0]
        if op in ("max_pool_3x3", "avg_pool_3x3"):
            return net.pool(x, p, op[:-4], 3, stride)
        if op == "skip_connect":
            return x if stride == 1 else self.factorized_reduce(x, p, c)
        if op == "self_attention":
            return net.attention(x, p, g["attention_heads"])
        if op == "squeeze_excite":
            return net.squeeze_excite(x, p)
        if op.startswith("sep_conv"):
            k = int(op[-1])
            for r in range(1, g["sep_conv_repeats"] + 1):
                x = net.act(x, f"{p}_act{r}")
                x = net.conv(x, f"{p}_dw{r}", c, k, stride if r == 1 else 1, groups=c)
                x = net.bn(net.conv(x, f"{p}_pw{r}", c, 1), f"{p}_bn{r}")
            return x
        x = net.act(x, f"{p}_act")
        if op.startswith("dil_conv"):
            x = net.conv(x, f"{p}_dw", c, int(op[-1]), stride, groups=c, dilation=2)
            x = net.conv(x, f"{p}_pw", c, 1)
        elif op == "conv_7x1_1x7":
            x = net.conv(x, f"{p}_conv1x7", c, (1, 7), (1, stride))
            x = net.conv(x, f"{p}_conv7x1", c, (7, 1), (stride, 1))
        else:  # conv_1x1, conv_3x3, conv_5x5, conv_7x7
            x = net.conv(x, f"{p}_conv", c, int(op[-1]), stride)
        return net.bn(x, f"{p}_bn")

    def factorized_reduce(self, x: str, p: str, out_channels: int) -> str:
        """Halves the map with two 1x1 paths (DARTS). The second path averages each 3x3
        neighbourhood first: it sees the odd positions the strided first path skips, which is
        what DARTS's one-pixel shift achieves (a shift is not in the op vocabulary)."""
        net = self.net
        half = out_channels // 2
        x = net.act(x, f"{p}_act")
        a = net.conv(x, f"{p}_conv_a", half, 1, 2)
        b = net.pool(x, f"{p}_pool_b", "avg_pool", 3, 2)
        b = net.conv(b, f"{p}_conv_b", out_channels - half, 1)
        return net.bn(net.concat([a, b], f"{p}_concat"), f"{p}_bn")
