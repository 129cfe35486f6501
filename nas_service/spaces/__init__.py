"""Seeded generators of architectures, and their mutations.

>>> from nas_service.spaces import get_space
>>> genome, graph = get_space("cells").sample_with_genome(42, (1, 28, 28), 10)
>>> child_genome, child = get_space("cells").mutate(genome, seed=7)
>>> graph = get_space("families[-densenet,-vit]").sample(3)   # all families but two
>>> lm = get_space("charlm").sample(5, (64,), 90)   # a language model: 64 tokens, 90 symbols

``docs/spaces.md`` describes each space, its genome and its bounds.
"""

from .base import (
    DEFAULT_INPUT_SHAPE,
    Genome,
    GenomeSearchSpace,
    SearchSpace,
    SearchSpaceError,
)
from .cells import CELL_OPS, CellSpace
from .charlm import CharLMSpace
from .families import FAMILIES, FamilySpace, family_of
from .macro import MacroSpace
from .registry import SPACES, get_space, sample_architecture, split_space_names

__all__ = [
    "CELL_OPS",
    "DEFAULT_INPUT_SHAPE",
    "FAMILIES",
    "SPACES",
    "CellSpace",
    "CharLMSpace",
    "FamilySpace",
    "Genome",
    "GenomeSearchSpace",
    "MacroSpace",
    "SearchSpace",
    "SearchSpaceError",
    "family_of",
    "get_space",
    "sample_architecture",
    "split_space_names",
]
