"""Every op of the vocabulary, checked against the module that computes it.

For each op and each input rank it accepts, a small graph is validated and built; the shapes the
graph infers must equal the shapes PyTorch produces on a batch of 2, ``parameter_shapes()`` must
equal the module's trainable ``state_dict`` entries (names, shapes and order), and the
multiply-accumulate counts of conv/linear/patch/attention nodes must equal hand-computed values.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn

from nas_service.graph import (
    OP_NAMES,
    ArchitectureGraph,
    GraphBuilder,
    GraphValidationError,
    to_module,
)

UNDER_TEST = "under_test"
NUM_CLASSES = 3


@dataclass(frozen=True)
class OpCase:
    """One op applied to the graph's input ``x`` (plus, for merges, ops of ``x``).

    ``others`` are extra inputs, each ``(op, attrs)`` applied to ``x``. ``macs`` is the
    hand-computed multiply-accumulate count of the node under test (``None``: not checked here,
    0 is checked for ops without MACs).
    """

    op: str
    shape: tuple[int, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    others: tuple[tuple[str, dict[str, Any]], ...] = ()
    macs: int | None = None
    label: str = ""

    @property
    def id(self) -> str:
        return f"{self.op}-{'x'.join(map(str, self.shape))}" + (f"-{self.label}" if self.label else "")


MAP, TOKENS, VECTOR = (4, 6, 6), (5, 8), (6,)
ACTIVATION_ATTRS: dict[str, dict[str, Any]] = {
    "leaky_relu": {"negative_slope": 0.2},
    "elu": {"alpha": 0.5},
    "gelu": {"approximate": "tanh"},
}

CASES: list[OpCase] = [
    OpCase("input", MAP), OpCase("input", TOKENS), OpCase("input", VECTOR),
    OpCase("output", (NUM_CLASSES,)),
    # conv2d: (C_out * H' * W') * (C_in / groups) * kh * kw
    OpCase("conv2d", MAP, {"out_channels": 8, "kernel_size": 3, "padding": 1},
           macs=8 * 6 * 6 * 4 * 3 * 3, label="same"),
    OpCase("conv2d", MAP, {"out_channels": 8, "kernel_size": 3, "stride": 2, "padding": 1,
                           "bias": False}, macs=8 * 3 * 3 * 4 * 3 * 3, label="stride2-nobias"),
    OpCase("conv2d", MAP, {"out_channels": 4, "kernel_size": 3, "padding": 1, "groups": 4},
           macs=4 * 6 * 6 * 1 * 3 * 3, label="depthwise"),
    OpCase("conv2d", MAP, {"out_channels": 6, "kernel_size": 3, "groups": 2},
           macs=6 * 4 * 4 * 2 * 3 * 3, label="groups2"),
    OpCase("conv2d", MAP, {"out_channels": 5, "kernel_size": 3, "dilation": 2, "padding": 2},
           macs=5 * 6 * 6 * 4 * 3 * 3, label="dilated"),
    OpCase("conv2d", MAP, {"out_channels": 5, "kernel_size": [1, 5], "padding": [0, 2]},
           macs=5 * 6 * 6 * 4 * 1 * 5, label="1x5"),
    OpCase("conv2d", MAP, {"out_channels": 5, "kernel_size": [5, 1], "padding": [2, 0]},
           macs=5 * 6 * 6 * 4 * 5 * 1, label="5x1"),
    # linear: prod(out) * in_features
    OpCase("linear", VECTOR, {"out_features": 7}, macs=7 * 6),
    OpCase("linear", TOKENS, {"out_features": 7, "bias": False}, macs=5 * 7 * 8),
    OpCase("batch_norm", MAP), OpCase("batch_norm", VECTOR, {"affine": False}),
    OpCase("batch_norm", MAP, {"eps": 1e-3, "momentum": 0.01}, label="eps"),
    OpCase("layer_norm", MAP), OpCase("layer_norm", TOKENS), OpCase("layer_norm", VECTOR),
    OpCase("layer_norm", TOKENS, {"affine": False, "eps": 1e-6}, label="noaffine"),
    OpCase("group_norm", MAP, {"num_groups": 2}),
    OpCase("group_norm", MAP, {"num_groups": 4, "affine": False}, label="noaffine"),
    *[OpCase(a, s, ACTIVATION_ATTRS.get(a, {}))
      for a in ("relu", "relu6", "leaky_relu", "elu", "gelu", "silu", "mish", "tanh", "sigmoid",
                "hardswish", "hardsigmoid")
      for s in (MAP, TOKENS, VECTOR)],
    OpCase("max_pool", MAP, {"kernel_size": 2}),
    OpCase("max_pool", MAP, {"kernel_size": 3, "stride": 2, "padding": 1}, label="s2p1"),
    OpCase("max_pool", (4, 7, 7), {"kernel_size": 2, "ceil_mode": True}, label="ceil"),
    OpCase("avg_pool", MAP, {"kernel_size": [2, 3]}),
    OpCase("avg_pool", (4, 7, 7), {"kernel_size": 3, "stride": 2, "padding": 1,
                                   "ceil_mode": True, "count_include_pad": False}, label="ceil"),
    OpCase("adaptive_avg_pool", MAP, {"output_size": 2}),
    OpCase("adaptive_avg_pool", MAP, {"output_size": [9, 3]}, label="upsample"),
    OpCase("global_avg_pool", MAP), OpCase("global_avg_pool", TOKENS),
    OpCase("global_avg_pool", MAP, {"keepdim": True}, label="keepdim"),
    OpCase("global_max_pool", MAP),
    OpCase("global_max_pool", MAP, {"keepdim": True}, label="keepdim"),
    OpCase("add", MAP, others=(("relu", {}),)),
    OpCase("add", MAP, others=(("global_avg_pool", {"keepdim": True}), ("identity", {})),
           label="broadcast3"),
    OpCase("add", TOKENS, others=(("gelu", {}),)),
    OpCase("add", VECTOR, others=(("tanh", {}),)),
    OpCase("mul", MAP, others=(("global_max_pool", {"keepdim": True}),), label="se-gate"),
    OpCase("mul", TOKENS, others=(("sigmoid", {}),)),
    OpCase("mul", VECTOR, others=(("sigmoid", {}),)),
    OpCase("concat", MAP, others=(("conv2d", {"out_channels": 3, "kernel_size": 1}),)),
    OpCase("concat", MAP, {"axis": 1}, others=(("identity", {}),), label="axis1"),
    OpCase("concat", MAP, {"axis": -1}, others=(("relu", {}), ("identity", {})), label="axis-1"),
    OpCase("concat", TOKENS, others=(("identity", {}),)),
    OpCase("concat", TOKENS, {"axis": 1}, others=(("linear", {"out_features": 3}),),
           label="features"),
    OpCase("concat", VECTOR, others=(("linear", {"out_features": 2}),)),
    OpCase("flatten", MAP), OpCase("flatten", TOKENS), OpCase("flatten", VECTOR),
    OpCase("dropout", MAP, {"p": 0.5}), OpCase("dropout", TOKENS), OpCase("dropout", VECTOR),
    OpCase("identity", MAP), OpCase("identity", TOKENS), OpCase("identity", VECTOR),
    # patch_embed: T * E * C * ph * pw, T = floor(7/3) * floor(6/2) = 6
    OpCase("patch_embed", (4, 7, 6), {"embed_dim": 10, "patch_size": [3, 2]},
           macs=6 * 10 * 4 * 3 * 2),
    OpCase("patch_embed", MAP, {"embed_dim": 8, "patch_size": 2, "bias": False},
           macs=9 * 8 * 4 * 2 * 2, label="nobias"),
    OpCase("to_tokens", MAP),
    OpCase("class_token", TOKENS),
    OpCase("pos_embed", TOKENS),
    # self_attention: T*D*3D (qkv) + 2*T*T*D (scores, weighted sum) + T*D*D (out projection)
    OpCase("self_attention", TOKENS, {"num_heads": 2},
           macs=5 * 8 * 3 * 8 + 2 * 5 * 5 * 8 + 5 * 8 * 8),
    OpCase("self_attention", TOKENS, {"num_heads": 4, "bias": False, "dropout": 0.1},
           macs=5 * 8 * 3 * 8 + 2 * 5 * 5 * 8 + 5 * 8 * 8, label="nobias"),
    OpCase("self_attention", MAP, {"num_heads": 2},
           macs=36 * 4 * 3 * 4 + 2 * 36 * 36 * 4 + 36 * 4 * 4),
    OpCase("select_token", TOKENS), OpCase("select_token", TOKENS, {"index": -1}, label="last"),
    # Rank 2 is also a (C, L) sequence: batch and group norm normalise axis 0.
    OpCase("batch_norm", TOKENS, label="sequence"),
    OpCase("group_norm", TOKENS, {"num_groups": 5}, label="sequence"),
    OpCase("scale", MAP), OpCase("scale", TOKENS, {"axis": -1}), OpCase("scale", VECTOR),
    OpCase("scale", MAP, {"axis": 2}, label="width"),
    OpCase("slice", MAP, {"end": 3}), OpCase("slice", TOKENS, {"start": 1, "end": 5}),
    OpCase("slice", VECTOR, {"start": 2, "end": 6, "step": 3}),
    OpCase("slice", MAP, {"axis": -1, "start": 1, "end": 6, "step": 2}, label="width"),
    OpCase("upsample", MAP, {"size": 12}),
    OpCase("upsample", MAP, {"size": [9, 13], "mode": "bilinear", "align_corners": True},
           label="bilinear"),
    OpCase("upsample", MAP, {"size": 4, "mode": "bicubic"}, label="bicubic"),
    OpCase("upsample", MAP, {"size": 7, "mode": "nearest-exact"}, label="nearest-exact"),
    # conv1d over (C, L) = (5, 8): (O * L') * (C / groups) * k
    OpCase("conv1d", TOKENS, {"out_channels": 6, "kernel_size": 3, "padding": 1},
           macs=6 * 8 * 5 * 3),
    OpCase("conv1d", TOKENS, {"out_channels": 10, "kernel_size": 2, "stride": 2, "dilation": 2,
                              "groups": 5, "bias": False}, macs=10 * 3 * 1 * 2, label="grouped"),
    # conv_transpose2d: every input element meets (O / groups) * kh * kw weights
    OpCase("conv_transpose2d", MAP, {"out_channels": 8, "kernel_size": 3, "stride": 2,
                                     "padding": 1, "output_padding": 1},
           macs=4 * 6 * 6 * 8 * 3 * 3),
    OpCase("conv_transpose2d", MAP, {"out_channels": 6, "kernel_size": [2, 3], "groups": 2,
                                     "dilation": 2, "bias": False},
           macs=4 * 6 * 6 * 3 * 2 * 3, label="grouped"),
    OpCase("std_conv2d", MAP, {"out_channels": 8, "kernel_size": 3, "padding": 1, "eps": 1e-6},
           macs=8 * 6 * 6 * 4 * 3 * 3),
    OpCase("prelu", MAP), OpCase("prelu", TOKENS), OpCase("prelu", VECTOR),
    OpCase("prelu", MAP, {"channelwise": False}, label="shared"),
    # recurrent: T * (every weight matrix), input (T, D) = (5, 8)
    OpCase("recurrent", TOKENS, {"mode": "lstm", "hidden_size": 6},
           macs=5 * (24 * 8 + 24 * 6)),
    OpCase("recurrent", TOKENS, {"mode": "gru", "hidden_size": 4, "num_layers": 2,
                                 "bidirectional": True, "dropout": 0.1},
           macs=5 * 2 * (12 * 8 + 12 * 4 + 12 * 8 + 12 * 4), label="gru2bi"),
    OpCase("recurrent", TOKENS, {"mode": "rnn_relu", "hidden_size": 3, "bias": False},
           macs=5 * (3 * 8 + 3 * 3), label="relu"),
    # the cells of nas_service.sequence: T * (every weight matrix), input (T, D) = (5, 8)
    OpCase("rhn", TOKENS, {"hidden_size": 6, "depth": 2}, macs=5 * (12 * 8 + 2 * 6 * 12)),
    OpCase("rhn", TOKENS, {"hidden_size": 3, "depth": 3, "layer_norm": True},
           macs=5 * (6 * 8 + 3 * 3 * 6), label="ln"),
    OpCase("hyper_lstm", TOKENS, {"hidden_size": 4, "hyper_size": 3, "hyper_embedding_size": 2},
           macs=5 * (4 * 16 + 3 * 12 + 16 * 8 + 12 * 8 + 12 * 4 + 3 * 2 * 16 + 6 * 3)),
    OpCase("hyper_lstm", TOKENS, {"hidden_size": 2, "hyper_size": 2, "layer_norm": True},
           macs=5 * (2 * 8 + 2 * 8 + 8 * 8 + 8 * 8 + 8 * 2 + 3 * 16 * 8 + 48 * 2), label="ln"),
    OpCase("hyper_rhn", TOKENS, {"hidden_size": 4, "depth": 2, "hyper_size": 3,
                                 "hyper_embedding_size": 2, "layer_norm": True},
           macs=5 * (2 * 4 * 8 + 8 * 8 + 2 * 3 * 6 + 6 * 12 + 3 * 2 * 8 + 6 * 3 + 2 * 2 * 8
                     + 4 * 3)),
    OpCase("embedding", VECTOR, {"num_embeddings": 4, "embedding_dim": 5}),
    OpCase("pad", MAP, {"padding": [0, 1, 2, 0]}),
    OpCase("pad", MAP, {"padding": [1, 1, 2, 0], "mode": "reflect"}, label="reflect"),
    OpCase("pad", TOKENS, {"padding": [2, 3], "mode": "replicate"}),
    OpCase("pad", MAP, {"padding": [1, 2, 1, 2], "mode": "constant", "value": -1.5},
           label="value"),
    OpCase("sub", MAP, others=(("global_avg_pool", {"keepdim": True}),)),
    OpCase("sub", TOKENS, others=(("relu", {}),)), OpCase("sub", VECTOR, others=(("tanh", {}),)),
    OpCase("reshape", MAP, {"shape": [4, 36]}), OpCase("reshape", TOKENS, {"shape": [40]}),
    OpCase("reshape", VECTOR, {"shape": [2, 3, 1]}),
    OpCase("permute", MAP, {"dims": [1, 2, 0]}), OpCase("permute", TOKENS, {"dims": [1, 0]}),
    OpCase("permute", VECTOR, {"dims": [0]}),
    *[OpCase("opaque", shape, {"shape": [3, 2], "parameters": {"w": [3, 4], "g": [3]},
                               "label": "F.softmax in blocks.0 (Block)"})
      for shape in (MAP, TOKENS, VECTOR)],
]
UNBUILDABLE = {"opaque"}
"""Ops whose graphs cannot be built: the tests that run a network skip them."""

SUPPORTED_RANKS: dict[str, set[int]] = {
    "input": {1, 2, 3}, "output": {1},
    "conv2d": {3}, "linear": {1, 2}, "batch_norm": {1, 2, 3}, "layer_norm": {1, 2, 3},
    "group_norm": {2, 3}, "max_pool": {3}, "avg_pool": {3}, "adaptive_avg_pool": {3},
    "global_avg_pool": {2, 3}, "global_max_pool": {3},
    "add": {1, 2, 3}, "mul": {1, 2, 3}, "concat": {1, 2, 3},
    "flatten": {1, 2, 3}, "dropout": {1, 2, 3}, "identity": {1, 2, 3},
    "patch_embed": {3}, "to_tokens": {3}, "class_token": {2}, "pos_embed": {2},
    "self_attention": {2, 3}, "select_token": {2},
    "scale": {1, 2, 3}, "slice": {1, 2, 3}, "upsample": {3}, "conv1d": {2},
    "conv_transpose2d": {3}, "std_conv2d": {3}, "prelu": {1, 2, 3}, "recurrent": {2},
    "embedding": {1}, "opaque": {1, 2, 3}, "pad": {2, 3}, "sub": {1, 2, 3},
    "reshape": {1, 2, 3}, "permute": {1, 2, 3}, "rhn": {2}, "hyper_lstm": {2},
    "hyper_rhn": {2},
    **{a: {1, 2, 3} for a in ("relu", "relu6", "leaky_relu", "elu", "gelu", "silu", "mish",
                              "tanh", "sigmoid", "hardswish", "hardsigmoid")},
}
MAC_OPS = {"conv2d", "linear", "patch_embed", "self_attention", "conv1d", "conv_transpose2d",
           "std_conv2d", "recurrent", "rhn", "hyper_lstm", "hyper_rhn"}


def build_case(case: OpCase) -> tuple[ArchitectureGraph, str]:
    """The graph ``input -> [others] -> op -> flatten -> linear -> output``; returns the op's id."""
    if case.op == "input":
        b = GraphBuilder(case.shape, input_id=UNDER_TEST)
        tail = b.add("flatten", b.input)
        return b.build(b.add("linear", tail, out_features=NUM_CLASSES), NUM_CLASSES), UNDER_TEST
    b = GraphBuilder(case.shape, input_id="x")
    if case.op == "output":
        return b.build(b.input, NUM_CLASSES, output_id=UNDER_TEST), UNDER_TEST
    inputs = [b.input] + [b.add(op, b.input, **attrs) for op, attrs in case.others]
    node = b.add(case.op, *inputs, id=UNDER_TEST, **case.attrs)
    tail = b.add("flatten", node)
    return b.build(b.add("linear", tail, out_features=NUM_CLASSES), NUM_CLASSES), node


def run_with_hooks(graph: ArchitectureGraph, batch: int = 2) -> dict[str, tuple[int, ...]]:
    """Actual per-sample output shape of every node on a random batch."""
    net = to_module(graph)
    seen: dict[str, tuple[int, ...]] = {}
    for node in graph.nodes[1:]:
        net._modules[node.id].register_forward_hook(
            lambda m, args, out, nid=node.id: seen.__setitem__(nid, tuple(out.shape)))
    x = torch.randn(batch, *graph.input_shape)
    if any(n.op == "embedding" for n in graph.nodes):
        x = torch.randint(0, 4, (batch, *graph.input_shape))
    seen[graph.input_node.id] = tuple(x.shape)
    with torch.no_grad():
        y = net(x)
    assert tuple(y.shape) == (batch, graph.num_classes)
    return seen


def test_every_op_has_cases():
    covered = {c.op for c in CASES}
    assert covered == set(OP_NAMES), f"ops without a case: {set(OP_NAMES) - covered}"
    assert set(SUPPORTED_RANKS) == set(OP_NAMES)


@pytest.mark.parametrize("op", OP_NAMES)
def test_cases_cover_every_supported_rank(op: str):
    ranks = {len(c.shape) for c in CASES if c.op == op}
    assert ranks == SUPPORTED_RANKS[op]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_inferred_shapes_equal_pytorch_shapes(case: OpCase):
    if case.op in UNBUILDABLE:
        pytest.skip("cannot be built")
    graph, node = build_case(case)
    actual = run_with_hooks(graph)
    for n in graph.nodes:
        assert actual[n.id] == (2, *n.shape), f"node {n.id} ({n.op})"
    assert node in actual


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_parameter_shapes_equal_trainable_state_dict_entries(case: OpCase):
    if case.op in UNBUILDABLE:
        pytest.skip("cannot be built")
    graph, _ = build_case(case)
    net = to_module(graph)
    trainable = dict(net.named_parameters())
    state = net.state_dict()
    from_state = [(k, tuple(v.shape)) for k, v in state.items() if k in trainable]
    assert from_state == list(graph.parameter_shapes().items())
    assert [(k, tuple(p.shape)) for k, p in trainable.items()] == from_state
    # Everything else in the state_dict is a buffer (batch-norm statistics), never a parameter.
    assert set(state) - set(trainable) == {k for k, _ in net.named_buffers()}
    assert graph.num_parameters == sum(p.numel() for p in net.parameters())
    assert graph.num_parameters == sum(math.prod(s) for s in graph.parameter_shapes().values())


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_content_hash_is_the_hash_of_the_canonical_document(case: OpCase):
    # content_hash() skips pydantic's JSON dump for speed; the hash must stay the spec's
    # (docs/graph-format.md section 8), or every stored architecture's cache key would change.
    graph, _ = build_case(case)
    canonical = json.dumps(graph.to_dict()["nodes"], sort_keys=True, separators=(",", ":"))
    assert graph.content_hash() == hashlib.sha256(canonical.encode()).hexdigest()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_mac_counts(case: OpCase):
    graph, node = build_case(case)
    n = graph[node]
    if case.macs is not None:
        assert n.flops == case.macs
    elif case.op not in MAC_OPS:
        assert n.flops == 0
    assert graph.flops == sum(m.flops for m in graph.nodes)


@pytest.mark.parametrize("op", [op for op in OP_NAMES if op not in ("input", "output")])
def test_unsupported_ranks_are_rejected_at_the_node(op: str):
    # input has no input; output's "vector of num_classes" rule is in test_graph_hostile.
    case = next(c for c in CASES if c.op == op)
    for shape in (MAP, TOKENS, VECTOR):
        if len(shape) in SUPPORTED_RANKS[op]:
            continue
        b = GraphBuilder(shape, input_id="x")
        node = b.add(op, b.input, id=UNDER_TEST, **case.attrs)
        with pytest.raises(GraphValidationError) as info:
            b.build(b.add("linear", b.add("flatten", node), out_features=3), 3)
        problems = [p for p in info.value.problems if p.node == UNDER_TEST]
        assert problems, info.value.problems
        assert "must be a" in problems[0].message and str(list(shape)) in problems[0].message


# ---- convolutions in detail -----------------------------------------------------------------


def _single(shape: tuple[int, ...], op: str, **attrs: Any) -> tuple[ArchitectureGraph, str]:
    b = GraphBuilder(shape)
    node = b.add(op, b.input, **attrs)
    g = b.build(b.add("linear", b.add("flatten", node), out_features=2), 2)
    return g, node


def test_depthwise_conv_has_one_filter_per_channel():
    g, c = _single((8, 10, 10), "conv2d", out_channels=8, kernel_size=3, padding=1, groups=8)
    assert g[c].parameter_shapes == {"weight": (8, 1, 3, 3), "bias": (8,)}
    assert g[c].flops == 8 * 10 * 10 * 3 * 3
    conv = to_module(g)._modules[c]
    assert isinstance(conv, nn.Conv2d) and conv.groups == 8


def test_separable_conv_counts_depthwise_plus_pointwise():
    b = GraphBuilder((8, 10, 10))
    dw = b.add("conv2d", b.input, out_channels=8, kernel_size=3, padding=1, groups=8, bias=False)
    pw = b.add("conv2d", dw, out_channels=16, kernel_size=1, bias=False)
    g = b.build(b.add("linear", b.add("global_avg_pool", pw), out_features=2), 2)
    assert g[dw].flops == 8 * 10 * 10 * 9
    assert g[pw].flops == 16 * 10 * 10 * 8
    assert g[pw].shape == (16, 10, 10)
    assert g.parameter_shapes()[f"{dw}.weight"] == (8, 1, 3, 3)
    assert g.parameter_shapes()[f"{pw}.weight"] == (16, 8, 1, 1)
    assert run_with_hooks(g)[pw] == (2, 16, 10, 10)


def test_dilated_conv_shape_uses_the_effective_kernel():
    g, c = _single((3, 16, 16), "conv2d", out_channels=4, kernel_size=3, dilation=3)
    assert g[c].shape == (4, 10, 10)  # effective kernel 3 * (3 - 1) + 1 = 7
    assert run_with_hooks(g)[c] == (2, 4, 10, 10)


def test_asymmetric_kernels_1x7_and_7x1():
    b = GraphBuilder((4, 12, 12))
    a = b.add("conv2d", b.input, out_channels=6, kernel_size=[1, 7], padding=[0, 3])
    c = b.add("conv2d", a, out_channels=6, kernel_size=[7, 1])
    g = b.build(b.add("linear", b.add("flatten", c), out_features=2), 2)
    assert g[a].shape == (6, 12, 12) and g[c].shape == (6, 6, 12)
    assert g[a].parameter_shapes["weight"] == (6, 4, 1, 7)
    assert g[c].parameter_shapes["weight"] == (6, 6, 7, 1)
    assert g[a].flops == 6 * 12 * 12 * 4 * 7 and g[c].flops == 6 * 6 * 12 * 6 * 7
    shapes = run_with_hooks(g)
    assert shapes[a] == (2, 6, 12, 12) and shapes[c] == (2, 6, 6, 12)


def test_stride_two_with_padding_rounds_down():
    g, c = _single((3, 11, 11), "conv2d", out_channels=4, kernel_size=3, stride=2, padding=1)
    assert g[c].shape == (4, 6, 6)
    assert run_with_hooks(g)[c] == (2, 4, 6, 6)


CONV_GRID = [
    (size, k, s, p, d)
    for size, k, s, p, d in itertools.product((1, 2, 5, 8), (1, 2, 3, 5), (1, 2, 3), (0, 1, 2),
                                              (1, 2))
]


@pytest.mark.parametrize("size,k,s,p,d", CONV_GRID)
def test_conv_output_size_equals_pytorch(size: int, k: int, s: int, p: int, d: int):
    try:
        expected = nn.Conv2d(1, 1, k, s, p, d)(torch.zeros(1, 1, size, size)).shape[-1]
    except RuntimeError:
        expected = 0
    b = GraphBuilder((1, size, size))
    c = b.add("conv2d", b.input, out_channels=1, kernel_size=k, stride=s, padding=p, dilation=d)
    b_out = b.add("flatten", c)
    if expected == 0:
        with pytest.raises(GraphValidationError, match="spatial size collapses"):
            b.build(b_out, 1)
    else:
        g = b.build(b.add("linear", b_out, out_features=1), 1)
        assert g[c].shape == (1, expected, expected)


# ---- pooling ----------------------------------------------------------------------------------

POOL_GRID = [
    (cls, size, k, s, p, ceil)
    for cls, size, k, s, p, ceil in itertools.product(
        ("max_pool", "avg_pool"), (3, 5, 6, 7, 8), (2, 3, 4), (1, 2, 3), (0, 1), (False, True))
    if size >= k  # see test_ceil_mode_pooling_of_an_input_smaller_than_the_window
]


def _torch_pool(op: str, size: int, k: int, s: int, p: int, ceil: bool) -> int:
    cls = nn.MaxPool2d if op == "max_pool" else nn.AvgPool2d
    return cls(k, s, p, ceil_mode=ceil)(torch.zeros(1, 1, size, size)).shape[-1]


@pytest.mark.parametrize("op,size,k,s,p,ceil", POOL_GRID)
def test_pool_output_size_equals_pytorch(op: str, size: int, k: int, s: int, p: int, ceil: bool):
    g, node = _single((1, size, size), op, kernel_size=k, stride=s, padding=p, ceil_mode=ceil)
    expected = _torch_pool(op, size, k, s, p, ceil)
    assert g[node].shape == (1, expected, expected)
    assert run_with_hooks(g)[node] == (2, 1, expected, expected)


def test_ceil_mode_drops_a_window_that_starts_in_the_right_padding():
    # 5 + 2*1 - 2 = 5 -> ceil(5 / 2) + 1 = 4, but the 4th window would start at 6 >= 5 + 1.
    g, node = _single((1, 5, 5), "max_pool", kernel_size=3, stride=2, padding=1, ceil_mode=True)
    assert g[node].shape == (1, 3, 3) == (1, *[_torch_pool("max_pool", 5, 3, 2, 1, True)] * 2)


@pytest.mark.parametrize("op", ["max_pool", "avg_pool"])
def test_ceil_mode_pooling_of_an_input_smaller_than_the_window(op: str):
    expected = _torch_pool(op, 1, 2, 2, 0, True)
    assert expected == 1
    g, node = _single((1, 1, 1), op, kernel_size=2, ceil_mode=True)
    assert g[node].shape == (1, 1, 1)


def test_pool_stride_defaults_to_kernel_size():
    g, node = _single((2, 9, 9), "avg_pool", kernel_size=3)
    assert g[node].attrs.stride is None and g[node].shape == (2, 3, 3)
    pool = to_module(g)._modules[node]
    assert tuple(pool.stride if isinstance(pool.stride, tuple) else (pool.stride,) * 2) == (3, 3)


def test_global_pool_over_tokens_reduces_the_token_axis():
    g, node = _single(TOKENS, "global_avg_pool")
    assert g[node].shape == (TOKENS[1],)
    net = to_module(g)
    x = torch.randn(2, *TOKENS)
    assert torch.allclose(net._modules[node](x), x.mean(dim=1))


def test_attention_over_a_map_matches_nn_multihead_attention():
    """Same weights, loaded by name into ``nn.MultiheadAttention``, give the same output."""
    g, node = _single((8, 3, 3), "self_attention", num_heads=2)
    ours = to_module(g)._modules[node].eval()
    ref = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 8, 3, 3)
    tokens = x.flatten(2).transpose(1, 2)
    expected = ref(tokens, tokens, tokens, need_weights=False)[0].transpose(1, 2).reshape(x.shape)
    assert torch.allclose(ours(x), expected, atol=1e-5)


# ---- the ops of real models: hostile attribute values ------------------------------------------


@pytest.mark.parametrize(("op", "attrs", "field_name"), [
    ("slice", {"start": 3, "end": 3}, "start"),
    ("slice", {"end": 5}, "end"),
    ("slice", {"axis": 3, "end": 1}, "axis"),
    ("slice", {"end": 2, "step": 0}, "step"),
    ("slice", {"end": True}, "end"),
    ("scale", {"axis": 3}, "axis"),
    ("scale", {"axis": "0"}, "axis"),
    ("upsample", {"size": 4, "align_corners": True}, "align_corners"),
    ("upsample", {"size": 4, "mode": "area"}, "mode"),
    ("upsample", {"size": 0}, "size"),
    ("conv_transpose2d", {"out_channels": 2, "kernel_size": 3, "stride": 2,
                          "output_padding": 2}, "output_padding"),
    ("conv_transpose2d", {"out_channels": 2, "kernel_size": 2, "padding": 4}, "padding"),
    ("conv_transpose2d", {"out_channels": 3, "kernel_size": 1, "groups": 2}, "groups"),
    ("std_conv2d", {"out_channels": 2, "kernel_size": 3, "eps": 0.0}, "eps"),
    ("recurrent", {"mode": "lstm", "hidden_size": 2, "num_layers": 17}, "num_layers"),
    ("recurrent", {"mode": "transformer", "hidden_size": 2}, "mode"),
    ("rhn", {"hidden_size": 2, "depth": 17}, "depth"),
    ("rhn", {"hidden_size": 2, "depth": 0}, "depth"),
    ("rhn", {"hidden_size": 2}, "depth"),
    ("hyper_lstm", {"hidden_size": 2, "hyper_size": 0}, "hyper_size"),
    ("hyper_lstm", {"hidden_size": 2, "hyper_size": 2, "depth": 2}, "depth"),
    ("hyper_rhn", {"hidden_size": 2, "depth": 2, "hyper_size": 2,
                   "hyper_embedding_size": 0}, "hyper_embedding_size"),
    ("hyper_rhn", {"hidden_size": 2, "depth": 2, "hyper_size": 2, "layer_norm": 1},
     "layer_norm"),
    ("prelu", {"channelwise": 1}, "channelwise"),
    ("pad", {"padding": [1, 1, 1]}, "padding"),
    ("pad", {"padding": [1, 1, 1, 1, 1, 1]}, "padding"),
    ("pad", {"padding": [-1, 1]}, "padding"),
    ("pad", {"padding": [6, 0], "mode": "reflect"}, "padding"),
    ("pad", {"padding": [1, 1, 1, 1], "mode": "reflect", "value": 2.0}, "value"),
    ("pad", {"padding": [1, 1], "mode": "replicate"}, "padding"),
    ("reshape", {"shape": [5, 29]}, "shape"),
    ("reshape", {"shape": [1, 1, 1, 144]}, "shape"),
    ("permute", {"dims": [0, 0, 1]}, "dims"),
    ("permute", {"dims": [1, 0]}, "dims"),
    ("opaque", {"shape": [2, 2, 2, 2]}, "shape"),
    ("opaque", {"shape": [0]}, "shape"),
    ("opaque", {"shape": [2], "parameters": {"../etc": [2]}}, "parameters"),
    ("opaque", {"shape": [2], "parameters": {"w": [2, -1]}}, "parameters"),
    ("opaque", {"shape": [2], "parameters": {"w": [1] * 9}}, "parameters"),
    ("opaque", {"shape": [2], "parameters": {f"p{i}": [1] for i in range(257)}}, "parameters"),
    ("opaque", {"shape": [2], "parameters": ["w"]}, "parameters"),
    ("opaque", {"shape": [2], "label": "bad\nlabel"}, "label"),
    ("opaque", {"shape": [2], "label": "x" * 257}, "label"),
])
def test_hostile_attributes_of_the_ops_of_real_models(op: str, attrs: dict[str, Any],
                                                     field_name: str):
    shape = (4, 9) if op in ("conv1d", "recurrent", "rhn", "hyper_lstm", "hyper_rhn") else MAP if op != "opaque" else VECTOR
    b = GraphBuilder(shape, input_id="x")
    node = b.add(op, b.input, id=UNDER_TEST, **attrs)
    with pytest.raises(GraphValidationError) as info:
        b.build(b.add("linear", b.add("flatten", node), out_features=3), 3)
    fields = [p.field for p in info.value.problems if p.node == UNDER_TEST]
    assert field_name in fields, info.value.problems


def test_an_opaque_node_keeps_its_shape_and_parameters_but_is_never_built():
    b = GraphBuilder(MAP)
    x = b.add("opaque", b.input, b.add("relu", b.input), id="attn", shape=[8, 3],
              parameters={"qkv.weight": [24, 4], "gamma": [8]},
              label="F.scaled_dot_product_attention in blocks.0 (Attention)")
    graph = b.build(b.add("linear", b.add("flatten", x), out_features=2), 2)
    assert [n.id for n in graph.opaque_nodes] == ["attn"]
    assert graph["attn"].shape == (8, 3)
    assert graph.parameter_shapes()["attn.qkv.weight"] == (24, 4)
    assert graph.num_parameters == 24 * 4 + 8 + 2 * 24 + 2
    assert ArchitectureGraph.from_json(graph.to_json()) == graph
    with pytest.raises(ValueError, match=r"1 opaque node.*attn \(F.scaled_dot_product_attention"):
        to_module(graph)


def test_a_std_conv_standardises_each_filter():
    graph, node = _single(MAP, "std_conv2d", out_channels=3, kernel_size=3, eps=1e-5)
    net = to_module(graph)
    conv = net._modules[node]
    w = conv.weight
    var, mean = torch.var_mean(w, dim=(1, 2, 3), keepdim=True, unbiased=False)
    x = torch.randn(2, *MAP)
    expected = torch.nn.functional.conv2d(x, (w - mean) / torch.sqrt(var + 1e-5), conv.bias)
    torch.testing.assert_close(conv(x), expected)
