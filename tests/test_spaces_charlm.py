"""The ``charlm`` space: every sample and mutant is a valid, runnable, bounded, reproducible
language model."""

from __future__ import annotations

import copy
import json
import random
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nas_service.graph import ArchitectureGraph, to_module
from nas_service.spaces import SearchSpaceError, get_space
from nas_service.spaces.charlm import CELLS

SPACE = get_space("charlm")
T, VOCAB = 16, 30
seeds = st.integers(min_value=0, max_value=2**31 - 1)
few = settings(max_examples=20, deadline=None)


@few
@given(seed=seeds)
def test_sampled_language_model_validates_and_round_trips(seed: int) -> None:
    genome, graph = SPACE.sample_with_genome(seed, (T,), VOCAB)
    assert graph.input_shape == (T,) and graph.task == "next_token"
    assert graph.num_classes == VOCAB and graph.output_node.shape == (T, VOCAB)
    assert graph.name == f"charlm/seed={seed}"
    assert ArchitectureGraph.from_json(graph.to_json()) == graph
    assert SPACE.genome_to_graph(json.loads(json.dumps(genome)), (T,), VOCAB) == graph


@pytest.mark.parametrize("seed", range(4))
def test_sampled_language_model_runs_on_token_ids(seed: int) -> None:
    torch.set_num_threads(1)
    graph = SPACE.sample(seed, (T,), VOCAB, max_parameters=60_000)
    net = to_module(graph).eval()
    with torch.no_grad():
        logits = net(torch.randint(0, VOCAB, (2, T)))
    assert logits.shape == (2, T, VOCAB) and torch.isfinite(logits).all()
    assert sum(p.numel() for p in net.parameters()) == graph.num_parameters


def test_seeds_are_reproducible_and_cover_every_cell() -> None:
    random.seed(1)
    first = SPACE.sample_with_genome(123, (T,), VOCAB)
    random.seed(2)
    assert SPACE.sample_with_genome(123, (T,), VOCAB) == first
    genomes = [SPACE.sample_with_genome(seed, (T,), VOCAB)[0] for seed in range(80)]
    cells = Counter(g["cell"] for g in genomes)
    assert set(cells) == set(CELLS)
    assert {g["layers"] for g in genomes} == {1, 2, 3}
    assert any(g["layer_norm"] for g in genomes) and any(g["head"] for g in genomes)
    hashes = {SPACE.sample(seed, (T,), VOCAB).content_hash() for seed in range(80)}
    assert len(hashes) >= 75


@few
@given(seed=seeds, max_parameters=st.integers(5_000, 200_000))
def test_samples_respect_the_parameter_bound(seed: int, max_parameters: int) -> None:
    graph = SPACE.sample(seed, (T,), VOCAB, max_parameters=max_parameters)
    assert graph.num_parameters <= max_parameters


@few
@given(parent_seed=seeds, seed=seeds)
def test_mutation_gives_a_valid_different_deterministic_child(parent_seed: int,
                                                              seed: int) -> None:
    genome, parent = SPACE.sample_with_genome(parent_seed, (T,), VOCAB, max_parameters=300_000)
    untouched = copy.deepcopy(genome)
    child_genome, child = SPACE.mutate(genome, seed, (T,), VOCAB, max_parameters=300_000)
    assert genome == untouched
    assert child.content_hash() != parent.content_hash()
    assert child.num_parameters <= 300_000
    assert SPACE.genome_to_graph(child_genome, (T,), VOCAB) == child
    assert SPACE.mutate(genome, seed, (T,), VOCAB, max_parameters=300_000) == (child_genome,
                                                                                child)


@pytest.mark.parametrize("shape", [(1, 28, 28), (16, 4), (1,), (0,)])
def test_image_and_degenerate_inputs_are_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(SearchSpaceError, match=r"input_shape must be \[T\]"):
        SPACE.sample(0, shape, VOCAB)


def _genome(**changes: object) -> dict:
    genome = SPACE.sample_with_genome(3, (T,), VOCAB)[0]
    genome.update({"cell": "rhn", "depth": 2, "hyper": None, "layer_norm": False})
    genome.update(changes)
    return genome


@pytest.mark.parametrize(("genome", "message"), [
    (_genome(cell="transformer"), "'cell'"),
    (_genome(layers=4), "'layers'"),
    (_genome(hidden=True), "'hidden'"),
    (_genome(depth=None), "'depth'"),
    (_genome(cell="lstm", depth=None, layer_norm=True), "'layer_norm'"),
    (_genome(cell="gru", depth=2), "'depth'"),
    (_genome(hyper=16), "'hyper'"),
    (_genome(dropout=0.5), "'dropout'"),
    (_genome(head=3), "'head'"),
    (_genome(extra=1), "unknown"),
    (_genome(space="macro"), "given to space"),
])
def test_malformed_genomes_are_refused_by_name(genome: dict, message: str) -> None:
    with pytest.raises(SearchSpaceError, match=message):
        SPACE.genome_to_graph(genome, (T,), VOCAB)


def test_a_vocabulary_of_one_token_is_refused() -> None:
    with pytest.raises(SearchSpaceError, match="vocabulary"):
        SPACE.genome_to_graph(_genome(), (T,), 1)
