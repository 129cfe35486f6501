"""Hostile and malformed ``nas-graph/1`` documents.

Whatever a client sends, validation ends in exactly one of two ways: a valid graph, or a
:class:`GraphValidationError` whose problems name the node (and field) at fault. Never another
exception type, never a hang on a huge document. Each case below says which problem it expects;
the property tests at the end feed random JSON and mutated valid documents.
"""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nas_service.graph import (
    FORMAT,
    OP_NAMES,
    OPS,
    ArchitectureGraph,
    GraphLimits,
    GraphProblem,
    GraphValidationError,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "graphs"
ANY = object()
"""Expected ``field`` when the case does not pin it."""


def conv(id: str = "c", inputs: list[str] | None = None, **attrs: Any) -> dict[str, Any]:
    attrs = {"out_channels": 4, "kernel_size": 3, "padding": 1, **attrs}
    return {"id": id, "op": "conv2d", "inputs": ["x"] if inputs is None else inputs, **attrs}


def net(*middle: dict[str, Any], last: str = "c", shape: tuple[int, ...] = (3, 8, 8),
        classes: int = 4, head: bool = True) -> dict[str, Any]:
    """``x -> middle... -> [global_avg_pool -> linear] -> output``; ``last`` feeds the head."""
    nodes: list[dict[str, Any]] = [{"id": "x", "op": "input", "shape": list(shape)}, *middle]
    if head:
        nodes += [{"id": "gap", "op": "global_avg_pool", "inputs": [last]},
                  {"id": "fc", "op": "linear", "inputs": ["gap"], "out_features": classes}]
        last = "fc"
    nodes.append({"id": "out", "op": "output", "inputs": [last], "num_classes": classes})
    return {"format": FORMAT, "nodes": nodes}


def with_doc(**changes: Any) -> dict[str, Any]:
    doc = net(conv())
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not DELETE}


def edited(doc: dict[str, Any], index: int, **changes: Any) -> dict[str, Any]:
    doc["nodes"][index].update(changes)
    return doc


DELETE = object()
VALID = net(conv())
VALID_TEXT = json.dumps(VALID)


def problems_of(doc: Any, limits: GraphLimits | None = None) -> list[GraphProblem]:
    """The problems of an invalid document; fails on success and on any other exception."""
    parse = ArchitectureGraph.from_json if isinstance(doc, str | bytes) else ArchitectureGraph.from_dict
    with pytest.raises(GraphValidationError) as info:
        parse(doc) if limits is None else parse(doc, limits)
    problems = info.value.problems
    assert problems
    for p in problems:  # every problem is well-formed and printable
        assert isinstance(p.message, str) and p.message
        assert p.location().startswith("/")
        assert set(p.to_dict()) == {"node", "field", "index", "location", "message"}
        str(p)
    str(info.value)
    return problems


def assert_reported(problems: list[GraphProblem], node: str | None,
                    fragment: str | tuple[str, ...], field: Any = ANY) -> GraphProblem:
    """The problem at ``node``/``field`` whose message contains ``fragment`` (or one of them)."""
    fragments = (fragment,) if isinstance(fragment, str) else fragment
    for p in problems:
        if (p.node == node and any(f in p.message for f in fragments)
                and (field is ANY or p.field == field)):
            return p
    raise AssertionError(f"no problem at node={node!r}, field={field!r} containing "
                         f"{fragment!r}; got:\n" + "\n".join(map(repr, problems)))



N = 10  # stands for "a number" in the ids below

HOSTILE = [
    # ---- not a document ---------------------------------------------------------------------
    pytest.param(VALID_TEXT[:-17], None, "not valid JSON", None, id="truncated-json"),
    pytest.param("", None, "not valid JSON", None, id="empty-text"),
    pytest.param(b"\xff\xfe\x00garbage", None, "not valid JSON", None, id="not-utf8"),
    pytest.param("[1, 2]", None, "must be a JSON object, got list", None, id="array-document"),
    pytest.param('"nas-graph/1"', None, "must be a JSON object, got str", None, id="string-doc"),
    pytest.param(None, None, "must be a JSON object, got NoneType", None, id="none-document"),
    pytest.param("[" * 100_000 + "]" * 100_000, None, "not valid JSON", None,
                 id="deeply-nested-lists"),
    pytest.param('{"format": "nas-graph/1", "nodes": ' + '{"a": ' * 100_000 + "1" + "}" * 100_000
                 + "}", None, "not valid JSON", None, id="deeply-nested-objects"),
    pytest.param('{"format": "nas-graph/1", "nodes": [' + '1' * 5000 + "]}", None,
                 "not valid JSON", None, id="5000-digit-integer"),
    # ---- document level ---------------------------------------------------------------------
    pytest.param(with_doc(format="nas-graph/2"), None, "'format' must be 'nas-graph/1'", "format",
                 id="wrong-format"),
    pytest.param(with_doc(format=DELETE), None, "got None", "format", id="missing-format"),
    pytest.param(with_doc(nodes=DELETE), None, "'nodes' must be a non-empty list", "nodes",
                 id="missing-nodes"),
    pytest.param(with_doc(nodes=[]), None, "'nodes' must be a non-empty list", "nodes",
                 id="empty-nodes"),
    pytest.param(with_doc(nodes={"x": {"op": "input"}}), None, "'nodes' must be a non-empty list",
                 "nodes", id="nodes-not-a-list"),
    pytest.param(with_doc(extra=1), None, "unknown top-level key 'extra'", "extra",
                 id="unknown-top-level-key"),
    pytest.param(with_doc(name="n" * 257), None, "'name' must be a string", "name",
                 id="name-too-long"),
    pytest.param(with_doc(name=["n"]), None, "'name' must be a string", "name",
                 id="name-not-a-string"),
    pytest.param(with_doc(parameter_sources={"c.weight": 1}), None,
                 "'parameter_sources' must map strings to strings", "parameter_sources",
                 id="parameter-sources-values"),
    pytest.param(with_doc(parameter_sources=["c.weight"]), None,
                 "'parameter_sources' must map strings to strings", "parameter_sources",
                 id="parameter-sources-not-an-object"),
    # ---- node structure and ids -------------------------------------------------------------
    pytest.param(net(conv(), 5), None, "a node must be an object, got int", None,
                 id="node-not-an-object"),
    pytest.param(net({"op": "relu", "inputs": ["x"]}, conv()), None, "missing or non-string 'id'",
                 "id", id="missing-id"),
    pytest.param(net(conv(id=7)), None, "missing or non-string 'id'", "id", id="non-string-id"),
    pytest.param(net(conv(id="conv.1"), last="conv.1"), "conv.1", "id must be 1-128 characters",
                 "id", id="dot-in-id"),
    pytest.param(net(conv(id="-c"), last="-c"), "-c", "not starting with '-'", "id",
                 id="id-starting-with-dash"),
    pytest.param(net(conv(id="")), "", "id must be 1-128 characters", "id", id="empty-id"),
    pytest.param(net(conv(id="a b"), last="a b"), "a b", "id must be", "id", id="space-in-id"),
    pytest.param(net(conv(id="c" * 129), last="c" * 129), "c" * 64, "id must be 1-128", "id",
                 id="overlong-id-reported-truncated"),
    pytest.param(net(conv(id="cönv"), last="cönv"), "cönv", "id must be", "id",
                 id="unicode-id-latin"),
    pytest.param(net(conv(id="конв"), last="конв"), "конв", "id must be", "id",
                 id="unicode-id-cyrillic"),
    pytest.param(net(conv(id="ｃ"), last="ｃ"), "ｃ", "id must be", "id", id="unicode-fullwidth"),
    pytest.param(net(conv(id="c\u200b"), last="c\u200b"), "c\u200b", "id must be", "id",
                 id="unicode-zero-width-space"),
    pytest.param(net(conv(id="\u212a"), last="\u212a"), "\u212a", "id must be", "id",
                 id="unicode-kelvin-sign"),
    pytest.param(net(conv(id="c\n"), last="c\n"), "c\n", "id must be", "id",
                 id="id-with-trailing-newline"),
    pytest.param(net(conv(), conv(inputs=["c"])), "c", "duplicate node id", "id",
                 id="duplicate-id"),
    pytest.param(net(conv(), {"id": "r", "op": "relu", "inputs": ["bad id"]}, last="r"), "r",
                 "input 'bad id' does not name a node", "inputs", id="reference-to-invalid-id"),
    # ---- ops and attributes -----------------------------------------------------------------
    pytest.param(net({**conv(), "op": "conv"}), "c", "unknown op 'conv'; did you mean 'conv2d'?",
                 "op", id="unknown-op-did-you-mean"),
    pytest.param(net({**conv(), "op": "transmogrify"}), "c", "unknown op 'transmogrify' (see",
                 "op", id="unknown-op-no-suggestion"),
    pytest.param(net({**conv(), "op": 5}), "c", "unknown op 5", "op", id="non-string-op"),
    pytest.param(net({k: v for k, v in conv().items() if k != "op"}), "c", "unknown op None", "op",
                 id="missing-op"),
    pytest.param(net(conv(kernal_size=3)), "c", "unknown attribute for this op", "kernal_size",
                 id="unknown-attribute"),
    pytest.param(net(conv(inputs=["x", 1])), "c", "'inputs' must be a list of node ids", "inputs",
                 id="non-string-input-id"),
    pytest.param(net(conv(out_channels="8")), "c", "valid integer", "out_channels",
                 id="string-for-int"),
    pytest.param(net(conv(out_channels=True)), "c", "valid integer", "out_channels",
                 id="bool-for-int"),
    pytest.param(net(conv(out_channels=8.0)), "c", "valid integer", "out_channels",
                 id="float-for-int"),
    pytest.param(net(conv(out_channels=8.5)), "c", "valid integer", "out_channels",
                 id="fraction-for-int"),
    pytest.param(net(conv(out_channels=None)), "c", "valid integer", "out_channels",
                 id="null-for-int"),
    pytest.param(net(conv(out_channels=-1)), "c", "greater than or equal to 1", "out_channels",
                 id="negative-size"),
    pytest.param(net(conv(out_channels=0)), "c", "greater than or equal to 1", "out_channels",
                 id="zero-size"),
    pytest.param(net(conv(kernel_size=0)), "c", "(at kernel_size.0)", "kernel_size",
                 id="zero-kernel"),
    pytest.param(net(conv(kernel_size=[3, 3, 3])), "c", "at most 2 items", "kernel_size",
                 id="kernel-with-three-axes"),
    pytest.param(net(conv(kernel_size=[3, "3"])), "c", "(at kernel_size.1)", "kernel_size",
                 id="string-in-pair"),
    pytest.param(net(conv(padding=-1)), "c", "greater than or equal to 0", "padding",
                 id="negative-padding"),
    pytest.param(net({k: v for k, v in conv().items() if k != "out_channels"}), "c",
                 "Field required", "out_channels", id="missing-required-attribute"),
    pytest.param(net({"id": "x2", "op": "input"}, conv(), head=True), "x2", "Field required",
                 "shape", id="input-without-shape"),
    pytest.param(net({"id": "d", "op": "dropout", "inputs": ["x"], "p": 1.0}, last="d"), "d",
                 "less than 1", "p", id="dropout-p-one"),
    pytest.param(net({"id": "g", "op": "gelu", "inputs": ["x"], "approximate": "fast"}, last="g"),
                 "g", "'none' or 'tanh'", "approximate", id="literal-attribute"),
    pytest.param(net({"id": "bn", "op": "batch_norm", "inputs": ["x"], "eps": float("nan")},
                     last="bn"), "bn", "Input should be", "eps", id="nan-float"),
    pytest.param(net({"id": "bn", "op": "batch_norm", "inputs": ["x"], "momentum": float("inf")},
                     last="bn"), "bn", "less than or equal to 1", "momentum",
                 id="infinite-float"),
    pytest.param(VALID_TEXT.replace('"padding": 1', '"padding": 1, "groups": NaN'), "c",
                 "valid integer", "groups", id="nan-literal-for-int"),
    pytest.param(VALID_TEXT.replace('"op": "global_avg_pool"',
                                    '"op": "leaky_relu", "negative_slope": -Infinity'), "gap",
                 "greater than or equal to 0", "negative_slope", id="infinity-literal"),
    # Huge integers: a limit problem, or an upper bound in the attribute schema, both at the node.
    pytest.param(net(conv(out_channels=10**100)), "c",
                 ("channels/features exceed the limit", "less than or equal to"), ANY,
                 id="huge-int-channels"),
    pytest.param(net(conv(kernel_size=10**100)), "c",
                 ("spatial size collapses", "less than or equal to"), "kernel_size",
                 id="huge-int-kernel"),
    pytest.param(net({"id": "s", "op": "select_token", "inputs": ["x"], "index": -10**100},
                     shape=(4, 4), head=False, classes=4, last="s"), "s",
                 ("out of range", "greater than or equal to"), "index",
                 id="huge-negative-index"),
    pytest.param(net({"id": "a", "op": "adaptive_avg_pool", "inputs": ["x"],
                      "output_size": [10**4000, 10**4000]}, last="a"), "a",
                 ("elements per sample exceeds the limit", "less than or equal to"), ANY,
                 id="huge-int-product",),
    pytest.param(net(conv(bias="no")), "c", "valid boolean", "bias", id="string-for-bool",),
    pytest.param(net(conv(bias=0)), "c", "valid boolean", "bias", id="int-for-bool",),
    pytest.param(net({"id": "d", "op": "dropout", "inputs": ["x"], "p": "0.5"}, last="d"), "d",
                 "valid number", "p", id="string-for-float"),
    pytest.param(net({"id": "d", "op": "dropout", "inputs": ["x"], "p": False}, last="d"), "d",
                 "valid number", "p", id="bool-for-float"),
    # ---- graph structure --------------------------------------------------------------------
    pytest.param(net(conv(inputs=["nope"])), "c", "input 'nope' does not name a node", "inputs",
                 id="unknown-input"),
    pytest.param(net(conv(id="a", inputs=["b"]), conv(id="b", inputs=["a"]), last="b"), "a",
                 "the graph has a cycle: a -> b -> a", "inputs", id="two-node-cycle"),
    pytest.param(net({"id": "r", "op": "relu", "inputs": ["r"]}, conv(inputs=["r"])), "r",
                 "the graph has a cycle: r -> r", "inputs", id="self-loop"),
    pytest.param({"format": FORMAT, "nodes": net(conv())["nodes"][1:]}, None,
                 "exactly one 'input' node, found 0", "nodes", id="no-input-node"),
    pytest.param(net({"id": "y", "op": "input", "shape": [3, 8, 8]},
                     {"id": "s", "op": "add", "inputs": ["x", "y"]}, conv(inputs=["s"])), None,
                 "exactly one 'input' node, found 2: x, y", "nodes", id="two-input-nodes"),
    pytest.param(net(conv(), {"id": "out2", "op": "output", "inputs": ["fc"], "num_classes": 4}),
                 None, "exactly one 'output' node, found 2", "nodes", id="two-outputs"),
    pytest.param({"format": FORMAT, "nodes": net(conv())["nodes"][:-1]}, None,
                 "exactly one 'output' node, found 0", "nodes", id="no-output"),
    pytest.param(net(conv(), conv(id="unused")), "unused",
                 "this node does not contribute to the output", None, id="dead-node"),
    pytest.param(net(conv(), {"id": "after", "op": "relu", "inputs": ["out"]}), "after",
                 "does not contribute", None, id="node-after-the-output"),
    pytest.param(net(conv(), {"id": "s", "op": "add", "inputs": ["c"]}, last="s"), "s",
                 "op 'add' takes 2 to 64 input(s), got 1", "inputs", id="add-with-one-input"),
    pytest.param(net(conv(inputs=["x", "x"])), "c", "op 'conv2d' takes exactly 1 input(s), got 2",
                 "inputs", id="conv-with-two-inputs"),
    pytest.param(net(conv(inputs=[])), "c", "takes exactly 1 input(s), got 0", "inputs",
                 id="conv-without-inputs"),
    pytest.param(net(conv(inputs="x")), "c", "'inputs' must be a list of node ids", "inputs",
                 id="inputs-not-a-list"),
    pytest.param(net(conv(), {"id": "s", "op": "concat", "inputs": ["c"] * 65}, last="s"), "s",
                 "takes 1 to 64 input(s), got 65", "inputs", id="too-many-inputs"),
    pytest.param(net({"id": "x2", "op": "input", "inputs": ["x"], "shape": [3, 8, 8]}, conv()),
                 "x2", "op 'input' takes exactly 0 input(s), got 1", "inputs",
                 id="input-with-an-input"),
    # ---- shapes -----------------------------------------------------------------------------
    pytest.param(net(conv(), conv(id="c2", stride=2), {"id": "s", "op": "add",
                                                       "inputs": ["c", "c2"]}, last="s"), "s",
                 "do not match (nor broadcast): [4, 8, 8], [4, 4, 4]", None,
                 id="add-shape-mismatch"),
    pytest.param(net(conv(), {"id": "g", "op": "global_avg_pool", "inputs": ["c"]},
                     {"id": "s", "op": "mul", "inputs": ["c", "g"]}, last="s"), "s",
                 "inputs must have the same rank", None, id="mul-rank-mismatch"),
    pytest.param(net(conv(), conv(id="c2", stride=2),
                     {"id": "s", "op": "concat", "inputs": ["c", "c2"]}, last="s"), "s",
                 "inputs must match on every axis but 0", None, id="concat-mismatch"),
    pytest.param(net(conv(), {"id": "s", "op": "concat", "inputs": ["c"], "axis": -3},
                     {"id": "f", "op": "flatten", "inputs": ["s"]},
                     {"id": "s2", "op": "concat", "inputs": ["f"], "axis": 1}, head=False,
                     last="s2"), "s2", "axis 1 is out of range for rank-1 inputs", "axis",
                 id="concat-axis-out-of-range"),
    pytest.param(net(conv(groups=2)), "c", "input channels 3 are not divisible by groups=2",
                 "groups", id="channels-not-divisible-by-groups"),
    pytest.param(net(conv(out_channels=5, groups=3)), "c",
                 "out_channels 5 is not divisible by groups=3", "groups",
                 id="out-channels-not-divisible-by-groups"),
    pytest.param(net(conv(kernel_size=9, padding=0)), "c", "spatial size collapses to 0x0",
                 "kernel_size", id="spatial-collapse"),
    pytest.param(net(conv(kernel_size=3, padding=0, dilation=4)), "c", "dilation [4, 4]",
                 "kernel_size", id="dilated-collapse"),
    pytest.param(net(conv(), {"id": "p", "op": "max_pool", "inputs": ["c"], "kernel_size": 2,
                              "padding": 2}, last="p"), "p", "at most half of kernel_size",
                 "padding", id="pool-padding-over-half"),
    pytest.param(net(conv(), {"id": "gn", "op": "group_norm", "inputs": ["c"], "num_groups": 3},
                     last="gn"), "gn", "channels 4 are not divisible by num_groups=3",
                 "num_groups", id="group-norm-groups"),
    pytest.param(net(conv(), head=False), "out",
                 "must be a vector of num_classes=4 logits, got shape [4, 8, 8]", "num_classes",
                 id="output-given-a-map"),
    pytest.param(edited(net(conv()), -1, num_classes=10), "out",
                 "num_classes=10 logits, got shape [4]", "num_classes", id="num-classes-mismatch"),
    pytest.param(net({"id": "a", "op": "self_attention", "inputs": ["x"], "num_heads": 4},
                     shape=(6, 10), last="a"), "a", "width 10 is not divisible by num_heads=4",
                 "num_heads", id="attention-heads-not-dividing-width"),
    pytest.param(net({"id": "a", "op": "self_attention", "inputs": ["x"], "num_heads": 2},
                     last="a"), "a", "width 3 is not divisible by num_heads=2", "num_heads",
                 id="attention-over-map-heads"),
    pytest.param(net({"id": "p", "op": "patch_embed", "inputs": ["x"], "embed_dim": 8,
                      "patch_size": 16}, last="p"), "p", "patch_size [16, 16] is larger",
                 "patch_size", id="patch-larger-than-input"),
    pytest.param(net({"id": "g", "op": "global_avg_pool", "inputs": ["x"], "keepdim": True},
                     shape=(5, 8), last="g"), "g", "keepdim applies to (C, H, W)", "keepdim",
                 id="keepdim-on-tokens"),
    pytest.param(net({"id": "s", "op": "select_token", "inputs": ["x"], "index": 5},
                     shape=(5, 4), head=False, last="s"), "s", "index 5 is out of range for 5",
                 "index", id="select-token-out-of-range"),
    pytest.param(net(conv(), shape=(8,)), "c",
                 "input must be a (C, H, W) feature map, got shape [8]", None,
                 id="conv-on-a-vector"),
    pytest.param(net({"id": "l", "op": "linear", "inputs": ["x"], "out_features": 2}, last="l"),
                 "l", "input must be a (F,) vector or (T, D) token sequence", None,
                 id="linear-on-a-map"),
    pytest.param(net(conv(), shape=(3, 8, 8, 8)), "x", "at most 3 items", "shape",
                 id="four-dimensional-input"),
    pytest.param(net(conv(), shape=()), "x", "at least 1 item", "shape", id="empty-input-shape"),
    # ---- limits -----------------------------------------------------------------------------
    pytest.param(net(conv(out_channels=20000)), "c",
                 "20000 channels/features exceed the limit of 16384", None,
                 id="too-many-channels"),
    pytest.param(net(conv(), shape=(3, 2048, 8)), "x", "input size [3, 2048, 8] exceeds the limit",
                 "shape", id="input-too-large"),
    pytest.param(net(conv(), shape=(65, 8, 8)), "x", "input channels 65 exceed the limit of 64",
                 "shape", id="input-too-many-channels"),
    pytest.param(net(conv(kernel_size=65, padding=32)), "c", "kernel_size [65, 65] exceeds",
                 None, id="kernel-over-limit"),
    pytest.param(net(conv(out_channels=16), {"id": "a", "op": "adaptive_avg_pool",
                                             "inputs": ["c"], "output_size": 4096}, last="a"),
                 "a", "elements per sample exceeds the limit of 67,108,864", None,
                 id="activation-too-large"),
    pytest.param(net({"id": "l1", "op": "linear", "inputs": ["x"], "out_features": 16384},
                     {"id": "l2", "op": "linear", "inputs": ["l1"], "out_features": 16384},
                     shape=(16,), head=False, last="l2", classes=16384), "l2",
                 "parameters in one node exceed the limit of 100,000,000", None,
                 id="too-many-parameters-in-a-node"),
]


@pytest.mark.parametrize("doc,node,fragment,field", HOSTILE)
def test_hostile_document_is_reported_at_the_right_place(doc: Any, node: str | None,
                                                         fragment: str | tuple[str, ...],
                                                         field: Any):
    assert_reported(problems_of(doc), node, fragment, field)


def test_there_are_at_least_thirty_hostile_cases():
    assert len(HOSTILE) >= 30


def test_a_million_nodes_fail_on_the_node_limit_before_any_node_is_read():
    text = '{"format": "nas-graph/1", "nodes": [' + "{}," * (10**6 - 1) + "{}]}"
    problems = problems_of(text)
    assert problems == [GraphProblem("the graph has 1000000 nodes; the limit is 4096",
                                     field="nodes")]


def test_the_node_limit_is_configurable():
    doc = net(*[{"id": f"r{i}", "op": "relu", "inputs": [f"r{i - 1}" if i else "x"]}
                for i in range(10)], conv(inputs=["r9"]))
    ArchitectureGraph.from_dict(doc)
    problems = problems_of(doc, GraphLimits(max_nodes=10))
    assert_reported(problems, None, f"the graph has {len(doc['nodes'])} nodes; the limit is 10",
                    "nodes")


def test_too_many_parameters_in_the_whole_graph():
    # 16.8M + 3 * 67.1M parameters: every layer under the per-node limit, together over 200M.
    layers = [{"id": "l0", "op": "linear", "inputs": ["x"], "out_features": 16384},
              {"id": "l1", "op": "linear", "inputs": ["l0"], "out_features": 4096},
              {"id": "l2", "op": "linear", "inputs": ["l1"], "out_features": 16384},
              {"id": "l3", "op": "linear", "inputs": ["l2"], "out_features": 4096}]
    doc = net(*layers, shape=(1024,), head=False, last="l3", classes=4096)
    problems = problems_of(doc)
    assert [p.node for p in problems] == [None]
    assert_reported(problems, None, "parameters; the limit is 200,000,000", "nodes")


@pytest.mark.parametrize("shape", [(3, 1025, 8), (3, 8, 1025), (1025, 8)],
                         ids=["height", "width", "tokens"])
def test_max_input_size_bounds_height_width_and_tokens(shape: tuple[int, ...]):
    head = len(shape) == 3
    doc = net(conv(), shape=shape) if head else net(
        {"id": "l", "op": "linear", "inputs": ["x"], "out_features": 4},
        {"id": "g", "op": "global_avg_pool", "inputs": ["l"]}, shape=shape, head=False, last="g")
    assert_reported(problems_of(doc), "x", "exceeds the limit of 1024 per axis", "shape")


@pytest.mark.parametrize("shape", [(3072,), (16, 2048)], ids=["flat-cifar", "wide-tokens"])
def test_max_input_size_does_not_bound_widths(shape: tuple[int, ...]):
    b = [{"id": "l", "op": "linear", "inputs": ["x"], "out_features": 4}]
    if len(shape) == 2:
        b.append({"id": "g", "op": "global_avg_pool", "inputs": ["l"]})
    ArchitectureGraph.from_dict(net(*b, shape=shape, head=False, last=b[-1]["id"]))


def test_too_many_multiply_accumulates():
    doc = net(conv(out_channels=64), conv(id="c2", inputs=["c"], out_channels=64), last="c2")
    problems = problems_of(doc, GraphLimits(max_flops=1000))
    assert_reported(problems, None, "multiply-accumulates per sample; the limit is 1,000",
                    "nodes")


def test_independent_problems_are_all_reported_in_one_error():
    doc = net(
        conv(id="bad_groups", groups=2),                                    # shape
        conv(id="bad_attr", kernal_size=3),                                 # schema
        {"id": "bad_op", "op": "rellu", "inputs": ["x"]},                   # vocabulary
        conv(id="bad_input", inputs=["ghost"]),                             # reference
        conv(id="ok"),
        {"id": "bad_add", "op": "add", "inputs": ["ok", "x"]},             # broadcast (4 vs 3)
        {"id": "merge", "op": "concat",
         "inputs": ["bad_groups", "bad_attr", "bad_op", "bad_input", "bad_add"]},
        7,                                                                  # not an object
        last="merge")
    problems = problems_of(doc)
    assert_reported(problems, "bad_groups", "not divisible by groups=2", "groups")
    assert_reported(problems, "bad_attr", "unknown attribute", "kernal_size")
    assert_reported(problems, "bad_op", "did you mean 'relu'?", "op")
    assert_reported(problems, "bad_input", "input 'ghost' does not name a node", "inputs")
    assert_reported(problems, "bad_add", "do not match", None)
    assert_reported(problems, None, "a node must be an object", None)
    # Consumers of broken nodes are skipped, not reported again.
    assert not [p for p in problems if p.node in ("merge", "gap", "fc", "out")]
    assert len(problems) == 6


def test_problem_locations_point_into_the_document():
    problems = problems_of(net(conv(groups=2), 5))
    by_node = {p.node: p for p in problems}
    assert by_node["c"].location() == "/nodes/1/groups" and by_node["c"].index == 1
    assert by_node[None].location() == "/nodes/2"
    assert str(by_node["c"]).startswith("node 'c', field 'groups': ")
    doc_level = problems_of(with_doc(format="x"))[0]
    assert doc_level.location() == "/format" and str(doc_level).startswith("/format: ")


def test_deep_nesting_inside_a_valid_looking_document():
    deep = "[" * 50_000 + "]" * 50_000
    text = VALID_TEXT.replace('"kernel_size": 3', f'"kernel_size": {deep}')
    assert_reported(problems_of(text), None, "not valid JSON")


def test_deeply_nested_python_values_are_reported_not_recursed():
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    assert_reported(problems_of(net({**conv(), "op": deep})), "c", "unknown op", "op")


def test_huge_values_are_not_echoed_in_full():
    problems = problems_of(net({**conv(), "op": "x" * 1_000_000}))
    assert all(len(p.message) < 1000 for p in problems)


# ---- property tests ---------------------------------------------------------------------------

NODE_KEYS = ["id", "op", "inputs", "shape", "num_classes", "out_channels", "kernel_size",
             "stride", "padding", "groups", "out_features", "num_heads", "axis", "p", "index"]
json_leaves = (st.none() | st.booleans() | st.floats() | st.text(max_size=6)
               | st.integers(min_value=-(2**64), max_value=2**64)
               | st.sampled_from([0, 1, -1, 3, 10**100, "x", "c", "", FORMAT]))
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(NODE_KEYS) | st.text(max_size=6), children, max_size=5),
    max_leaves=16,
)
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, database=None, derandomize=True,
                             suppress_health_check=[HealthCheck.too_slow])


def validate_or_report(doc: Any) -> None:
    """Succeeds or raises GraphValidationError; anything else escapes and fails the test."""
    try:
        ArchitectureGraph.from_dict(doc)
    except GraphValidationError as e:
        assert e.problems


@PROPERTY_SETTINGS
@given(value=json_values)
def test_random_json_values_only_ever_raise_graph_validation_error(value: Any):
    validate_or_report(value)
    validate_or_report({"format": FORMAT, "nodes": value})
    validate_or_report({"format": FORMAT, "nodes": [VALID["nodes"][0], value]})
    with contextlib.suppress(GraphValidationError):
        ArchitectureGraph.from_json(json.dumps(value))


def _base_documents() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(EXAMPLES.glob("*.json"))] + [VALID]


BASES = _base_documents()


@PROPERTY_SETTINGS
@given(data=st.data())
def test_attribute_mutations_only_ever_raise_graph_validation_error(data: st.DataObject):
    """Mutations that keep every node's id, op and number of inputs."""
    doc = copy.deepcopy(data.draw(st.sampled_from(BASES)))
    nodes = doc["nodes"]
    ids = [n["id"] for n in nodes]
    for _ in range(data.draw(st.integers(1, 3))):
        node = data.draw(st.sampled_from(nodes))
        attrs = sorted(set(OPS[node["op"]].attrs.model_fields) | (set(node) - {"id", "op",
                                                                                 "inputs"}))
        action = data.draw(st.sampled_from(["delete", "set", "unknown", "permute", "rewire"]))
        if action == "delete" and attrs:
            node.pop(data.draw(st.sampled_from(attrs)), None)
        elif action == "set" and attrs:
            node[data.draw(st.sampled_from(attrs))] = data.draw(json_values)
        elif action == "unknown":
            node[data.draw(st.text(min_size=1, max_size=6))] = data.draw(json_values)
        elif action == "permute" and node.get("inputs"):
            node["inputs"] = data.draw(st.permutations(node["inputs"]))
        elif action == "rewire" and node.get("inputs"):
            i = data.draw(st.integers(0, len(node["inputs"]) - 1))
            node["inputs"][i] = data.draw(st.sampled_from(ids))
        for key in ("id", "op", "inputs"):  # the invariant of this test
            assert key in node or key == "inputs"
    validate_or_report(doc)


@settings(PROPERTY_SETTINGS)
@given(data=st.data())
def test_structural_mutations_only_ever_raise_graph_validation_error(data: st.DataObject):
    """Any key deleted or replaced by random JSON, ops changed, inputs swapped between nodes."""
    doc = copy.deepcopy(data.draw(st.sampled_from(BASES)))
    nodes = doc["nodes"]
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(nodes) - 1))
        node = nodes[i]
        action = data.draw(st.sampled_from(["delete", "set", "op", "swap", "drop", "top"]))
        if not isinstance(node, dict):
            continue
        if action == "delete" and node:
            node.pop(data.draw(st.sampled_from(sorted(node))))
        elif action == "set":
            node[data.draw(st.sampled_from(sorted(node) + NODE_KEYS))] = data.draw(json_values)
        elif action == "op":
            node["op"] = data.draw(st.sampled_from(OP_NAMES))
        elif action == "swap":
            other = nodes[data.draw(st.integers(0, len(nodes) - 1))]
            if isinstance(other, dict):
                node["inputs"], other["inputs"] = other.get("inputs", []), node.get("inputs", [])
        elif action == "drop" and len(nodes) > 1:
            del nodes[i]
        elif action == "top":
            doc[data.draw(st.sampled_from(["format", "name", "nodes", "parameter_sources",
                                           "extra"]))] = data.draw(json_values)
            break
    validate_or_report(doc)


@pytest.mark.parametrize("name", ["a\x00b", "line\nbreak", "x" * 257, 7])
def test_graph_names_with_control_characters_or_wrong_type_are_refused(name: object):
    doc = json.loads(VALID_TEXT)
    doc["name"] = name
    with pytest.raises(GraphValidationError) as e:
        ArchitectureGraph.from_dict(doc)
    assert any(p.field == "name" for p in e.value.problems)
