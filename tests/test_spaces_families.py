"""The families space: every family runs, is reachable and keeps its name through mutation;
restricted views sample only what they name; hostile genomes are refused; typical samples use a
good share of the GHN's training bounds."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import re
import statistics
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nas_service.graph import ACTIVATIONS, ArchitectureGraph, GraphValidationError, to_module
from nas_service.spaces import (
    FAMILIES,
    SPACES,
    FamilySpace,
    SearchSpaceError,
    family_of,
    get_space,
    split_space_names,
)
from nas_service.spaces.families.genome import MAX_BODY_SIDE

SHAPES = [(1, 28, 28), (3, 32, 32)]
SMALL = {"max_parameters": 200_000, "max_flops": 4_000_000}
GHN_BOUNDS = {"max_parameters": 1_000_000, "max_flops": 20_000_000}
WEIGHT_LAYERS = frozenset({"conv2d", "linear", "patch_embed", "self_attention"})


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _family_genome(family: str, seed: int = 0, shape: tuple = (1, 28, 28), **bounds: int
                   ) -> dict:
    return FamilySpace([family]).sample_with_genome(seed, shape, **bounds)[0]


@pytest.fixture(scope="module")
def at_ghn_bounds() -> list[tuple[dict, ArchitectureGraph]]:
    """400 architectures of the whole space as GHN training samples them."""
    return [get_space("families").sample_with_genome(seed, (1, 28, 28), 10, **GHN_BOUNDS)
            for seed in range(400)]


# ---- every family runs ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_gives_networks_with_finite_logits(family, shape):
    space = FamilySpace([family])
    for seed in range(6):
        num_classes = (10, 3, 100)[seed % 3]
        graph = space.sample(seed, shape, num_classes, **SMALL)
        assert family_of(graph) == family
        assert graph.num_parameters <= SMALL["max_parameters"]
        assert graph.flops <= SMALL["max_flops"]
        net = to_module(graph)
        with torch.no_grad():
            logits = net(torch.randn(2, *shape))
        assert logits.shape == (2, num_classes)
        assert torch.isfinite(logits).all(), graph.name
        assert sum(p.numel() for p in net.parameters()) == graph.num_parameters


def test_an_untrained_ghn_predicts_every_parameter_of_every_family():
    from nas_service.ghn import GHNConfig, GraphHyperNetwork

    ghn = GraphHyperNetwork(GHNConfig(hidden=32, layers=1)).eval()
    graphs = [FamilySpace([f]).sample(1, (1, 28, 28), 10, **SMALL) for f in FAMILIES]
    with torch.no_grad():
        predicted = ghn.predict(graphs)
    for graph, state in zip(graphs, predicted, strict=True):
        net = to_module(graph)
        assert state.keys() == dict(net.named_parameters()).keys(), graph.name
        net.load_state_dict(state, strict=False)
        with torch.no_grad():
            assert torch.isfinite(net.eval()(torch.randn(2, 1, 28, 28))).all(), graph.name


def test_large_inputs_run_their_body_on_maps_of_at_most_64_per_side():
    for family in FAMILIES:
        graph = FamilySpace([family]).sample(2, (3, 224, 224), 10, max_flops=30_000_000)
        for n in graph.nodes:
            if len(n.shape) == 3 and n.id != "input" and not n.id.startswith("stem_"):
                assert max(n.shape[1:]) <= MAX_BODY_SIDE, (graph.name, n.id, n.shape)


def test_node_ids_say_where_a_node_sits():
    pattern = re.compile(r"^(input|output|flatten|class_token|pos_embed|patch_\w+|final_\w+"
                         r"|stem_\w+|stage\d_(block|layer|module)\d+_\w+|stage\d_transition_\w+"
                         r"|stage\d_pool|block\d+_\w+|layer\d_\w+|head_\w+)$")
    for family in FAMILIES:
        for seed in range(3):
            for n in FamilySpace([family]).sample(seed, **SMALL).nodes:
                assert pattern.match(n.id), (family, n.id)


# ---- determinism, names, reachability -----------------------------------------------------------


def test_the_same_seed_gives_the_same_genome_and_graph_named_after_its_family():
    space = get_space("families")
    for seed in (0, 7, 12345):
        random.seed(seed)
        first_genome, first = space.sample_with_genome(seed, (3, 32, 32), **SMALL)
        random.seed(seed + 1)
        second_genome, second = space.sample_with_genome(seed, (3, 32, 32), **SMALL)
        assert first_genome == second_genome and first.to_dict() == second.to_dict()
        assert first.name == f"families/{first_genome['family']}/seed={seed}"
        assert json.loads(json.dumps(first_genome)) == first_genome
        assert space.genome_to_graph(first_genome, (3, 32, 32)) == first


def test_every_family_is_reachable_and_picked_about_uniformly():
    counts = Counter(get_space("families").sample_with_genome(seed)[0]["family"]
                     for seed in range(600))
    assert set(counts) == set(FAMILIES)
    expected = 600 / len(FAMILIES)
    assert all(0.5 * expected <= c <= 1.5 * expected for c in counts.values()), counts


def test_samples_at_the_ghn_bounds_fit_them(at_ghn_bounds):
    for _, graph in at_ghn_bounds:
        assert graph.num_parameters <= GHN_BOUNDS["max_parameters"]
        assert graph.flops <= GHN_BOUNDS["max_flops"]


def test_typical_samples_use_a_good_share_of_the_ghn_bounds(at_ghn_bounds):
    graphs = [g for _, g in at_ghn_bounds[:200]]
    assert statistics.median(g.flops for g in graphs) > 3_000_000
    assert statistics.median(g.num_parameters for g in graphs) > 50_000
    depths = [sum(n.op in WEIGHT_LAYERS for n in g.nodes) for _, g in at_ghn_bounds]
    assert min(depths) <= 3 and max(depths) >= 50
    widths = [max(n.shape[0] for n in g.nodes if n.op == "conv2d")
              for g in graphs if any(n.op == "conv2d" for n in g.nodes)]
    assert statistics.median(widths) >= 32  # narrowed to fit, not down to a handful of channels
    assert max(widths) >= 256


def _features(graph: ArchitectureGraph) -> set[str]:
    found = set()
    for n in graph.nodes:
        a, found_op = n.attrs, n.op
        found.add(found_op)
        if n.op in ("layer_norm", "group_norm") and len(n.input_shapes[0]) == 3:
            found.add(f"{n.op}_on_maps")
        if n.op == "conv2d":
            found.add(f"kernel{a.kernel_size[0]}")
            c = n.input_shapes[0][0]
            if a.groups > 1:
                found.add("depthwise" if a.groups == c else "grouped")
            if a.dilation[0] > 1:
                found.add("dilated")
            if a.kernel_size[0] == 7 and a.stride[0] == 2 and n.id == "stem_conv":
                found.add("imagenet_stem")
        if n.op == "mul" and "_se_" in n.id:
            found.add("squeeze_excite")
        if n.id == "head_fc1":
            found.add("two_hidden_head_layers")
        if n.op == "global_avg_pool" and len(n.input_shapes[0]) == 2:
            found.add("token_mean")
    if not any(n.op in ("batch_norm", "layer_norm", "group_norm") for n in graph.nodes):
        found.add("normless")
    return found


def test_the_space_covers_what_people_write(at_ghn_bounds):
    found: set[str] = set()
    for _, graph in at_ghn_bounds:
        found |= _features(graph)
    expected = {
        *ACTIVATIONS, "batch_norm", "layer_norm_on_maps", "group_norm_on_maps", "normless",
        "kernel1", "kernel3", "kernel5", "kernel7", "depthwise", "grouped", "dilated",
        "imagenet_stem", "squeeze_excite", "concat", "max_pool", "avg_pool", "global_max_pool",
        "flatten", "dropout", "two_hidden_head_layers", "patch_embed", "class_token",
        "pos_embed", "self_attention", "select_token", "token_mean",
    }
    assert expected <= found, f"never sampled: {sorted(expected - found)}"


# ---- restricted views ---------------------------------------------------------------------------


def test_a_view_samples_only_the_families_it_names():
    kept = get_space("families[vgg,resnet]")
    assert kept.name == "families[vgg,resnet]"
    assert {kept.sample_with_genome(s, **SMALL)[0]["family"] for s in range(30)} == {
        "vgg", "resnet"}
    left_out = get_space("families[-densenet, -vit]")
    assert left_out.name == "families[-densenet,-vit]"
    families = {left_out.sample_with_genome(s)[0]["family"] for s in range(150)}
    assert families == set(FAMILIES) - {"densenet", "vit"}
    graph = left_out.sample(3)
    assert graph.name.startswith("families[-densenet,-vit]/") and family_of(graph) in families


def test_views_have_one_name_per_set_of_families():
    assert get_space("families[resnet,vgg]").name == get_space("families[vgg, resnet]").name
    everything_but_mlp = get_space("families[" + ",".join(FAMILIES[:-1]) + "]")
    assert everything_but_mlp.name == "families[-mlp]"
    assert get_space("families[" + ",".join(FAMILIES) + "]").name == "families"
    for name in ("families[vgg,resnet]", "families[-mlp]", "families[plain]"):
        assert get_space(get_space(name).name).name == get_space(name).name
    assert "families[resnet]" not in SPACES  # views are made on request, not listed


@pytest.mark.parametrize("name, message", [
    ("families[resnet,transformer]", "unknown family 'transformer'; known families: plain"),
    ("families[-resnet,vgg]", "not both"),
    ("families[]", "empty family name"),
    ("families[resnet,]", "empty family name"),
    ("families[" + ",".join("-" + f for f in FAMILIES) + "]", "at least one family"),
    ("families[resnet", "not a families view"),
    ("familie[resnet]", "unknown search space"),
])
def test_a_malformed_view_is_refused_with_the_reason(name, message):
    with pytest.raises(SearchSpaceError, match=re.escape(message)):
        get_space(name)


def test_a_view_builds_and_mutates_any_families_genome():
    genome = _family_genome("densenet", **SMALL)
    view = get_space("families[vgg]")
    assert view.genome_to_graph(genome) == get_space("families").genome_to_graph(genome)
    child, graph = view.mutate(genome, 3, **SMALL)
    assert child["family"] == "densenet" and family_of(graph) == "densenet"
    assert graph.name.startswith("families[vgg]/densenet/mutant/seed=3/parent=")


def test_family_of_reads_graphs_names_and_genomes():
    genome, graph = get_space("families").sample_with_genome(5)
    assert family_of(graph) == family_of(graph.name) == family_of(genome) == genome["family"]
    assert family_of("families[-vit]/mlp/mutant/seed=1/parent=abc") == "mlp"
    for other in (get_space("cells").sample(5), "families/transformer/seed=1", "mlp/seed=1",
                  "cells/mlp/seed=1", None, 3, {"space": "cells", "family": "mlp"}):
        assert family_of(other) is None
    assert family_of(get_space("families").genome_to_graph(genome)) is None  # unnamed


def test_space_lists_split_on_commas_outside_brackets():
    assert split_space_names("cells, families[-vit,-mlp],macro") == (
        "cells", "families[-vit,-mlp]", "macro")
    assert split_space_names("families") == ("families",)
    assert split_space_names(" , ") == ()


# ---- mutation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_mutation_keeps_the_family_and_the_contract(family):
    space = get_space("families")
    genome = _family_genome(family, 4, **SMALL)
    parent = space.genome_to_graph(genome)
    untouched = copy.deepcopy(genome)
    for seed in range(4):
        child_genome, child = space.mutate(genome, seed, **SMALL)
        assert genome == untouched
        assert child_genome["family"] == family and family_of(child) == family
        assert child.content_hash() != parent.content_hash()
        assert child.num_parameters <= SMALL["max_parameters"]
        assert child.flops <= SMALL["max_flops"]
        assert space.mutate(genome, seed, **SMALL) == (child_genome, child)
        assert child.name.startswith(f"families/{family}/mutant/seed={seed}/parent=")


@pytest.mark.parametrize("family", ["resnet", "densenet", "vit", "mlp"])
def test_mutations_mostly_change_a_field_and_sometimes_the_structure(family):
    genome = _family_genome(family)
    space = get_space("families")

    def size(g: dict) -> int:
        return len(g["stages"]) if "stages" in g else len(g.get("widths", [])) or g["depth"]

    rng = random.Random(0)
    changed = [size(space.mutate_genome(genome, rng)) != size(genome) for _ in range(200)]
    assert 0.05 <= sum(changed) / len(changed) <= 0.5


def test_a_chain_of_mutations_in_every_family_stays_runnable():
    space = get_space("families")
    for family in FAMILIES:
        genome = _family_genome(family, 9, (3, 32, 32), **SMALL)
        for step in range(12):
            genome, graph = space.mutate(genome, step, (3, 32, 32), **SMALL)
        assert genome["family"] == family
        with torch.no_grad():
            assert torch.isfinite(to_module(graph)(torch.randn(2, 3, 32, 32))).all()


# ---- hostile genomes ------------------------------------------------------------------------------


def _edit(family: str, path: tuple, value) -> dict:
    genome = _family_genome(family, 1)
    target = genome
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return genome


_DELETE = object()


@pytest.mark.parametrize("make, message", [
    (lambda: None, "must be a dict"),
    (lambda: [1, 2], "must be a dict"),
    (lambda: _edit("resnet", ("space",), "macro"), "given to space"),
    (lambda: _edit("resnet", ("version",), 2), "version"),
    (lambda: _edit("resnet", ("family",), "transformer"), "'family' must be one of"),
    (lambda: _edit("resnet", ("family",), ["resnet"]), "'family' must be one of"),
    (lambda: _edit("resnet", ("head",), _DELETE), "missing ['head']"),
    (lambda: _edit("resnet", ("extra",), 1), "unknown ['extra']"),
    (lambda: _edit("resnet", ("activation",), "swish"), "'activation' must be"),
    (lambda: _edit("resnet", ("norm",), "instance"), "'norm' must be"),
    (lambda: _edit("resnet", ("stages",), []), "'stages' must be a list of 1 to"),
    (lambda: _edit("resnet", ("stages",), [{}] * 7), "'stages' must be a list of 1 to"),
    (lambda: _edit("resnet", ("stages",), "stage"), "'stages' must be a list"),
    (lambda: _edit("resnet", ("stages", 0), 3), "stage 0 must be a dict"),
    (lambda: _edit("resnet", ("stages", 0, "width"), 16.0), "'width' must be an int"),
    (lambda: _edit("resnet", ("stages", 0, "width"), True), "'width' must be an int"),
    (lambda: _edit("resnet", ("stages", 0, "width"), 10**9), "'width' must be an int"),
    (lambda: _edit("resnet", ("stages", 0, "depth"), 0), "'depth' must be an int"),
    (lambda: _edit("resnet", ("stages", 0, "stride"), 3), "'stride' must be an int"),
    (lambda: _edit("resnet", ("stages", 0, "se"), 1), "'se' must be a bool"),
    (lambda: _edit("resnet", ("stages", 0, "activation"), "swish"), "'activation' must be null"),
    (lambda: _edit("resnet", ("stages", 0, "kernel"), 3), "unknown keys ['kernel']"),
    (lambda: _edit("resnet", ("stem",), {"width": 16}), "'stem': missing keys"),
    (lambda: _edit("resnet", ("stem",), 16), "'stem' must be a dict"),
    (lambda: _edit("plain", ("stages", 0, "kernel"), 9), "'kernel' must be one of"),
    (lambda: _edit("plain", ("stages", 0, "downsample"), "nearest"), "'downsample'"),
    (lambda: _edit("resnext", ("stages", 0, "groups"), 3), "'groups' must be one of"),
    (lambda: _edit("mobilenet", ("stages", 0, "expansion"), 5), "'expansion' must be one of"),
    (lambda: _edit("densenet", ("stages", 0, "growth"), 1), "'growth' must be an int"),
    (lambda: _edit("inception", ("stages", 0, "branch"), "7x7"), "'branch' must be one of"),
    (lambda: _edit("resnet", ("head", "pool"), "token"), "'pool' must be one of"),
    (lambda: _edit("resnet", ("head", "hidden"), [64, 64, 64]), "'hidden' must be a list"),
    (lambda: _edit("resnet", ("head", "hidden"), ["64"]), "'hidden' must be a list"),
    (lambda: _edit("resnet", ("head", "dropout"), math.nan), "'dropout' must be a number"),
    (lambda: _edit("resnet", ("head", "dropout"), 1.0), "'dropout' must be a number"),
    (lambda: _edit("resnet", ("head", "conv"), 0), "'conv' must be null or"),
    (lambda: _edit("vit", ("heads",), 3), "'heads' must be one of"),
    (lambda: {**_edit("vit", ("heads",), 8), "dim": 36}, "divisible by 'heads'"),
    (lambda: _edit("vit", ("head", "pool"), "avg"), "'pool' must be one of"),
    (lambda: _edit("vit", ("head", "conv"), None), "unknown keys ['conv']"),
    (lambda: _edit("vit", ("patch",), 6), "'patch' must be one of"),
    (lambda: _edit("convmixer", ("kernel",), 1), "'kernel' must be one of"),
    (lambda: _edit("mlp", ("widths",), []), "'widths' must be a list of 1 to"),
    (lambda: _edit("mlp", ("norm",), "group"), "'norm' must be one of"),
    (lambda: _edit("mlp", ("head",), {}), "unknown ['head']"),
])
def test_malformed_genomes_are_refused_with_the_reason(make, message):
    with pytest.raises(SearchSpaceError, match=re.escape(message)):
        get_space("families").genome_to_graph(make())
    with pytest.raises(SearchSpaceError, match=re.escape(message)):
        get_space("families").mutate(make(), 0)


def _leaves(value, path=()):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(value, list) and value:
        for i, v in enumerate(value):
            yield from _leaves(v, (*path, i))
    else:
        yield path


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.text(max_size=8), children, max_size=3), max_leaves=6)


@settings(max_examples=150, deadline=None)
@given(family=st.sampled_from(FAMILIES), data=st.data())
def test_any_edit_of_a_genome_is_built_or_refused_cleanly(family, data):
    genome = _family_genome(family, 2)
    leaves = list(_leaves(genome))
    path = data.draw(st.sampled_from(leaves))
    target = genome
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = data.draw(json_values)
    with contextlib.suppress(SearchSpaceError, GraphValidationError):  # the only refusals
        get_space("families").genome_to_graph(genome)
