"""The small networks the latency benchmarks send as cache misses (``bench/latency_bench.py``
posts them, ``bench/layout_bench.py`` times their scores): ``cells`` samples for Fashion-MNIST,
seeds from :data:`MISS_SEED_START` up, those with at most :data:`SMALL_FLOPS` multiply-accumulates
(the bundled GHN's training range), in seed order."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import count

from nas_service.graph import ArchitectureGraph
from nas_service.spaces import get_space

MISS_SEED_START = 2_000_000
SMALL_FLOPS = 20_000_000
SHAPE, CLASSES = (1, 28, 28), 10


def small_misses(start: int = MISS_SEED_START) -> Iterator[tuple[int, ArchitectureGraph]]:
    """``(seed, graph)`` of every small ``cells`` network from seed ``start`` on."""
    space = get_space("cells")
    for seed in count(start):
        graph = space.sample(seed, SHAPE, CLASSES)
        if graph.flops <= SMALL_FLOPS:
            yield seed, graph
