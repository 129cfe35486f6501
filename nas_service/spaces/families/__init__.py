"""The ``families`` space: the networks people write for small-image classification.

Every architecture belongs to one named **family** (:data:`FAMILIES`), and a mutation never
leaves it, so that a GHN can be trained without some families and evaluated on them:

* ``plain``: conv - norm - act layers in stages, a stage opening with a stride-2 conv or a 2x2
  max/avg pool; any kernel in 1-7, dilation 1-3. ``vgg``: the same vocabulary, sampled as VGG
  (Simonyan & Zisserman 2015): blocks of 2-4 3x3 convs, 2x2 max pools between, often a
  flatten - MLP - dropout classifier.
* ``resnet`` (basic blocks), ``resnet_bottleneck`` (1x1 - 3x3 - 1x1, width/4 inside), ``resnext``
  (bottlenecks whose 3x3 is grouped, Xie et al. 2017), ``preact_resnet`` (norm - act before each
  conv, He et al. 2016b); CIFAR stems (3x3 conv) or ImageNet stems (7x7 stride 2 + 3x3 max pool,
  as torchvision/timm models applied to 28-32 px inputs have); optional squeeze-excitation.
* ``mobilenet``: inverted residuals (MobileNetV2/V3: 1x1 expand - depthwise kxk - [SE] - linear
  1x1 projection), often with a wide 1x1 conv before the pool.
* ``densenet``: dense blocks (Huang et al. 2017) whose layers (norm - act - [1x1 conv to 4 x
  growth - norm - act] - 3x3 conv to ``growth``) each concatenate their output to their input;
  transitions of norm - act - 1x1 conv halving the channels - [2x2 avg pool]; the classifier
  reads every concatenated channel.
* ``inception``: modules of parallel 1x1, 1x1 - 3x3, 1x1 - 5x5 (or 1x1 - 3x3 - 3x3) and
  3x3 max pool - 1x1 branches, concatenated (Szegedy et al. 2015/2016).
* ``convmixer`` (Trockman & Kolter 2022): a patch conv, then blocks of residual depthwise kxk and
  pointwise convs, each followed by act - norm.
* ``vit`` (Dosovitskiy et al. 2021): ``patch_embed`` - [``class_token``] - ``pos_embed`` -
  pre-norm blocks of self-attention and an MLP, each around an ``add`` - ``layer_norm`` - the
  class token (``select_token``) or the mean of the tokens - classifier.
* ``mlp``: flatten - (linear - norm - act - dropout) x 1-6 - linear (inputs of over 16,384
  values are average-pooled first).

Norms (one per network): ``batch``, ``layer`` (over the channels of a map, as in ConvNeXt),
``group`` (groups of at least 4 channels, at most 32 groups) or ``none`` (convs then have a
bias). Activations: every activation op of the graph format, one per network, sometimes
overridden per stage. Heads: [1x1 conv - norm - act] - global avg/max pool or flatten -
[dropout - linear - act] x 0-2 - [dropout] - linear.

Genome (``docs/spaces.md`` lists every family's fields)::

    {"space": "families", "version": 1, "family": "resnet",
     "activation": "relu", "norm": "batch",
     "stem": {"width": 16, "kernel": 3, "stride": 1, "pool": false},     # or null
     "stages": [{"width": 16, "depth": 3, "stride": 1, "se": false, "activation": null},
                {"width": 32, "depth": 3, "stride": 2, "se": false, "activation": "silu"}],
     "head": {"conv": null, "pool": "avg", "hidden": [], "dropout": 0.0}}

A ``"stride": 2`` that would bring a map below 2x2 is not applied (so one genome builds at any
input of at least 8x8); inputs over 64 per side get 3x3 stride-2 max pools after the stem.

Restricted views: ``FamilySpace(["resnet", "vgg"])`` (or ``get_space("families[resnet,vgg]")``)
samples only those families, ``get_space("families[-densenet,-vit]")`` all but those. A view
has its own name, hence its own seeded stream; it builds and mutates any ``families`` genome.
Graph names carry the family: ``"families/resnet/seed=3"``,
``"families[-vit]/mlp/mutant/seed=1/parent=..."``; :func:`family_of` reads it back.

The package: :mod:`.genome` (the vocabulary, the bounds, the check of hostile genomes),
:mod:`.sampling` (drawing a genome per family), :mod:`.mutation` (mutating and narrowing),
:mod:`.graphs` (writing the graph per family); this module holds the space, its views, and
``_FAMILY_PARTS``, the one table of what each family is made of.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ...graph import DEFAULT_LIMITS, ArchitectureGraph, GraphLimits
from ..base import (
    DEFAULT_INPUT_SHAPE,
    Genome,
    GenomeSearchSpace,
    SearchSpaceError,
    Shape3,
    check_input_shape,
)
from .genome import FAMILIES, SPACE_NAME, VERSION, genome_problem
from .graphs import NetWriter, write_convmixer, write_mlp, write_staged, write_vit
from .mutation import mutate, narrow
from .sampling import (
    sample_bottleneck,
    sample_convmixer,
    sample_densenet,
    sample_inception,
    sample_mlp,
    sample_mobilenet,
    sample_plain,
    sample_resnet,
    sample_resnext,
    sample_vgg,
    sample_vit,
)

__all__ = ["FAMILIES", "SPACE_NAME", "FamilySpace", "family_of"]


@dataclass(frozen=True)
class _Family:
    """What a family is made of: how its genome is drawn, how its graph is written."""

    sample: Callable[[random.Random, Shape3], dict[str, Any]]
    """``(rng, input shape) -> the genome's fields after the header``."""
    write: Callable[[NetWriter, Genome, int], str]
    """``(writer, genome, num_classes) -> the logits' node``."""


_FAMILY_PARTS: dict[str, _Family] = {
    "plain": _Family(sample_plain, write_staged),
    "vgg": _Family(sample_vgg, write_staged),
    "resnet": _Family(sample_resnet("resnet"), write_staged),
    "preact_resnet": _Family(sample_resnet("preact_resnet"), write_staged),
    "resnet_bottleneck": _Family(sample_bottleneck, write_staged),
    "resnext": _Family(sample_resnext, write_staged),
    "mobilenet": _Family(sample_mobilenet, write_staged),
    "densenet": _Family(sample_densenet, write_staged),
    "inception": _Family(sample_inception, write_staged),
    "convmixer": _Family(sample_convmixer, write_convmixer),
    "vit": _Family(sample_vit, write_vit),
    "mlp": _Family(sample_mlp, write_mlp),
}
"""Every family of :data:`FAMILIES`, in its order."""


class FamilySpace(GenomeSearchSpace):
    """Networks of the named families (see the module docstring); ``families`` restricts the
    view to some of them (all when ``None``)."""

    version = VERSION

    def __init__(self, families: Iterable[str] | None = None):
        allowed = (FAMILIES if families is None else (families,) if isinstance(families, str)
                   else tuple(families))
        unknown = sorted(set(allowed) - set(FAMILIES))
        if unknown:
            raise SearchSpaceError(f"unknown famil{'y' if len(unknown) == 1 else 'ies'} "
                                   f"{', '.join(map(repr, unknown))}; known families: "
                                   f"{', '.join(FAMILIES)}")
        if not allowed:
            raise SearchSpaceError("a families view must allow at least one family")
        self.families: tuple[str, ...] = tuple(f for f in FAMILIES if f in set(allowed))
        self.name = _view_name(self.families)

    @classmethod
    def from_name(cls, name: str) -> FamilySpace:
        """The view ``"families"``, ``"families[a,b]"`` (only those) or ``"families[-a,-b]"``
        (all but those); :class:`SearchSpaceError` for anything else."""
        if name == SPACE_NAME:
            return cls()
        if not (name.startswith(f"{SPACE_NAME}[") and name.endswith("]")):
            raise SearchSpaceError(f"{name!r} is not a families view: write "
                                   f"'{SPACE_NAME}[a,b]' or '{SPACE_NAME}[-a,-b]'")
        items = [item.strip() for item in name[len(SPACE_NAME) + 1:-1].split(",")]
        if not all(items):
            raise SearchSpaceError(f"{name!r}: empty family name; known families: "
                                   f"{', '.join(FAMILIES)}")
        excluded = [item.startswith("-") for item in items]
        if any(excluded) and not all(excluded):
            raise SearchSpaceError(f"{name!r}: either list the families to keep or, each with "
                                   f"a leading '-', those to leave out, not both")
        names = [item.lstrip("-").strip() for item in items]
        cls(names)  # names the unknown ones
        return cls([f for f in FAMILIES if f not in names] if all(excluded) else names)

    # ---- what a space defines ------------------------------------------------------------------

    def sample_genome(self, rng: random.Random,
                      input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE) -> Genome:
        shape = check_input_shape(input_shape)
        family = rng.choice(self.families)
        return {"space": SPACE_NAME, "version": VERSION, "family": family,
                **_FAMILY_PARTS[family].sample(rng, shape)}

    def mutate_genome(self, genome: Genome, rng: random.Random,
                      input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE) -> Genome:
        self.check_genome(genome)
        check_input_shape(input_shape)
        return mutate(genome, rng)

    def shrink_genome(self, genome: Genome, factor: float) -> Genome | None:
        return narrow(genome, factor)

    def check_genome(self, genome: Any) -> None:
        if not isinstance(genome, dict):
            raise SearchSpaceError(
                f"a {SPACE_NAME!r} genome must be a dict, got {type(genome).__name__}")
        if genome.get("space") != SPACE_NAME:
            raise SearchSpaceError(
                f"genome of space {genome.get('space')!r} given to space {self.name!r}")
        if genome.get("version") != VERSION:
            raise SearchSpaceError(
                f"{SPACE_NAME!r} genome version {genome.get('version')!r} is not supported "
                f"(expected {VERSION})")
        problem = genome_problem(genome)
        if problem:
            raise SearchSpaceError(f"invalid {SPACE_NAME!r} genome: {problem}")

    def genome_to_graph(self, genome: Genome, input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
                        num_classes: int = 10, *, name: str | None = None,
                        limits: GraphLimits = DEFAULT_LIMITS) -> ArchitectureGraph:
        """The graph of ``genome``. A ``name`` of this space (``"<space>/<rest>"``, as sampling
        and mutation give) gets the family after the space: ``"<space>/<family>/<rest>"``."""
        self.check_genome(genome)
        shape = check_input_shape(input_shape)
        family = genome["family"]
        if name is not None and name.startswith(f"{self.name}/") and family_of(name) is None:
            name = f"{self.name}/{family}/{name[len(self.name) + 1:]}"
        net = NetWriter(shape, name, genome.get("norm", "none"), genome["activation"])
        logits = _FAMILY_PARTS[family].write(net, genome, num_classes)
        return net.build(logits, num_classes, limits)


def family_of(graph_or_name: ArchitectureGraph | Genome | str | None) -> str | None:
    """The family of a graph sampled or mutated by a families space (read from its name), of a
    ``families`` genome, or of such a graph's name; ``None`` for anything else."""
    if isinstance(graph_or_name, dict):
        family = graph_or_name.get("family")
        return family if graph_or_name.get("space") == SPACE_NAME and family in FAMILIES \
            else None
    name = graph_or_name.name if isinstance(graph_or_name, ArchitectureGraph) else graph_or_name
    if not isinstance(name, str):
        return None
    space, _, rest = name.partition("/")
    family = rest.partition("/")[0]
    if family in FAMILIES and (space == SPACE_NAME or space.startswith(f"{SPACE_NAME}[")):
        return family
    return None


def _view_name(families: tuple[str, ...]) -> str:
    """``families``, or the shorter of the two bracket forms (the same set, the same name)."""
    if families == FAMILIES:
        return SPACE_NAME
    left_out = [f for f in FAMILIES if f not in families]
    if len(left_out) < len(families):
        return f"{SPACE_NAME}[{','.join('-' + f for f in left_out)}]"
    return f"{SPACE_NAME}[{','.join(families)}]"

