"""The ``nas-graph/1`` document as specified in docs/graph-format.md.

Round trips, the canonical form and content hash, topological reordering, the builder, the
summary, the runnable module (input checks, awkward ids, train/eval) and the spec document itself
(its full example validates and is shipped in examples/, its tables cover every op and limit).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from nas_service.graph import (
    DEFAULT_LIMITS,
    FORMAT,
    OP_NAMES,
    ArchitectureGraph,
    GraphBuilder,
    GraphLimits,
    GraphValidationError,
    to_module,
)

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "docs" / "graph-format.md"
EXAMPLES = sorted((ROOT / "examples" / "graphs").glob("*.json"))


def small_doc() -> dict[str, Any]:
    """A conv net with a skip connection, every optional attribute left at its default."""
    return {
        "format": FORMAT,
        "name": "small",
        "nodes": [
            {"id": "x", "op": "input", "shape": [3, 8, 8]},
            {"id": "c1", "op": "conv2d", "inputs": ["x"], "out_channels": 4, "kernel_size": 3,
             "padding": 1},
            {"id": "bn", "op": "batch_norm", "inputs": ["c1"]},
            {"id": "r", "op": "relu", "inputs": ["bn"]},
            {"id": "skip", "op": "conv2d", "inputs": ["x"], "out_channels": 4, "kernel_size": 1},
            {"id": "sum", "op": "add", "inputs": ["r", "skip"]},
            {"id": "pool", "op": "max_pool", "inputs": ["sum"], "kernel_size": 2},
            {"id": "gap", "op": "global_avg_pool", "inputs": ["pool"]},
            {"id": "drop", "op": "dropout", "inputs": ["gap"], "p": 0.25},
            {"id": "fc", "op": "linear", "inputs": ["drop"], "out_features": 5},
            {"id": "out", "op": "output", "inputs": ["fc"], "num_classes": 5},
        ],
    }


def spec_hash(nodes: list[dict[str, Any]]) -> str:
    """The content hash exactly as docs/graph-format.md §8 defines it."""
    canonical = json.dumps(nodes, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# ---- round trip and canonical form ------------------------------------------------------------


def test_json_round_trip_is_equal_and_stable():
    g = ArchitectureGraph.from_dict(small_doc())
    text = g.to_json()
    again = ArchitectureGraph.from_json(text)
    assert again == g
    assert again.to_dict() == g.to_dict()
    assert again.to_json() == text
    assert again.name == "small"
    assert ArchitectureGraph.from_json(text.encode()) == g
    assert json.loads(g.to_json(indent=2)) == g.to_dict()


def test_to_dict_writes_every_default():
    g = ArchitectureGraph.from_dict(small_doc())
    nodes = {n["id"]: n for n in g.to_dict()["nodes"]}
    assert nodes["c1"] == {
        "id": "c1", "op": "conv2d", "inputs": ["x"], "out_channels": 4, "kernel_size": [3, 3],
        "stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1, "bias": True}
    assert nodes["bn"] == {"id": "bn", "op": "batch_norm", "inputs": ["c1"], "eps": 1e-5,
                           "momentum": 0.1, "affine": True}
    assert nodes["pool"] == {"id": "pool", "op": "max_pool", "inputs": ["sum"],
                             "kernel_size": [2, 2], "stride": None, "padding": [0, 0],
                             "ceil_mode": False}
    assert nodes["gap"]["keepdim"] is False
    assert nodes["x"] == {"id": "x", "op": "input", "shape": [3, 8, 8]}  # no empty "inputs"
    assert list(g.to_dict()) == ["format", "name", "nodes"]


def test_content_hash_follows_the_spec_definition():
    g = ArchitectureGraph.from_dict(small_doc())
    assert g.content_hash() == spec_hash(g.to_dict()["nodes"])
    assert re.fullmatch(r"[0-9a-f]{64}", g.content_hash())


def _shuffle_keys(obj: Any, rng: random.Random) -> Any:
    if isinstance(obj, dict):
        items = list(obj.items())
        rng.shuffle(items)
        return {k: _shuffle_keys(v, rng) for k, v in items}
    if isinstance(obj, list):
        return [_shuffle_keys(v, rng) for v in obj]
    return obj


def test_content_hash_ignores_key_order():
    reference = ArchitectureGraph.from_dict(small_doc()).content_hash()
    for seed in range(5):
        shuffled = _shuffle_keys(small_doc(), random.Random(seed))
        assert ArchitectureGraph.from_dict(shuffled).content_hash() == reference


def test_content_hash_ignores_omitted_defaults_and_pair_spelling():
    minimal = ArchitectureGraph.from_dict(small_doc())
    explicit = ArchitectureGraph.from_dict(minimal.to_dict())
    assert explicit.content_hash() == minimal.content_hash()
    doc = small_doc()
    doc["nodes"][1]["kernel_size"] = [3]
    doc["nodes"][1]["padding"] = [1, 1]
    doc["nodes"][8]["p"] = 0.250  # same float
    assert ArchitectureGraph.from_dict(doc).content_hash() == minimal.content_hash()


def test_content_hash_ignores_name_and_parameter_sources():
    doc = small_doc()
    base = ArchitectureGraph.from_dict(doc)
    doc["name"] = "renamed"
    doc["parameter_sources"] = {"c1.weight": "features.0.weight"}
    other = ArchitectureGraph.from_dict(doc)
    assert other.content_hash() == base.content_hash() and other == base
    assert other.parameter_sources == {"c1.weight": "features.0.weight"}
    assert other.to_dict()["parameter_sources"] == {"c1.weight": "features.0.weight"}
    assert ArchitectureGraph.from_json(other.to_json()).parameter_sources == other.parameter_sources


@pytest.mark.parametrize("change", [
    ("c1", "bias", False), ("c1", "kernel_size", [3, 1]), ("bn", "eps", 1e-3),
    ("bn", "momentum", 0.2), ("bn", "affine", False), ("drop", "p", 0.5),
    ("pool", "ceil_mode", True), ("fc", "bias", False),
    # Semantically the default (stride = kernel_size), but written differently: the hash is of
    # the canonical document, not of the computation.
    ("pool", "stride", 2),
], ids=lambda c: f"{c[0]}.{c[1]}")
def test_content_hash_changes_when_an_attribute_changes(change: tuple[str, str, Any]):
    node_id, key, value = change
    base = ArchitectureGraph.from_dict(small_doc())
    doc = small_doc()
    node = next(n for n in doc["nodes"] if n["id"] == node_id)
    node[key] = value
    if key == "kernel_size":
        node["padding"] = [1, 0]
    changed = ArchitectureGraph.from_dict(doc)
    assert changed.content_hash() != base.content_hash()
    assert changed != base


def test_content_hash_is_unchanged_by_writing_a_default_value():
    base = ArchitectureGraph.from_dict(small_doc())
    doc = small_doc()
    doc["nodes"][7]["keepdim"] = False
    doc["nodes"][1].update(stride=1, dilation=[1, 1], groups=1, bias=True)
    doc["nodes"][6]["stride"] = None
    assert ArchitectureGraph.from_dict(doc).content_hash() == base.content_hash()


def test_content_hash_changes_with_ids_and_edges():
    base = ArchitectureGraph.from_dict(small_doc())
    renamed = small_doc()
    renamed["nodes"][3]["id"] = "act"
    renamed["nodes"][5]["inputs"] = ["act", "skip"]
    assert ArchitectureGraph.from_dict(renamed).content_hash() != base.content_hash()
    swapped = small_doc()
    swapped["nodes"][5]["inputs"] = ["skip", "r"]
    assert ArchitectureGraph.from_dict(swapped).content_hash() != base.content_hash()


def test_equal_graphs_hash_equal_in_sets():
    a = ArchitectureGraph.from_dict(small_doc())
    b = ArchitectureGraph.from_dict(_shuffle_keys(small_doc(), random.Random(1)))
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != "not a graph"


# ---- topological order ------------------------------------------------------------------------


def test_unsorted_acyclic_document_is_reordered_topologically():
    sorted_doc = small_doc()
    reversed_doc = copy.deepcopy(sorted_doc)
    reversed_doc["nodes"].reverse()
    g = ArchitectureGraph.from_dict(reversed_doc)
    position = {n.id: i for i, n in enumerate(g.nodes)}
    for n in g.nodes:
        assert all(position[i] < position[n.id] for i in n.inputs)
    assert g.nodes[0].op == "input" and g.nodes[-1].op == "output"
    assert g.input_node.id == "x" and g.output_node.id == "out"
    # The topological order is unique up to the two branches; ties go by document position,
    # so the reversed document lists "skip" (later in the original) before the "c1" branch.
    ids = [n.id for n in g.nodes]
    assert ids.index("skip") < ids.index("c1")
    assert to_module(g)(torch.randn(2, 3, 8, 8)).shape == (2, 5)


def test_a_sorted_document_keeps_its_order():
    g = ArchitectureGraph.from_dict(small_doc())
    assert [n.id for n in g.nodes] == [n["id"] for n in small_doc()["nodes"]]


def test_parameter_order_follows_the_validated_node_order():
    doc = small_doc()
    doc["nodes"].reverse()
    g = ArchitectureGraph.from_dict(doc)
    assert list(g.parameter_shapes()) == [k for k, _ in to_module(g).named_parameters()]


# ---- builder ----------------------------------------------------------------------------------


def test_builder_assigns_per_op_counters_and_skips_taken_ids():
    b = GraphBuilder((1, 8, 8), name="built")
    assert b.input == "input"
    c0 = b.add("conv2d", b.input, out_channels=2, kernel_size=3)
    r0 = b.add("relu", c0, id="relu_0")
    c1 = b.add("conv2d", r0, out_channels=2, kernel_size=1)
    r1 = b.add("relu", c1)  # relu_0 is taken explicitly above
    named = b.add("global_avg_pool", r1, id="gap")
    assert (c0, r0, c1, r1, named) == ("conv2d_0", "relu_0", "conv2d_1", "relu_1", "gap")
    with pytest.raises(ValueError, match="duplicate node id 'gap'"):
        b.add("identity", named, id="gap")
    g = b.build(b.add("linear", named, out_features=4), num_classes=4)
    assert g.name == "built" and g.output_node.id == "output" and g.num_classes == 4
    assert [n.id for n in g.nodes] == ["input", "conv2d_0", "relu_0", "conv2d_1", "relu_1",
                                       "gap", "linear_0", "output"]


def test_builder_to_dict_is_a_plain_document():
    b = GraphBuilder((4,), input_id="features")
    doc = b.to_dict(b.add("linear", b.input, out_features=2), 2, output_id="logits")
    assert doc == {"format": FORMAT, "nodes": [
        {"id": "features", "op": "input", "shape": [4]},
        {"id": "linear_0", "op": "linear", "inputs": ["features"], "out_features": 2},
        {"id": "logits", "op": "output", "inputs": ["linear_0"], "num_classes": 2}]}
    assert ArchitectureGraph.from_dict(doc).input_shape == (4,)


def test_builder_build_applies_the_given_limits():
    b = GraphBuilder((4,))
    x = b.add("linear", b.input, out_features=64)
    with pytest.raises(GraphValidationError, match="64 channels/features exceed the limit of 32"):
        b.build(b.add("linear", x, out_features=2), 2, limits=GraphLimits(max_channels=32))


# ---- queries and summary ----------------------------------------------------------------------


def test_graph_queries():
    g = ArchitectureGraph.from_dict(small_doc())
    assert len(g) == 11 and "c1" in g and "nope" not in g
    assert [n.id for n in g] == [n.id for n in g.nodes]
    assert g["sum"].input_shapes == ((4, 8, 8), (4, 8, 8))
    assert g.consumers()["x"] == ["c1", "skip"] and g.consumers()["out"] == []
    assert g.input_shape == (3, 8, 8) and g.num_classes == 5
    assert g.num_parameters == (4 * 3 * 9 + 4) + 8 + (4 * 3 + 4) + (5 * 4 + 5)
    assert g.flops == 4 * 64 * 27 + 4 * 64 * 3 + 5 * 4
    assert repr(g) == (f"<ArchitectureGraph 'small': 11 nodes, {g.num_parameters:,} parameters, "
                       "input [3, 8, 8], 5 classes>")


def test_summary_lists_every_node_with_shapes_and_counts():
    g = ArchitectureGraph.from_dict(small_doc())
    lines = g.summary().splitlines()
    assert lines[0].split() == ["node", "op", "inputs", "output", "shape", "params", "MACs"]
    assert set(lines[1]) == {"-"}
    rows = lines[2:-1]
    assert len(rows) == len(g)
    for row, node in zip(rows, g.nodes, strict=True):
        cells = row.split()
        assert cells[0] == node.id and cells[1] == node.op
        assert str(list(node.shape)) in row
        assert cells[-2:] == [f"{node.num_parameters:,}", f"{node.flops:,}"]
    assert "r,skip" in rows[5]
    assert lines[-1] == (f"total: 11 nodes, {g.num_parameters:,} parameters, "
                         f"{g.flops:,} MACs")


# ---- the runnable module ----------------------------------------------------------------------


def test_module_rejects_a_wrong_input_shape_clearly():
    net = to_module(ArchitectureGraph.from_dict(small_doc()))
    with pytest.raises(ValueError, match=re.escape("expected input of shape (batch, 3, 8, 8), "
                                                   "got (2, 3, 9, 8)")):
        net(torch.randn(2, 3, 9, 8))
    with pytest.raises(ValueError, match="expected input of shape"):
        net(torch.randn(3, 8, 8))  # batch dimension missing
    assert net(torch.randn(1, 3, 8, 8)).shape == (1, 5)


def test_state_dict_keys_are_node_ids_and_round_trip():
    g = ArchitectureGraph.from_dict(small_doc())
    net = to_module(g)
    keys = list(net.state_dict())
    assert keys == ["c1.weight", "c1.bias", "bn.weight", "bn.bias", "bn.running_mean",
                    "bn.running_var", "bn.num_batches_tracked", "skip.weight", "skip.bias",
                    "fc.weight", "fc.bias"]
    other = to_module(g)
    other.load_state_dict(net.state_dict())
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(net.eval()(x), other.eval()(x))


def _one_linear(node_id: str) -> ArchitectureGraph:
    b = GraphBuilder((4,))
    return b.build(b.add("linear", b.input, id=node_id, out_features=3), 3)


def _exercise(net: torch.nn.Module, node_id: str) -> None:
    net.train()
    net.eval()
    assert net.training is False
    assert net(torch.randn(2, 4)).shape == (2, 3)
    state = net.state_dict()
    assert list(state) == [f"{node_id}.weight", f"{node_id}.bias"]
    net.load_state_dict(state)


@pytest.mark.parametrize("node_id", ["eval", "forward", "to", "graph", "state_dict", "_modules",
                                     "_parameters", "children", "__init__", "float"])
def test_node_ids_that_are_module_attribute_names_still_work(node_id: str):
    _exercise(to_module(_one_linear(node_id)), node_id)


@pytest.mark.parametrize("node_id", ["training", "_plan", "_num_values"])
def test_node_ids_that_collide_with_assigned_attributes_still_work(node_id: str):
    _exercise(to_module(_one_linear(node_id)), node_id)


def test_dropout_nodes_follow_train_and_eval():
    b = GraphBuilder((64,))
    d = b.add("dropout", b.input, p=0.5)
    g = b.build(d, 64)
    net = to_module(g)
    x = torch.ones(4, 64)
    net.train()
    assert net._modules[d].training
    torch.manual_seed(0)
    y = net(x)
    assert (y == 0).any() and set(y.unique().tolist()) <= {0.0, 2.0}
    net.eval()
    assert not net._modules[d].training
    assert torch.equal(net(x), x)


def test_attention_dropout_follows_train_and_eval():
    b = GraphBuilder((6, 8))
    a = b.add("self_attention", b.input, num_heads=2, dropout=0.5)
    g = b.build(b.add("linear", b.add("flatten", a), out_features=2), 2)
    net = to_module(g)
    x = torch.randn(2, 6, 8)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    torch.manual_seed(0)
    first = net(x)
    assert not torch.equal(first, net(x))


# ---- the specification document ---------------------------------------------------------------


def _json_blocks(markdown: str) -> list[str]:
    return re.findall(r"```json\n(.*?)```", markdown, flags=re.DOTALL)


def test_the_full_example_in_the_spec_validates_and_is_shipped():
    blocks = _json_blocks(SPEC.read_text())
    assert len(blocks) == 1, "the spec has exactly one ```json block: the full example"
    doc = json.loads(blocks[0])
    g = ArchitectureGraph.from_dict(doc)
    assert doc == json.loads((ROOT / "examples" / "graphs" / "small_cnn.json").read_text())
    assert g.input_shape == (1, 28, 28) and g.num_classes == 10
    ops = {n.op for n in g.nodes}
    assert {"add", "mul", "sigmoid", "conv2d", "linear"} <= ops
    assert any(n.op == "global_avg_pool" and n.attrs.keepdim for n in g.nodes)
    # The numbers the spec quotes for it.
    text = SPEC.read_text()
    assert f"{len(g)} nodes, {g.num_parameters:,} parameters and {g.flops:,} MACs" in text


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_graphs_validate_and_run(path: Path):
    g = ArchitectureGraph.from_json(path.read_text())
    net = to_module(g).eval()
    with torch.no_grad():
        assert net(torch.randn(2, *g.input_shape)).shape == (2, g.num_classes)
    assert ArchitectureGraph.from_json(g.to_json()) == g


def test_examples_include_the_documented_ones():
    assert {p.name for p in EXAMPLES} >= {"small_cnn.json", "tiny_vit.json",
                                          "se_resnet_block.json"}


def test_the_spec_op_table_lists_every_op_in_vocabulary_order():
    rows = re.findall(r"^\| (\d+) \| `([a-z0-9_]+)` \|", SPEC.read_text(), flags=re.MULTILINE)
    assert [(int(i), op) for i, op in rows] == list(enumerate(OP_NAMES))


def test_the_spec_limits_table_lists_every_limit_with_its_default():
    text = SPEC.read_text()
    for f in dataclasses.fields(GraphLimits):
        default = getattr(DEFAULT_LIMITS, f.name)
        assert re.search(rf"^\| `{f.name}` \| {default}\b", text, flags=re.MULTILINE), f.name
