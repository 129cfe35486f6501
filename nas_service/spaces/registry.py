"""The named search spaces, and sampling by name."""

from __future__ import annotations

from collections.abc import Sequence

from ..graph import DEFAULT_LIMITS, ArchitectureGraph, GraphLimits
from .base import DEFAULT_INPUT_SHAPE, SearchSpace, SearchSpaceError
from .cells import CellSpace
from .charlm import CharLMSpace
from .families import SPACE_NAME as FAMILIES_SPACE
from .families import FamilySpace
from .macro import MacroSpace

SPACES: dict[str, SearchSpace] = {space.name: space
                                  for space in (CellSpace(), FamilySpace(), MacroSpace(),
                                                CharLMSpace())}
"""Every space by name. Spaces are stateless: one shared instance each."""


def get_space(name: str) -> SearchSpace:
    """The space called ``name``, or a view of some families (``"families[resnet,vgg]"``,
    ``"families[-densenet,-vit]"``); :class:`SearchSpaceError` lists the known names otherwise."""
    try:
        return SPACES[name]
    except (KeyError, TypeError):
        pass
    if isinstance(name, str) and name.startswith(f"{FAMILIES_SPACE}["):
        return FamilySpace.from_name(name)
    raise SearchSpaceError(
        f"unknown search space {name!r}; known spaces: {', '.join(sorted(SPACES))}, and views "
        f"of some families: {FAMILIES_SPACE}[a,b] or {FAMILIES_SPACE}[-a,-b]")


def split_space_names(text: str) -> tuple[str, ...]:
    """``"cells, families[-vit,-mlp]"`` -> ``("cells", "families[-vit,-mlp]")``: a list of
    space names separated by commas outside brackets."""
    names, depth, current = [], 0, ""
    for char in text:
        depth += (char == "[") - (char == "]")
        if char == "," and depth == 0:
            names.append(current)
            current = ""
        else:
            current += char
    names.append(current)
    return tuple(name.strip() for name in names if name.strip())


def sample_architecture(space: str | SearchSpace, seed: int,
                        input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE, num_classes: int = 10,
                        *, max_parameters: int | None = None, max_flops: int | None = None,
                        limits: GraphLimits = DEFAULT_LIMITS) -> ArchitectureGraph:
    """``get_space(space).sample(seed, ...)``: the architecture of ``seed`` in ``space``."""
    if isinstance(space, str):
        space = get_space(space)
    return space.sample(seed, input_shape, num_classes, max_parameters=max_parameters,
                        max_flops=max_flops, limits=limits)
