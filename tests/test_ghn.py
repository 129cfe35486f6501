"""The graph hypernetwork: featurisation, predicted shapes for every op, checkpoints, determinism."""

from __future__ import annotations

import json
from collections import deque

import numpy as np
import pytest
import torch
from torch.func import functional_call

from nas_service.ghn import GHNConfig, GraphHyperNetwork, UnsupportedArchitectureError, featurize
from nas_service.ghn.checkpoint import CheckpointError, load_ghn, read_metadata, save_ghn
from nas_service.ghn.features import (
    EDGE_BACKWARD,
    EDGE_FORWARD,
    EDGE_VIRTUAL_FORWARD,
    parameter_requests,
    shortest_path_lengths,
    typed_adjacency,
)
from nas_service.ghn.model import _tile, tile_signs
from nas_service.graph import OP_NAMES, ArchitectureGraph, GraphBuilder, to_module

TINY = GHNConfig(hidden=16, layers=2, code=8, block_out=8, block_in=8, vector=8)


def every_op_graph() -> ArchitectureGraph:
    """One graph that uses every op of the vocabulary at least once."""
    b = GraphBuilder((3, 16, 16), name="every-op")
    x = b.add("conv2d", b.input, out_channels=12, kernel_size=3, padding=1, bias=False)
    x = b.add("batch_norm", x)
    x = b.add("relu", x)
    y = b.add("conv2d", x, out_channels=12, kernel_size=(1, 9), padding=(0, 4), groups=12)
    y = b.add("group_norm", y, num_groups=3)
    y = b.add("relu6", y)
    y = b.add("conv2d", y, out_channels=12, kernel_size=3, padding=2, dilation=2)
    y = b.add("layer_norm", y)
    for act in ("leaky_relu", "elu", "gelu", "silu", "mish", "tanh", "hardswish"):
        y = b.add(act, y)
    gate = b.add("global_avg_pool", y, keepdim=True)
    gate = b.add("conv2d", gate, out_channels=12, kernel_size=1)
    gate = b.add("hardsigmoid", gate)
    y = b.add("mul", y, gate)
    x = b.add("add", x, y)
    x = b.add("scale", x)
    z = b.add("std_conv2d", x, out_channels=12, kernel_size=3, padding=1, eps=1e-6)
    z = b.add("prelu", z)
    z = b.add("conv_transpose2d", z, out_channels=6, kernel_size=2, stride=2)  # (6, 32, 32)
    z = b.add("upsample", b.add("slice", z, end=3), size=16, mode="bilinear")
    z = b.add("sub", z, b.add("relu", z))
    z = b.add("permute", b.add("pad", z, padding=[1, 1, 1, 1], mode="replicate"), dims=[0, 2, 1])
    z = b.add("global_avg_pool", b.add("reshape", z, shape=[3, 9, 36]))
    x = b.add("self_attention", x, num_heads=2)
    p = b.add("max_pool", x, kernel_size=2)
    q = b.add("avg_pool", x, kernel_size=3, stride=2, padding=1)
    x = b.add("concat", p, q)  # (24, 8, 8)
    s = b.add("sigmoid", b.add("global_max_pool", x))
    a = b.add("flatten", b.add("adaptive_avg_pool", x, output_size=2))
    t = b.add("to_tokens", x)
    t = b.add("linear", t, out_features=16)
    v = b.add("patch_embed", b.input, embed_dim=16, patch_size=4)
    v = b.add("concat", v, t)
    v = b.add("class_token", v)
    v = b.add("pos_embed", v)
    v = b.add("self_attention", v, num_heads=4)
    c = b.add("select_token", v)
    m = b.add("global_avg_pool", v)
    r = b.add("recurrent", t, mode="gru", hidden_size=8)  # (64, 8)
    r = b.add("rhn", r, hidden_size=4, depth=2, layer_norm=True)
    r = b.add("hyper_lstm", r, hidden_size=4, hyper_size=3, hyper_embedding_size=2)
    r = b.add("hyper_rhn", r, hidden_size=8, depth=2, hyper_size=3, hyper_embedding_size=2)
    r = b.add("flatten", b.add("conv1d", r, out_channels=4, kernel_size=3, stride=2))
    h = b.add("concat", s, a, c, m, z, r)
    h = b.add("batch_norm", h)
    h = b.add("dropout", h, p=0.1)
    h = b.add("identity", h)
    return b.build(b.add("linear", h, out_features=7), num_classes=7)


def test_every_op_graph_covers_the_vocabulary():
    # An embedding takes integer ids, and an opaque node cannot run: tested on their own.
    assert {n.op for n in every_op_graph().nodes} == set(OP_NAMES) - {"embedding", "opaque"}


def test_predicted_tensors_have_the_shape_of_every_parameter():
    graph = every_op_graph()
    ghn = GraphHyperNetwork(TINY)
    params = ghn.predict([graph])[0]
    expected = graph.parameter_shapes()
    assert list(params) == list(expected)
    for name, shape in expected.items():
        assert tuple(params[name].shape) == shape, name
        assert torch.isfinite(params[name]).all(), name
    out = functional_call(to_module(graph), params, (torch.randn(3, 3, 16, 16),))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("shape", [(5,), (130,), (3, 7), (200, 3), (129, 65, 3, 3),
                                   (64, 1, 5, 5), (128, 256, 1, 1)])
def test_tiling_repeats_the_block_cyclically(shape):
    block = torch.randn(*[min(8, s) + 3 for s in shape[:2]], *shape[2:])
    tiled = _tile(block, shape)
    assert tiled.shape == shape
    index = np.indices(shape).reshape(len(shape), -1)
    wrapped = tuple(torch.from_numpy(i % d) for i, d in zip(index, block.shape, strict=True))
    assert torch.equal(tiled.reshape(-1), block[wrapped])


def test_large_layers_are_tiled_and_large_kernels_resized():
    b = GraphBuilder((3, 32, 32))
    x = b.add("conv2d", b.input, out_channels=70, kernel_size=11, padding=5)
    x = b.add("relu", x)
    x = b.add("conv2d", x, out_channels=150, kernel_size=(7, 1), padding=(3, 0))
    x = b.add("global_avg_pool", x)
    graph = b.build(b.add("linear", x, out_features=10), num_classes=10)
    torch.manual_seed(0)
    params = GraphHyperNetwork(TINY).predict([graph])[0]
    assert params["conv2d_0.weight"].shape == (70, 3, 11, 11)
    assert params["conv2d_1.weight"].shape == (150, 70, 7, 1)
    # Fan-in normalisation of the predicted block (8 rows here), which the tiling repeats.
    w = params["conv2d_0.weight"]
    expected = (2 / (3 * 121)) ** 0.5
    assert w[:8].pow(2).mean().sqrt().item() == pytest.approx(expected, rel=1e-4)
    # Later tiles are the block with signs flipped (tile_signs), so the scale is the block's.
    assert torch.equal(w[8:16].abs(), w[:8].abs()) and not torch.equal(w[8:16], w[:8])
    assert w.pow(2).mean().sqrt().item() == pytest.approx(expected, rel=0.1)


@pytest.mark.parametrize("shape", [(40, 40), (8, 100), (100, 8), (130, 65)])
def test_tile_signs_keep_the_first_tile_and_flip_the_others(shape):
    signs = tile_signs(*shape, 8, 8, torch.device("cpu"))
    assert signs.shape == shape and set(signs.unique().tolist()) <= {-1, 1}
    assert (signs[:8, :8] == 1).all()
    assert torch.equal(signs, tile_signs.__wrapped__(*shape, 8, 8, torch.device("cpu")))
    # Every later tile has a pattern of its own: no two tiles alike, none all +1.
    tiles = {tuple(signs[r:r + 8, c:c + 8].reshape(-1).tolist())
             for r in range(0, shape[0] - 7, 8) for c in range(0, shape[1] - 7, 8)}
    assert len(tiles) == (shape[0] // 8) * (shape[1] // 8)
    # Roughly balanced, as random signs are.
    assert abs(signs[8:, :].float().mean().item() if shape[0] > 8 else
               signs[:, 8:].float().mean().item()) < 0.2


def test_tile_signs_lift_the_rank_of_a_wide_linear_layer():
    """Plain tiling makes a 40 x 40 matrix of 8 x 8 copies (rank <= 8): a layer over 40
    inputs would see only their sums modulo 8. Decorrelated tiles keep its rank."""
    b = GraphBuilder((40,))
    graph = b.build(b.add("linear", b.input, out_features=40), num_classes=40)
    torch.manual_seed(0)
    plain = GraphHyperNetwork(GHNConfig(**{**vars(TINY), "tile_signs": False}))
    signed = GraphHyperNetwork(TINY)
    signed.load_state_dict(plain.state_dict())
    w_plain = plain.predict([graph])[0]["linear_0.weight"]
    w_signed = signed.predict([graph])[0]["linear_0.weight"]
    assert torch.linalg.matrix_rank(w_plain) <= 8
    assert torch.linalg.matrix_rank(w_signed) > 30
    assert torch.equal(w_signed[:8, :8], w_plain[:8, :8])


def test_a_checkpoint_without_tile_signs_loads_with_plain_tiling():
    """Checkpoints saved before the option existed were trained with copies: they keep them."""
    config = GHNConfig.from_json(json.dumps({k: v for k, v in vars(TINY).items()
                                             if k != "tile_signs"}))
    assert config.tile_signs is False
    assert GHNConfig().tile_signs is True


def test_activations_change_the_prediction():
    def net(act: str) -> ArchitectureGraph:
        b = GraphBuilder((1, 8, 8))
        x = b.add(act, b.add("conv2d", b.input, out_channels=4, kernel_size=3, id="conv"))
        x = b.add("global_avg_pool", b.add("conv2d", x, out_channels=4, kernel_size=3))
        return b.build(b.add("linear", x, out_features=3), num_classes=3)

    ghn = GraphHyperNetwork(TINY)
    relu, tanh = ghn.predict([net("relu"), net("tanh")])
    assert not torch.allclose(relu["conv.weight"], tanh["conv.weight"])


def test_batched_prediction_equals_one_by_one_and_is_deterministic():
    torch.manual_seed(0)
    ghn = GraphHyperNetwork(TINY).eval()
    graphs = [every_op_graph(), _chain(3), _chain(5)]
    together = ghn.predict(graphs)
    for g, batched in zip(graphs, together, strict=True):
        alone = ghn.predict([g])[0]
        for k in alone:
            torch.testing.assert_close(batched[k], alone[k], rtol=1e-5, atol=1e-6)
    again = ghn.predict(graphs)
    for a, b in zip(together, again, strict=True):
        for k in a:
            assert torch.equal(a[k], b[k])


def _chain(depth: int) -> ArchitectureGraph:
    b = GraphBuilder((1, 12, 12))
    x = b.input
    for _ in range(depth):
        x = b.add("relu", b.add("conv2d", x, out_channels=6, kernel_size=3, padding=1))
    x = b.add("global_avg_pool", x)
    return b.build(b.add("linear", x, out_features=4), num_classes=4)


def _bfs_distances(graph: ArchitectureGraph) -> np.ndarray:
    ids = [n.id for n in graph.nodes]
    index = {k: i for i, k in enumerate(ids)}
    children = graph.consumers()
    n = len(ids)
    dist = np.full((n, n), np.iinfo(np.int32).max)
    for s in range(n):
        dist[s, s] = 0
        queue = deque([s])
        while queue:
            u = queue.popleft()
            for c in children[ids[u]]:
                v = index[c]
                if dist[s, v] > dist[s, u] + 1:
                    dist[s, v] = dist[s, u] + 1
                    queue.append(v)
    return dist


@pytest.mark.parametrize("cutoff", [1, 3, 50])
def test_shortest_paths_match_breadth_first_search(cutoff):
    graph = every_op_graph()
    fast = shortest_path_lengths(graph, cutoff).astype(np.int64)
    slow = np.minimum(_bfs_distances(graph), cutoff + 1)
    np.testing.assert_array_equal(fast, slow)


def test_features_have_real_and_virtual_edges_in_both_directions():
    graph = _chain(4)  # input -> (conv -> relu) x4 -> pool -> linear -> output
    data = featurize(graph, cutoff=3)
    assert data.num_nodes == len(graph.nodes)
    assert data.feat.shape == (len(graph.nodes), data.feat.shape[1])
    types = data.edge_type.tolist()
    real = len(graph.nodes) - 1  # a chain
    assert types.count(EDGE_FORWARD) == types.count(EDGE_BACKWARD) == real
    # Pairs at distance 2 and 3 in a chain of n nodes: (n - 2) + (n - 3).
    n = len(graph.nodes)
    assert types.count(EDGE_VIRTUAL_FORWARD) == (n - 2) + (n - 3)
    # Each (target, type) group of weights sums to 1 / mean distance <= 1.
    assert float(data.edge_weight.max()) <= 1.0


def test_adjacency_is_the_same_whatever_the_edge_order():
    data = featurize(every_op_graph(), cutoff=4)
    n = data.num_nodes
    expected = torch.zeros(n, 4 * n)
    expected[data.edge_index[1], data.edge_index[0] * 4 + data.edge_type] = data.edge_weight
    shuffled = torch.randperm(data.edge_index.shape[1], generator=torch.Generator().manual_seed(0))
    for order in (torch.arange(len(shuffled)), shuffled):
        adjacency = typed_adjacency(data.edge_index[:, order], data.edge_type[order],
                                    data.edge_weight[order], n)
        assert torch.equal(adjacency.to_dense(), expected)


def test_unknown_op_for_an_older_ghn_is_a_clear_error():
    ghn = GraphHyperNetwork(GHNConfig(**{**TINY.__dict__, "ops": tuple(
        o for o in OP_NAMES if o != "mish")}))
    b = GraphBuilder((1, 8, 8))
    x = b.add("global_avg_pool", b.add("mish", b.add("conv2d", b.input, out_channels=2,
                                                             kernel_size=3)))
    graph = b.build(b.add("linear", x, out_features=2), num_classes=2)
    with pytest.raises(UnsupportedArchitectureError, match="mish"):
        ghn.predict([graph])


def test_checkpoint_round_trip(tmp_path):
    ghn = GraphHyperNetwork(TINY)
    path = save_ghn(ghn, tmp_path / "ghn.safetensors", task="fashion-mnist",
                    training={"steps": 3})
    meta = read_metadata(path)
    assert meta["task"] == "fashion-mnist" and meta["training"] == {"steps": 3}
    loaded = load_ghn(path, device="cpu")
    assert loaded.config == ghn.config
    graph = every_op_graph()
    a = ghn.eval().predict([graph])[0]
    b = loaded.predict([graph])[0]
    for k in a:
        assert torch.equal(a[k], b[k])


def test_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_ghn(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError):
        load_ghn(bad)


def test_gradients_reach_every_ghn_parameter():
    ghn = GraphHyperNetwork(TINY)
    graph = every_op_graph()
    params = ghn.predict([graph])[0]
    out = functional_call(to_module(graph), params, (torch.randn(4, 3, 16, 16),))
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 3])).backward()
    for name, p in ghn.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_parameter_requests_mark_the_classifier_and_relu_gain():
    graph = _chain(2)
    kinds = {r.name: (r.kind, r.gain) for r in parameter_requests(graph)}
    assert kinds["linear_0.weight"] == ("classifier", 1.0)
    assert kinds["conv2d_0.weight"] == ("conv", 2.0)
    assert kinds["conv2d_0.bias"][0] == "bias"


# ---- GHN-2's sequential propagation (the ablation baseline) ------------------------------------


def _node_by_node(layer, batch, x: torch.Tensor) -> torch.Tensor:
    """GHN-2's traversal written the slow, obvious way: one node at a time in topological order
    (forward edges), then in reverse order (backward edges), each reading current states."""
    from nas_service.ghn.features import (
        EDGE_BACKWARD,
        EDGE_FORWARD,
        EDGE_VIRTUAL_BACKWARD,
        EDGE_VIRTUAL_FORWARD,
    )
    from nas_service.ghn.sequential import topological_levels

    level = topological_levels(batch.edge_index, batch.edge_type, batch.num_nodes)
    order = sorted(range(batch.num_nodes), key=lambda v: (int(level[v]), v))
    weight = layer.message_proj.weight.view(4, layer.hidden, layer.hidden)
    h = x.clone()
    src, dst = batch.edge_index
    for types, nodes in (((EDGE_FORWARD, EDGE_VIRTUAL_FORWARD), order),
                         ((EDGE_BACKWARD, EDGE_VIRTUAL_BACKWARD), order[::-1])):
        for v in nodes:
            edges = [e for e in range(src.numel())
                     if int(dst[e]) == v and int(batch.edge_type[e]) in types]
            if not edges:
                continue
            m = sum(batch.edge_weight[e] * (weight[batch.edge_type[e]] @ h[src[e]])
                    for e in edges)
            h[v] = layer.gru(m[None], h[v][None])[0]
    return layer.norm(h)


@torch.no_grad()
def test_sequential_propagation_by_levels_equals_node_by_node():
    from nas_service.ghn.sequential import sequential_schedule

    torch.manual_seed(0)
    ghn = GraphHyperNetwork(GHNConfig(**{**vars(TINY), "propagation": "sequential",
                                         "layers": 1})).eval()
    batch, _ = ghn.prepare([_chain(2), every_op_graph(), _chain(4)])
    x = torch.randn(batch.num_nodes, ghn.config.hidden)
    schedule = sequential_schedule(batch.edge_index, batch.edge_type, batch.edge_weight,
                                   batch.num_nodes)
    torch.testing.assert_close(ghn.layers[0](x, schedule), _node_by_node(ghn.layers[0], batch, x),
                               rtol=1e-5, atol=1e-5)


def test_a_sequential_ghn_predicts_every_shape_and_round_trips(tmp_path):
    config = GHNConfig(**{**vars(TINY), "propagation": "sequential", "layers": 1})
    ghn = GraphHyperNetwork(config).eval()
    graph = every_op_graph()
    predicted = ghn.predict([graph])[0]
    assert {k: tuple(v.shape) for k, v in predicted.items()} == \
        {k: tuple(v.shape) for k, v in to_module(graph).named_parameters()}
    loaded = load_ghn(save_ghn(ghn, tmp_path / "seq.safetensors", task="fashion-mnist"), "cpu")
    assert loaded.config.propagation == "sequential"
    again = loaded.predict([graph])[0]
    assert all(torch.equal(predicted[k], again[k]) for k in predicted)
    with pytest.raises(ValueError, match="propagation"):
        GHNConfig(propagation="transformer")


def _opaque_and_embedding_graph() -> ArchitectureGraph:
    b = GraphBuilder((12,))
    t = b.add("embedding", b.input, num_embeddings=30, embedding_dim=8)  # (12, 8)
    t = b.add("opaque", t, shape=[12, 8], label="torch.matmul in attn (Attention)",
              parameters={"weight": [8, 8], "gamma": [8], "bias": [8], "pos": [1, 12, 8],
                          "kernel": [8, 4, 3], "temperature": []})
    return b.build(b.add("linear", b.add("global_avg_pool", t), out_features=3), num_classes=3)


def test_parameters_of_opaque_and_embedding_nodes_are_predicted():
    graph = _opaque_and_embedding_graph()
    params = GraphHyperNetwork(TINY).predict([graph])[0]
    assert {k: tuple(v.shape) for k, v in params.items()} == graph.parameter_shapes()
    assert all(torch.isfinite(v).all() for v in params.values())


def test_a_loaded_ghn_accepts_ops_appended_after_it_was_trained(tmp_path):
    old_ops = OP_NAMES[:35]  # the vocabulary the bundled GHN was trained with
    torch.manual_seed(0)
    old = GraphHyperNetwork(GHNConfig(**{**TINY.__dict__, "ops": old_ops}))
    path = save_ghn(old, tmp_path / "old.safetensors", task="fashion-mnist")
    with pytest.raises(UnsupportedArchitectureError, match="opaque"):
        old.predict([_opaque_and_embedding_graph()])
    loaded = load_ghn(path, device="cpu")
    assert loaded.added_ops == OP_NAMES[35:] and loaded.config.ops == OP_NAMES
    embed = loaded.op_embed.weight
    # A new row starts as its stand-in's row, or as the mean of the trained rows.
    assert torch.equal(embed[OP_NAMES.index("std_conv2d")], embed[OP_NAMES.index("conv2d")])
    assert torch.allclose(embed[OP_NAMES.index("opaque")], old.op_embed.weight.mean(0))
    # Graphs of the old vocabulary are predicted exactly as before.
    graph = _chain(2)
    before, after = old.eval().predict([graph])[0], loaded.predict([graph])[0]
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert loaded.predict([every_op_graph(), _opaque_and_embedding_graph()])
    # Saved again, the checkpoint keeps the new rows.
    again = load_ghn(save_ghn(loaded, tmp_path / "new.safetensors", task="fashion-mnist"), "cpu")
    assert again.added_ops == () and torch.equal(again.op_embed.weight, embed)


def test_the_bundled_ghn_predicts_every_op():
    ghn = load_ghn(device="cpu")
    for graph in (every_op_graph(), _opaque_and_embedding_graph()):
        params = ghn.predict([graph])[0]
        assert params.keys() == graph.parameter_shapes().keys()
