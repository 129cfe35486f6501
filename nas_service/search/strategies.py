"""Search strategies: which architecture is candidate *i* of a job.

Candidate *i* is a pure function of the job (space, task, seed, constraints) and, for evolution,
of the scores the job has recorded before *i*'s generation. A worker that redoes a job after a
crash therefore proposes exactly the candidates the first worker did, and
``record_candidate``'s uniqueness on ``(job, index)`` makes the redo change nothing.

- :class:`RandomSearch`: candidate *i* is ``space.sample(candidate_seed(seed, i))`` within the
  constraints.
- :class:`RegularizedEvolution` (Real et al., "Regularized Evolution for Image Classifier
  Architecture Search", AAAI 2019): the first ``population_size`` candidates are random; each
  later one mutates the winner of a tournament of ``sample_size`` members drawn from the
  population, the ``population_size`` most recent scored candidates (aging: the oldest leave
  first, however good). Candidates are proposed a generation (``generation_size``) at a time:
  a candidate sees the scores of every candidate before its generation and none of its own, so
  a generation is scored in one GHN batch and the proposal does not depend on the batch size.

A proposal that cannot be made (no architecture of the space fits the constraints) comes back
with a ``reason``; the worker records the candidate as ``rejected``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from nas_service.graph import ArchitectureGraph
from nas_service.spaces import Genome, SearchSpace, SearchSpaceError, get_space

SEED_STRIDE = 1_000_003
"""``candidate_seed(seed, i) = seed * SEED_STRIDE + i``: distinct for every (seed, i) with
``0 <= i < SEED_STRIDE`` (budgets are far smaller), with no hash involved."""

STRATEGIES = ("random", "evolution")


def candidate_seed(job_seed: int, index: int) -> int:
    """The search-space seed of candidate ``index`` of a job seeded ``job_seed``."""
    return job_seed * SEED_STRIDE + index


@dataclass(frozen=True)
class Outcome:
    """What the job recorded for one candidate: its status and score (``None`` unless scored).

    ``score`` is the candidate's rung-0 score, which strategies select by: every scored candidate
    has one and it never changes once written, so a replayed job proposes the same candidates
    whatever was promoted meanwhile. ``rung_scores`` holds every rung's score in order (``None``
    for a rung whose scoring failed); the last one is the candidate's current score."""

    status: str
    score: float | None
    rung_scores: tuple[float | None, ...] = ()

    @property
    def rung(self) -> int | None:
        """The highest rung the candidate was scored at (``None``: not scored)."""
        reached = [k for k, s in enumerate(self.rung_scores) if s is not None]
        return reached[-1] if reached else (0 if self.score is not None else None)


@dataclass(frozen=True)
class Proposal:
    """Candidate ``index``: its graph and genome, or the ``reason`` there is none."""

    index: int
    graph: ArchitectureGraph | None
    genome: Genome | None = None
    reason: str | None = None
    parent: int | None = None  # evolution: the index of the mutated candidate


class SearchStrategy(Protocol):
    name: str
    generation_size: int | None
    """Candidates proposed together from the same history (``None``: any batch will do)."""

    def propose(self, index: int, history: Mapping[int, Outcome]) -> Proposal: ...


def check_constraints(graph: ArchitectureGraph, constraints: Mapping[str, Any]) -> str | None:
    """Why ``graph`` breaks the job's constraints, or ``None`` when it meets them."""
    limit = constraints.get("max_parameters")
    if limit is not None and graph.num_parameters > limit:
        return f"over max_parameters: {graph.num_parameters:,} > {limit:,}"
    limit = constraints.get("max_flops")
    if limit is not None and graph.flops > limit:
        return f"over max_flops: {graph.flops:,} MACs > {limit:,}"
    return None


class RandomSearch:
    """Candidate *i* is the space's architecture of ``candidate_seed(seed, i)``."""

    name = "random"
    generation_size: int | None = None

    def __init__(self, space: SearchSpace | str, *, seed: int, input_shape: tuple[int, ...],
                 num_classes: int, constraints: Mapping[str, Any] | None = None) -> None:
        self.space = get_space(space) if isinstance(space, str) else space
        self.seed = seed
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.constraints = dict(constraints or {})

    def propose(self, index: int, history: Mapping[int, Outcome]) -> Proposal:
        return self._sample(index)

    def _sample(self, index: int) -> Proposal:
        try:
            genome, graph = self.space.sample_with_genome(
                candidate_seed(self.seed, index), self.input_shape, self.num_classes,
                max_parameters=self.constraints.get("max_parameters"),
                max_flops=self.constraints.get("max_flops"))
        except SearchSpaceError as e:
            return Proposal(index, None, reason=str(e))
        return Proposal(index, graph, genome)


class RegularizedEvolution(RandomSearch):
    """Tournament selection and mutation over an aging population (see the module docstring)."""

    name = "evolution"

    def __init__(self, space: SearchSpace | str, *, seed: int, input_shape: tuple[int, ...],
                 num_classes: int, constraints: Mapping[str, Any] | None = None,
                 population_size: int = 16, sample_size: int = 4,
                 generation_size: int = 8) -> None:
        super().__init__(space, seed=seed, input_shape=input_shape, num_classes=num_classes,
                         constraints=constraints)
        if not 1 <= sample_size <= population_size or generation_size < 1:
            raise ValueError("need 1 <= sample_size <= population_size and generation_size >= 1")
        self.population_size = population_size
        self.sample_size = sample_size
        self.generation_size = generation_size
        # Proposals already derived, by index: parents' genomes without re-deriving the chain.
        self._proposals: dict[int, Proposal] = {}

    def parent_of(self, index: int, history: Mapping[int, Outcome]) -> int | None:
        """The tournament winner candidate ``index`` mutates; ``None``: it is sampled at random
        (the first ``population_size`` candidates, or no candidate scored yet)."""
        if index < self.population_size:
            return None
        start = index - index % self.generation_size
        scored = sorted(i for i, o in history.items()
                        if i < start and o.status == "scored" and o.score is not None)
        population = scored[-self.population_size:]
        if not population:
            return None
        rng = random.Random(f"evolution/{self.seed}/{index}")
        contenders = rng.sample(population, min(self.sample_size, len(population)))
        # Highest score; ties go to the lower index (the older candidate).
        return max(contenders, key=lambda i: (history[i].score, -i))

    def propose(self, index: int, history: Mapping[int, Outcome]) -> Proposal:
        # Parents come before their children's generation: derive the chain of ancestors not yet
        # known from the oldest down, so a worker that resumes a job replays it without recursion.
        chain = [index]
        while chain[-1] not in self._proposals:
            parent = self.parent_of(chain[-1], history)
            if parent is None:
                break
            chain.append(parent)
        for i in reversed(chain):
            if i not in self._proposals:
                self._proposals[i] = self._derive(i, history)
        return self._proposals[index]

    def _derive(self, index: int, history: Mapping[int, Outcome]) -> Proposal:
        parent = self.parent_of(index, history)
        if parent is None:
            return self._sample(index)
        genome = self._proposals[parent].genome
        if genome is None:  # cannot happen for a scored parent; sample rather than fail
            return self._sample(index)
        try:
            child, graph = self.space.mutate(
                genome, candidate_seed(self.seed, index), self.input_shape, self.num_classes,
                max_parameters=self.constraints.get("max_parameters"),
                max_flops=self.constraints.get("max_flops"))
        except SearchSpaceError as e:
            return Proposal(index, None, reason=str(e), parent=parent)
        return Proposal(index, graph, child, parent=parent)


def make_strategy(name: str, space: str, *, seed: int, input_shape: tuple[int, ...],
                  num_classes: int, constraints: Mapping[str, Any] | None = None
                  ) -> SearchStrategy:
    """The strategy called ``name`` (``random`` or ``evolution``) for one job. Raises
    :class:`SearchSpaceError` for an unknown space, :class:`ValueError` for an unknown name."""
    kwargs: dict[str, Any] = dict(seed=seed, input_shape=tuple(input_shape),
                                  num_classes=num_classes, constraints=constraints)
    if name == "random":
        return RandomSearch(space, **kwargs)
    if name == "evolution":
        return RegularizedEvolution(space, **kwargs)
    raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
