"""The search spaces: every sample and mutant is a valid, runnable, bounded, reproducible graph."""

from __future__ import annotations

import copy
import hashlib
import json
import random
import re
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nas_service.graph import ArchitectureGraph, GraphLimits, to_module
from nas_service.spaces import (
    SPACES,
    CellSpace,
    SearchSpace,
    SearchSpaceError,
    get_space,
    sample_architecture,
)

SPACE_NAMES = sorted(name for name in SPACES if name != "charlm")
"""The image spaces; the language models of ``charlm`` have tests/test_spaces_charlm.py."""
SHAPES = [(1, 28, 28), (3, 32, 32)]
seeds = st.integers(min_value=0, max_value=2**31 - 1)
few = settings(max_examples=25, deadline=None)


def _prefix(name: str, genome: dict) -> str:
    """How a space's graph names start: the families space names the family too."""
    return f"{name}/{genome['family']}" if name == "families" else name


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # Batch-of-2 passes through tiny nets gain nothing from intra-op threads, and on a busy
    # 2-core machine the thread pool's spinning makes them many times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", SPACE_NAMES)
@few
@given(seed=seeds)
def test_sampled_graph_validates_and_round_trips_through_json(name, shape, seed):
    genome, graph = get_space(name).sample_with_genome(seed, shape, 10)
    assert graph.input_shape == shape
    assert graph.num_classes == 10
    assert graph.name == f"{_prefix(name, genome)}/seed={seed}"
    assert ArchitectureGraph.from_dict(graph.to_dict()) == graph
    assert ArchitectureGraph.from_json(graph.to_json()).to_dict() == graph.to_dict()
    canonical = json.dumps(graph.to_dict()["nodes"], sort_keys=True, separators=(",", ":"))
    assert graph.content_hash() == hashlib.sha256(canonical.encode()).hexdigest()
    # The genome survives JSON and rebuilds the same graph.
    assert get_space(name).genome_to_graph(json.loads(json.dumps(genome)), shape, 10) == graph


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", SPACE_NAMES)
def test_sampled_network_runs_a_forward_pass(name, shape, seed):
    graph = get_space(name).sample(seed, shape, num_classes=7)
    net = to_module(graph)
    with torch.no_grad():
        logits = net(torch.randn(2, *shape))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    assert sum(p.numel() for p in net.parameters()) == graph.num_parameters


@pytest.mark.parametrize("name", SPACE_NAMES)
def test_same_seed_gives_the_same_graph_whatever_the_global_rng_state(name):
    space = get_space(name)
    random.seed(1)
    torch.manual_seed(1)
    first_genome, first = space.sample_with_genome(123, (3, 32, 32))
    random.seed(2)
    torch.manual_seed(2)
    second_genome, second = space.sample_with_genome(123, (3, 32, 32))
    assert first.content_hash() == second.content_hash()
    assert first.to_dict() == second.to_dict()
    assert first_genome == second_genome


@pytest.mark.parametrize("name", SPACE_NAMES)
def test_different_seeds_give_mostly_different_graphs(name):
    hashes = {get_space(name).sample(seed).content_hash() for seed in range(100)}
    assert len(hashes) >= 95


@pytest.mark.parametrize("name", SPACE_NAMES)
@few
@given(seed=seeds, max_parameters=st.integers(20_000, 300_000),
       max_flops=st.integers(2_000_000, 30_000_000))
def test_samples_respect_parameter_and_flop_bounds(name, seed, max_parameters, max_flops):
    graph = get_space(name).sample(seed, max_parameters=max_parameters, max_flops=max_flops)
    assert graph.num_parameters <= max_parameters
    assert graph.flops <= max_flops


@pytest.mark.parametrize("name", SPACE_NAMES)
def test_graph_limits_on_totals_act_as_bounds(name):
    limits = GraphLimits(max_parameters=40_000, max_flops=4_000_000)
    graph = get_space(name).sample(5, limits=limits)
    assert graph.num_parameters <= 40_000 and graph.flops <= 4_000_000


@pytest.mark.parametrize("name", SPACE_NAMES)
def test_impossible_bounds_raise_a_clear_error(name):
    with pytest.raises(SearchSpaceError, match="fits the bounds"):
        get_space(name).sample(0, max_parameters=50)


@pytest.mark.parametrize("name", SPACE_NAMES)
@few
@given(parent_seed=seeds, seed=seeds)
def test_mutation_gives_a_valid_different_deterministic_child(name, parent_seed, seed):
    space = get_space(name)
    genome, parent = space.sample_with_genome(parent_seed, max_parameters=500_000)
    untouched = copy.deepcopy(genome)
    child_genome, child = space.mutate(genome, seed, max_parameters=500_000)
    assert genome == untouched
    assert child.content_hash() != parent.content_hash()
    assert child.num_parameters <= 500_000
    assert ArchitectureGraph.from_dict(child.to_dict()) == child
    assert space.genome_to_graph(child_genome) == child
    again_genome, again = space.mutate(genome, seed, max_parameters=500_000)
    assert again_genome == child_genome and again == child
    assert child.name.startswith(f"{_prefix(name, child_genome)}/mutant/seed={seed}/parent=")


@pytest.mark.parametrize("name", SPACE_NAMES)
def test_a_chain_of_mutations_stays_valid_and_runnable(name):
    space = get_space(name)
    genome, graph = space.sample_with_genome(5, (3, 32, 32))
    for step in range(40):
        genome, graph = space.mutate(genome, step, (3, 32, 32), max_flops=50_000_000)
        assert graph.flops <= 50_000_000
    with torch.no_grad():
        assert to_module(graph)(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def _cell_features(graph: ArchitectureGraph) -> set[str]:
    found = set()
    for n in graph.nodes:
        a = n.attrs
        if n.op == "conv2d":
            k, groups, dil = tuple(a.kernel_size), a.groups, tuple(a.dilation)
            depthwise = groups > 1 and groups == n.input_shapes[0][0]
            if depthwise and dil == (1, 1):
                found.add(f"sep_conv_{k[0]}x{k[1]}")
            elif depthwise and dil == (2, 2):
                found.add(f"dil_conv_{k[0]}x{k[1]}")
            elif k in ((7, 1), (1, 7)) or ("_edge" in n.id and groups == 1):
                found.add(f"conv_{k[0]}x{k[1]}")
        elif n.op in ("max_pool", "avg_pool", "self_attention", "mul", "dropout"):
            found.add(n.op)
        elif n.op in ("gelu", "silu", "elu", "leaky_relu", "hardswish", "mish"):
            found.add("non_relu_activation")
        if re.search(r"_edge\d_skip_", n.id):
            found.add("strided_skip")
        if n.id == "head_fc2":
            found.add("mlp_head")
        if n.id == "stem_conv2":
            found.add("double_stem")
    if not any(n.op == "batch_norm" for n in graph.nodes):
        found.add("batch_norm_free")
    return found


def test_cells_space_covers_every_op_kind_and_bn_free_nets_within_300_samples():
    space = get_space("cells")
    found: set[str] = set()
    genome_ops: Counter[str] = Counter()
    batch_norm_free = 0
    for seed in range(300):
        genome, graph = space.sample_with_genome(seed)
        features = _cell_features(graph)
        found |= features
        batch_norm_free += "batch_norm_free" in features
        genome_ops.update(op for kind in ("normal", "reduce")
                          for node in genome[kind] for op, _ in node)
    expected = {
        "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "conv_7x1", "conv_1x7",
        "conv_1x1", "conv_3x3", "conv_5x5", "conv_7x7", "max_pool", "avg_pool",
        "self_attention", "mul", "dropout", "non_relu_activation", "strided_skip", "mlp_head",
        "double_stem", "batch_norm_free",
    }
    assert expected <= found, f"never sampled: {sorted(expected - found)}"
    assert genome_ops["none"] > 0 and genome_ops["skip_connect"] > 0
    assert 10 <= batch_norm_free <= 60  # about a tenth


@pytest.mark.parametrize("name", SPACE_NAMES)
@settings(max_examples=30, deadline=None)
@given(seed=seeds, channels=st.integers(1, 4), height=st.integers(8, 64),
       width=st.integers(8, 64))
def test_any_input_of_at_least_8x8_gives_a_valid_graph(name, seed, channels, height, width):
    graph = get_space(name).sample(seed, (channels, height, width), num_classes=3)
    assert graph.input_shape == (channels, height, width)
    for n in graph.nodes:
        if len(n.shape) == 3 and min(n.shape[1:]) < 2:
            # Only squeeze-excitation squeezes a map to 1x1; the body keeps at least 2x2.
            assert "_se_" in n.id, n.id


@pytest.mark.parametrize("shape", [(3, 8, 8), (2, 9, 40), (3, 224, 224)])
@pytest.mark.parametrize("name", SPACE_NAMES)
def test_unusual_input_shapes_run(name, shape):
    graph = get_space(name).sample(11, shape, num_classes=4, max_flops=30_000_000)
    with torch.no_grad():
        assert to_module(graph)(torch.randn(2, *shape)).shape == (2, 4)


@pytest.mark.parametrize("shape", [(1, 7, 28), (28, 28), (1, 28, 28, 1), (0, 28, 28)])
def test_unsupported_input_shapes_are_refused(shape):
    with pytest.raises(SearchSpaceError, match="input"):
        get_space("cells").sample(0, shape)


@pytest.mark.parametrize("name, pattern", [
    ("cells", r"^(input|output|stem_(conv|bn|act)\d|cell\d+_(pre[01]|node\d|concat)\w*|head_\w+)$"),
    ("macro", r"^(input|output|stem_(conv|bn|act|pool\d)|stage\d_block\d_\w+|head_\w+)$"),
])
def test_node_ids_say_where_a_node_sits(name, pattern):
    for seed in range(20):
        for n in get_space(name).sample(seed).nodes:
            assert re.match(pattern, n.id), n.id


def test_registry_lists_spaces_and_names_them_in_errors():
    assert set(SPACES) == {"cells", "charlm", "families", "macro"}
    for name, space in SPACES.items():
        assert isinstance(space, SearchSpace)
        assert space.name == name
    with pytest.raises(SearchSpaceError, match="cells, charlm, families, macro"):
        get_space("darts")
    assert sample_architecture("macro", 3) == get_space("macro").sample(3)
    assert sample_architecture(CellSpace(), 3, (3, 32, 32)) == get_space("cells").sample(
        3, (3, 32, 32))


def _cells_genome() -> dict:
    return get_space("cells").sample_with_genome(0)[0]


def _macro_genome() -> dict:
    return get_space("macro").sample_with_genome(0)[0]


def _set(genome: dict, path: tuple, value) -> dict:
    genome = copy.deepcopy(genome)
    target = genome
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return genome


@pytest.mark.parametrize("space, make, message", [
    ("cells", lambda: _set(_cells_genome(), ("space",), "macro"), "given to space"),
    ("cells", lambda: _set(_cells_genome(), ("version",), 9), "version"),
    ("cells", lambda: _set(_cells_genome(), ("width",), 3), "'width'"),
    ("cells", lambda: _set(_cells_genome(), ("width",), 16.0), "'width'"),
    ("cells", lambda: _set(_cells_genome(), ("normal", 0, 0, 0), "conv_9x9"), "unknown op"),
    ("cells", lambda: _set(_cells_genome(), ("normal", 0, 0, 1), 5), "input must be"),
    ("cells", lambda: _set(_set(_cells_genome(), ("reduce", 0, 0, 0), "self_attention"),
                           ("reduce", 0, 1, 0), "self_attention"), "no strided form"),
    ("cells", lambda: {**_cells_genome(), "extra": 1}, "unknown keys"),
    ("macro", lambda: _set(_macro_genome(), ("stages",), []), "'stages'"),
    ("macro", lambda: _set(_macro_genome(), ("stages", 0, "block"), "dense"), "'block'"),
    ("macro", lambda: _set(_macro_genome(), ("stages", 0, "width"), 4096), "'width'"),
    ("macro", lambda: _set(_macro_genome(), ("activation",), "swish"), "'activation'"),
    ("macro", lambda: "not a genome", "must be a dict"),
])
def test_malformed_genomes_are_refused_with_the_reason(space, make, message):
    with pytest.raises(SearchSpaceError, match=message):
        get_space(space).genome_to_graph(make())
    with pytest.raises(SearchSpaceError, match=message):
        get_space(space).mutate(make(), 0)


def test_cells_reduce_at_a_third_and_two_thirds_and_double_the_width():
    genome = _set(_set(_cells_genome(), ("num_cells",), 6), ("stem_stride",), 1)
    graph = get_space("cells").genome_to_graph(genome)
    c = genome["width"]
    # Cell i's preprocessing of s1 sees cell i-1's output at cell i's own width.
    seen = [(graph[f"cell{i}_pre1_conv"].shape[0], graph[f"cell{i}_pre1_conv"].shape[1])
            for i in range(6)]
    assert seen == [(c, 28), (c, 28), (2 * c, 28), (2 * c, 14), (4 * c, 14), (4 * c, 7)]
