"""What every search space offers, and the machinery they share.

A search space is a seeded generator of :class:`~nas_service.graph.ArchitectureGraph` s. Each
space describes its architectures by a compact **genome**: a JSON-serialisable dict (``"space"``
and ``"version"`` keys first) from which the graph is built deterministically. Genomes are what
evolutionary search mutates; graphs are what the GHN and the evaluator consume.

Guarantees of every space (pinned by ``tests/test_spaces.py``):

* ``sample(seed, ...)`` is a pure function of its arguments: it draws from
  ``random.Random("<space>/<seed>")`` and never touches a global RNG.
* every returned graph validates against the given :class:`~nas_service.graph.GraphLimits` and
  respects ``max_parameters`` / ``max_flops`` (multiply-accumulates per sample); when no
  architecture fits after a bounded number of width reductions and resamples,
  :class:`SearchSpaceError` says so.
* ``mutate(genome, seed, ...)`` returns a child whose graph differs from its parent's (by content
  hash), is valid, respects the same bounds, and is a pure function of its arguments.
"""

from __future__ import annotations

import copy
import json
import math
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol, runtime_checkable

from ..graph import DEFAULT_LIMITS, ArchitectureGraph, GraphBuilder, GraphLimits
from ..graph.errors import GraphValidationError

Genome = dict[str, Any]
"""A JSON-serialisable description of one architecture of one space."""

Shape3 = tuple[int, int, int]

DEFAULT_INPUT_SHAPE: Shape3 = (1, 28, 28)
MIN_INPUT_SIZE = 8
"""Smallest height/width the spaces accept: room for two stride-2 reductions."""

_MAX_SAMPLE_TRIES = 16
_MAX_SHRINKS = 8
_MAX_MUTATION_TRIES = 32


class SearchSpaceError(ValueError):
    """The one error type of the spaces layer: a malformed genome, an unknown space, bounds that
    no architecture of the space can meet, or an input shape the space cannot handle."""


@runtime_checkable
class SearchSpace(Protocol):
    """The interface search strategies and GHN training rely on."""

    name: str

    def sample(self, seed: int, input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
               num_classes: int = 10, *, max_parameters: int | None = None,
               max_flops: int | None = None,
               limits: GraphLimits = DEFAULT_LIMITS) -> ArchitectureGraph: ...

    def sample_with_genome(self, seed: int, input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
                           num_classes: int = 10, *, max_parameters: int | None = None,
                           max_flops: int | None = None, limits: GraphLimits = DEFAULT_LIMITS
                           ) -> tuple[Genome, ArchitectureGraph]: ...

    def mutate(self, genome: Genome, seed: int, input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
               num_classes: int = 10, *, max_parameters: int | None = None,
               max_flops: int | None = None, limits: GraphLimits = DEFAULT_LIMITS
               ) -> tuple[Genome, ArchitectureGraph]: ...

    def sample_genome(self, rng: random.Random,
                      input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE) -> Genome: ...

    def mutate_genome(self, genome: Genome, rng: random.Random,
                      input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE) -> Genome: ...

    def genome_to_graph(self, genome: Genome, input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
                        num_classes: int = 10, *, name: str | None = None,
                        limits: GraphLimits = DEFAULT_LIMITS) -> ArchitectureGraph: ...


class GenomeSearchSpace(ABC):
    """A :class:`SearchSpace` defined by five genome operations.

    Subclasses implement :meth:`sample_genome`, :meth:`mutate_genome`, :meth:`shrink_genome`,
    :meth:`check_genome` and :meth:`genome_to_graph`; sampling within bounds, mutation with
    retries and seeding live here once.
    """

    name: str
    version: int = 1

    # ---- what a space defines ------------------------------------------------------------------

    @abstractmethod
    def sample_genome(self, rng: random.Random,
                      input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE) -> Genome:
        """A random genome drawn from ``rng`` only. ``input_shape`` decides what is cheap
        (e.g. where attention is allowed), not what is valid."""

    @abstractmethod
    def mutate_genome(self, genome: Genome, rng: random.Random,
                      input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE) -> Genome:
        """A copy of ``genome`` with one small random change; ``genome`` is left untouched."""

    @abstractmethod
    def shrink_genome(self, genome: Genome, factor: float) -> Genome | None:
        """A copy with widths scaled by ``factor`` (< 1), or ``None`` when already narrowest."""

    @abstractmethod
    def check_genome(self, genome: Any) -> None:
        """Raises :class:`SearchSpaceError` naming the first problem of a malformed genome."""

    @abstractmethod
    def genome_to_graph(self, genome: Genome, input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
                        num_classes: int = 10, *, name: str | None = None,
                        limits: GraphLimits = DEFAULT_LIMITS) -> ArchitectureGraph:
        """The validated graph of ``genome`` (deterministic: no randomness here)."""

    def check_input(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """``input_shape`` as a tuple when this space can generate for it, else
        :class:`SearchSpaceError`; image spaces take ``(C, H, W)`` (:func:`check_input_shape`)."""
        return check_input_shape(input_shape)

    # ---- shared machinery ----------------------------------------------------------------------

    def sample(self, seed: int, input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
               num_classes: int = 10, *, max_parameters: int | None = None,
               max_flops: int | None = None,
               limits: GraphLimits = DEFAULT_LIMITS) -> ArchitectureGraph:
        """The architecture of ``seed``, named ``"<space>/seed=<seed>"``."""
        return self.sample_with_genome(seed, input_shape, num_classes,
                                       max_parameters=max_parameters, max_flops=max_flops,
                                       limits=limits)[1]

    def sample_with_genome(self, seed: int, input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
                           num_classes: int = 10, *, max_parameters: int | None = None,
                           max_flops: int | None = None, limits: GraphLimits = DEFAULT_LIMITS
                           ) -> tuple[Genome, ArchitectureGraph]:
        """``(genome, graph)`` for ``seed``, within ``max_parameters`` and ``max_flops``.

        A genome over the bounds is first narrowed (widths scaled by the square root of the
        excess, since parameters and MACs grow with width squared), then, if the narrowest
        version still does not fit, a new genome is drawn from the same seeded stream; at most
        16 genomes are tried before :class:`SearchSpaceError`.
        """
        shape = self.check_input(input_shape)
        _check_positive("num_classes", num_classes)
        bounds = _Bounds(max_parameters, max_flops, limits)
        rng = random.Random(f"{self.name}/{_check_seed(seed)}")
        name = f"{self.name}/seed={seed}"
        last_problem = ""
        for _ in range(_MAX_SAMPLE_TRIES):
            genome = self.sample_genome(rng, shape)
            for _ in range(_MAX_SHRINKS):
                try:
                    graph = self.genome_to_graph(genome, shape, num_classes, name=name,
                                                 limits=bounds.build_limits)
                except GraphValidationError as e:
                    # Over a configured graph limit (nodes, channels, ...): try another genome.
                    last_problem = str(e.problems[0])
                    break
                excess = bounds.excess(graph)
                if excess <= 1.0:
                    return genome, graph
                last_problem = bounds.describe(graph)
                smaller = self.shrink_genome(genome, min(0.9, 0.97 / math.sqrt(excess)))
                if smaller is None:
                    break
                genome = smaller
        raise SearchSpaceError(
            f"no architecture of space {self.name!r} for seed {seed} fits the bounds "
            f"({bounds}) after {_MAX_SAMPLE_TRIES} genomes, each narrowed as far as possible; "
            f"last: {last_problem}")

    def mutate(self, genome: Genome, seed: int, input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
               num_classes: int = 10, *, max_parameters: int | None = None,
               max_flops: int | None = None, limits: GraphLimits = DEFAULT_LIMITS
               ) -> tuple[Genome, ArchitectureGraph]:
        """``(child genome, child graph)``: one small random change of ``genome``.

        The child's graph differs from the parent's (content hash), validates, and respects the
        bounds; it is named ``"<space>/mutant/seed=<seed>/parent=<first 12 hex of parent hash>"``.
        Up to 32 mutations are tried before :class:`SearchSpaceError` (e.g. a parent already at
        the bounds whose every neighbour is over them).
        """
        self.check_genome(genome)
        shape = self.check_input(input_shape)
        _check_positive("num_classes", num_classes)
        bounds = _Bounds(max_parameters, max_flops, limits)
        parent = self.genome_to_graph(genome, shape, num_classes, limits=_UNBOUNDED)
        rng = random.Random(f"{self.name}/mutate/{_check_seed(seed)}")
        name = f"{self.name}/mutant/seed={seed}/parent={parent.content_hash()[:12]}"
        last_problem = "every mutation left the graph unchanged"
        for _ in range(_MAX_MUTATION_TRIES):
            child = self.mutate_genome(genome, rng, shape)
            try:
                graph = self.genome_to_graph(child, shape, num_classes, name=name,
                                             limits=bounds.build_limits)
            except GraphValidationError as e:
                last_problem = str(e.problems[0])
                continue
            if graph.content_hash() == parent.content_hash():
                continue
            if bounds.excess(graph) > 1.0:
                last_problem = bounds.describe(graph)
                continue
            return child, graph
        raise SearchSpaceError(
            f"no mutation of this {self.name!r} genome with seed {seed} fits the bounds "
            f"({bounds}) after {_MAX_MUTATION_TRIES} tries; last: {last_problem}")

    def _new_genome(self, **fields: Any) -> Genome:
        return {"space": self.name, "version": self.version, **fields}

    def _check_header(self, genome: Any) -> None:
        if not isinstance(genome, dict):
            raise SearchSpaceError(
                f"a {self.name!r} genome must be a dict, got {type(genome).__name__}")
        if genome.get("space") != self.name:
            raise SearchSpaceError(
                f"genome of space {genome.get('space')!r} given to space {self.name!r}")
        if genome.get("version") != self.version:
            raise SearchSpaceError(
                f"{self.name!r} genome version {genome.get('version')!r} is not supported "
                f"(expected {self.version})")
        try:
            json.dumps(genome)
        except (TypeError, ValueError) as e:
            raise SearchSpaceError(f"a genome must be JSON-serialisable: {e}") from None


# ------------------------------------------------------------------------------------------------
# Bounds, seeds, shapes
# ------------------------------------------------------------------------------------------------


_UNBOUNDED = GraphLimits(max_parameters=10**15, max_flops=10**18,
                         max_parameters_per_node=10**15)


class _Bounds:
    """``max_parameters`` / ``max_flops`` folded with the graph limits' own totals.

    Graphs are validated against :attr:`build_limits`, which leaves the two totals to
    :meth:`excess` so that a graph over them can be narrowed instead of refused. Under the
    default limits and no bounds, validation alone suffices and nothing is counted twice.
    """

    def __init__(self, max_parameters: int | None, max_flops: int | None, limits: GraphLimits):
        if max_parameters is not None:
            _check_positive("max_parameters", max_parameters)
        if max_flops is not None:
            _check_positive("max_flops", max_flops)
        self.max_parameters = min(max_parameters or limits.max_parameters, limits.max_parameters)
        self.max_flops = min(max_flops or limits.max_flops, limits.max_flops)
        self.active = (self.max_parameters < DEFAULT_LIMITS.max_parameters
                       or self.max_flops < DEFAULT_LIMITS.max_flops)
        self.build_limits = (replace(limits, max_parameters=_UNBOUNDED.max_parameters,
                                     max_flops=_UNBOUNDED.max_flops)
                             if self.active else limits)

    def excess(self, graph: ArchitectureGraph) -> float:
        """How many times over the tighter bound the graph is (<= 1 means it fits)."""
        if not self.active:
            return 0.0
        return max(graph.num_parameters / self.max_parameters, graph.flops / self.max_flops)

    def describe(self, graph: ArchitectureGraph) -> str:
        return f"{graph.num_parameters:,} parameters and {graph.flops:,} MACs"

    def __str__(self) -> str:
        return f"max_parameters={self.max_parameters:,}, max_flops={self.max_flops:,}"


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SearchSpaceError(f"seed must be an int, got {seed!r}")
    return seed


def _check_positive(what: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SearchSpaceError(f"{what} must be a positive int, got {value!r}")


def check_input_shape(input_shape: Sequence[int]) -> Shape3:
    """``(C, H, W)`` with ``H, W >= 8`` as a tuple, or :class:`SearchSpaceError`."""
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                                  for s in shape):
        raise SearchSpaceError(
            f"the spaces generate image classifiers: input_shape must be (C, H, W) of positive "
            f"ints, got {list(shape)}")
    if min(shape[1:]) < MIN_INPUT_SIZE:
        raise SearchSpaceError(
            f"input height and width must be at least {MIN_INPUT_SIZE}, got {list(shape)}")
    return shape  # type: ignore[return-value]


def halve(size: int) -> int:
    """Spatial size after a stride-2 window with 'same' padding: ``ceil(size / 2)``."""
    return (size + 1) // 2


def halving_budget(size: int) -> int:
    """How many stride-2 reductions keep a side of ``size`` at 2 or more."""
    n = 0
    while halve(size) >= 2 and size > 2:
        size, n = halve(size), n + 1
    return n


def stem_halvings(size: int, target: int = 64) -> int:
    """Reductions a stem needs so that the body runs on maps of at most ``target`` per side."""
    n = 0
    while size > target:
        size, n = halve(size), n + 1
    return n


def weighted_choice(rng: random.Random, table: Sequence[tuple[Any, float]]) -> Any:
    """One value of ``[(value, weight), ...]`` drawn from ``rng``."""
    values = [v for v, _ in table]
    return rng.choices(values, weights=[w for _, w in table])[0]


def copy_genome(genome: Genome) -> Genome:
    return copy.deepcopy(genome)


# ------------------------------------------------------------------------------------------------
# Writing layers with known shapes
# ------------------------------------------------------------------------------------------------


class LayerWriter:
    """A :class:`GraphBuilder` that tracks each node's ``(C, H, W)`` while writing.

    The generators need shapes while they write (to decide on a factorized reduce, on where a
    residual is an identity), and computing them here is far cheaper than validating twice.
    ``batch_norm=False`` turns :meth:`bn` into a no-op, for the BN-free variants.
    """

    def __init__(self, input_shape: Shape3, name: str | None, *, batch_norm: bool = True,
                 activation: str = "relu"):
        self.builder = GraphBuilder(input_shape, name=name)
        self.shapes: dict[str, Shape3] = {self.builder.input: input_shape}
        self.batch_norm, self.activation = batch_norm, activation

    @property
    def input(self) -> str:
        return self.builder.input

    def conv(self, x: str, id: str, out_channels: int, kernel: int | tuple[int, int],
             stride: int | tuple[int, int] = 1, *, groups: int = 1, dilation: int = 1,
             bias: bool | None = None) -> str:
        """A convolution with 'same' padding: output size ``ceil(size / stride)``."""
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        sh, sw = (stride, stride) if isinstance(stride, int) else stride
        ph, pw = dilation * (kh - 1) // 2, dilation * (kw - 1) // 2
        c, h, w = self.shapes[x]
        self.builder.add("conv2d", x, id=id, out_channels=out_channels, kernel_size=[kh, kw],
                         stride=[sh, sw], padding=[ph, pw], dilation=[dilation, dilation],
                         groups=groups, bias=(not self.batch_norm) if bias is None else bias)
        self.shapes[id] = (out_channels, _window(h, kh, sh, ph, dilation),
                           _window(w, kw, sw, pw, dilation))
        return id

    def bn(self, x: str, id: str) -> str:
        if not self.batch_norm:
            return x
        return self._same(x, self.builder.add("batch_norm", x, id=id))

    def act(self, x: str, id: str, kind: str | None = None) -> str:
        return self._same(x, self.builder.add(kind or self.activation, x, id=id))

    def pool(self, x: str, id: str, kind: str, kernel: int, stride: int) -> str:
        pad = (kernel - 1) // 2
        extra = {"count_include_pad": False} if kind == "avg_pool" else {}
        self.builder.add(kind, x, id=id, kernel_size=kernel, stride=stride, padding=pad, **extra)
        c, h, w = self.shapes[x]
        self.shapes[id] = (c, _window(h, kernel, stride, pad), _window(w, kernel, stride, pad))
        return id

    def squeeze_excite(self, x: str, prefix: str, reduction: int = 4,
                       gate: str = "sigmoid") -> str:
        """Hu et al. 2018: ``x * gate(conv1x1(relu(conv1x1(mean_hw(x)))))``."""
        c, _, _ = self.shapes[x]
        hidden = max(1, c // reduction)
        s = self.builder.add("global_avg_pool", x, id=f"{prefix}_pool", keepdim=True)
        self.shapes[s] = (c, 1, 1)
        s = self.conv(s, f"{prefix}_fc1", hidden, 1, bias=True)
        s = self.act(s, f"{prefix}_act", "relu")
        s = self.conv(s, f"{prefix}_fc2", c, 1, bias=True)
        s = self.act(s, f"{prefix}_gate", gate)
        return self._same(x, self.builder.add("mul", x, s, id=f"{prefix}_scale"))

    def attention(self, x: str, prefix: str, num_heads: int) -> str:
        """Pre-norm multi-head self-attention over the positions of a map."""
        y = self._same(x, self.builder.add("layer_norm", x, id=f"{prefix}_norm"))
        return self._same(x, self.builder.add("self_attention", y, id=f"{prefix}_attn",
                                              num_heads=num_heads))

    def add(self, xs: Sequence[str], id: str) -> str:
        return self._same(xs[0], self.builder.add("add", *xs, id=id))

    def concat(self, xs: Sequence[str], id: str) -> str:
        self.builder.add("concat", *xs, id=id)
        c, h, w = self.shapes[xs[0]]
        self.shapes[id] = (sum(self.shapes[x][0] for x in xs), h, w)
        return id

    def classifier(self, x: str, num_classes: int, *, hidden: int | None = None,
                   dropout: float = 0.0) -> str:
        """``global_avg_pool -> [dropout] -> [linear -> act] -> linear``."""
        x = self.builder.add("global_avg_pool", x, id="head_pool")
        if dropout > 0:
            x = self.builder.add("dropout", x, id="head_dropout", p=dropout)
        if hidden:
            x = self.builder.add("linear", x, id="head_fc1", out_features=hidden)
            x = self.builder.add(self.activation, x, id="head_act")
        return self.builder.add("linear", x, id="head_fc" if not hidden else "head_fc2",
                                out_features=num_classes)

    def build(self, output: str, num_classes: int, limits: GraphLimits) -> ArchitectureGraph:
        return self.builder.build(output, num_classes, limits)

    def _same(self, x: str, id: str) -> str:
        self.shapes[id] = self.shapes[x]
        return id


def _window(size: int, kernel: int, stride: int, pad: int, dilation: int = 1) -> int:
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
