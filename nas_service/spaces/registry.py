"""The named search spaces, and sampling by name."""

from __future__ import annotations

from collections.abc import Sequence

from ..graph import DEFAULT_LIMITS, ArchitectureGraph, GraphLimits
from .base import DEFAULT_INPUT_SHAPE, SearchSpace, SearchSpaceError
from .cells import CellSpace
from .macro import MacroSpace

SPACES: dict[str, SearchSpace] = {space.name: space for space in (CellSpace(), MacroSpace())}
"""Every space by name. Spaces are stateless: one shared instance each."""


def get_space(name: str) -> SearchSpace:
    """The space called ``name``; :class:`SearchSpaceError` lists the known names otherwise."""
    try:
        return SPACES[name]
    except (KeyError, TypeError):
        raise SearchSpaceError(
            f"unknown search space {name!r}; known spaces: {', '.join(sorted(SPACES))}"
        ) from None


def sample_architecture(space: str | SearchSpace, seed: int,
                        input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE, num_classes: int = 10,
                        *, max_parameters: int | None = None, max_flops: int | None = None,
                        limits: GraphLimits = DEFAULT_LIMITS) -> ArchitectureGraph:
    """``get_space(space).sample(seed, ...)``: the architecture of ``seed`` in ``space``."""
    if isinstance(space, str):
        space = get_space(space)
    return space.sample(seed, input_shape, num_classes, max_parameters=max_parameters,
                        max_flops=max_flops, limits=limits)
