"""Turning an :class:`ArchitectureGraph` into the GHN's input: a PyG ``Data`` object.

Unlike GHN-2, a node is an op of the graph (activations included, so a ReLU net and a Tanh net
look different to the hypernetwork). Each node carries:

* ``op``: its index in :data:`~nas_service.graph.OP_NAMES`,
* ``feat``: a small vector of log-scaled shape and attribute features (:data:`FEATURE_NAMES`),
* edges in both directions of the DAG plus GHN-2-style *virtual edges* between every pair at
  shortest-path distance ``2..cutoff``, each with a normalisation coefficient so that one
  scatter-add computes the per-type mean of messages (virtual messages are also divided by their
  distance, as in GHN-2).

The edges are stored sorted by target: :func:`typed_adjacency` turns a batch's edges into the
sparse ``(|V|, 4 |V|)`` matrix of one GHN layer's aggregation without sorting them again.

Shortest paths on a DAG need no BFS per node: in topological order the distance column of node
``v`` is ``min`` over its inputs' columns plus one, which numpy does in ``O(N * in-degree)`` vector
operations.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch_geometric.data import Data

from nas_service.graph import OP_NAMES, ArchitectureGraph, GraphNode

# Edge types, in the order of the message projections of a GHN layer.
EDGE_FORWARD, EDGE_BACKWARD, EDGE_VIRTUAL_FORWARD, EDGE_VIRTUAL_BACKWARD = range(4)
NUM_EDGE_TYPES = 4

FEATURE_NAMES = (
    "log_out_width", "log_in_width", "kernel_h", "kernel_w", "log_stride", "log_dilation",
    "depthwise", "log_groups", "log_spatial", "has_bias", "log_num_inputs", "log_out_degree",
    "depth", "height_to_output", "classifier", "log_heads", "dropout", "log_params",
)
NUM_FEATURES = len(FEATURE_NAMES)

_RELU_LIKE = {"relu", "relu6", "leaky_relu"}
_CELL_OPS = {"rhn", "hyper_lstm", "hyper_rhn"}


@dataclass(frozen=True)
class ParameterRequest:
    """One tensor the GHN must produce: ``name`` is the graph's ``"<node>.<param>"``."""

    name: str
    node: int
    """Index of the node in its graph."""
    kind: str
    shape: tuple[int, ...]
    gain: float
    """GHN-2's beta in the fan-in normalisation: 2 before a ReLU, 1 otherwise."""


# Kinds of parameters; each has its own embedding in the decoder.
MATRIX_KINDS = ("conv", "linear", "classifier", "attention_in", "attention_out", "patch",
                "position")
VECTOR_KINDS = ("bias", "norm_weight", "norm_bias", "token")


def _width(shape: tuple[int, ...]) -> int:
    return shape[1] if len(shape) == 2 else shape[0]


def _spatial(shape: tuple[int, ...]) -> int:
    if len(shape) == 3:
        return shape[1] * shape[2]
    return shape[0] if len(shape) == 2 else 1


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    """A 1-D op's kernel, stride or dilation ``k`` as the 2-D ``(1, k)``."""
    return (1, v) if isinstance(v, int) else v


def _log2(x: float) -> float:
    return math.log2(1.0 + x)


def _node_features(node: GraphNode, out_degree: int, depth: float, height: float,
                   classifier: bool) -> list[float]:
    # The attribute values by name: a missing name costs a dict miss, not an AttributeError
    # raised inside pydantic's __getattr__ (a third of featurisation's time otherwise).
    a = node.attrs.__dict__
    kernel = _pair(a.get("kernel_size") or a.get("patch_size") or (1, 1))
    stride = _pair(a.get("stride") or (1, 1))
    if node.op in ("max_pool", "avg_pool") and a.get("stride") is None:
        stride = kernel  # PyTorch's default for pooling
    dilation = _pair(a.get("dilation", (1, 1)))
    groups = a.get("groups", 1)
    in_shape = node.input_shapes[0] if node.input_shapes else node.shape
    in_width = _width(in_shape)
    return [
        _log2(_width(node.shape)) / 12,
        _log2(in_width // max(groups, 1)) / 12,
        kernel[0] / 7,
        kernel[1] / 7,
        math.log2(max(stride)) / 2,
        math.log2(max(dilation)) / 2,
        1.0 if groups > 1 and groups == in_width else 0.0,
        math.log2(groups) / 10,
        _log2(_spatial(node.shape)) / 12,
        1.0 if a.get("bias", False) else 0.0,
        _log2(len(node.inputs)) / 4,
        _log2(out_degree) / 4,
        depth,
        height,
        1.0 if classifier else 0.0,
        math.log2(a.get("num_heads", 1)) / 4,
        float(a.get("p", 0.0)),
        _log2(node.num_parameters) / 25,
    ]


def _gain(graph: ArchitectureGraph, consumers: dict[str, list[str]], node_id: str) -> float:
    """2 when the node's output reaches a ReLU (directly or through a norm), else 1."""
    frontier = consumers[node_id]
    for _ in range(2):
        ops = {graph[c].op for c in frontier}
        if ops & _RELU_LIKE:
            return 2.0
        frontier = [n for c in frontier if graph[c].op in ("batch_norm", "group_norm",
                                                          "layer_norm") for n in consumers[c]]
    return 1.0


def parameter_requests(graph: ArchitectureGraph) -> list[ParameterRequest]:
    """Every parameter of ``graph`` with its decoder kind, in ``state_dict`` order."""
    consumers = graph.consumers()
    classifier_ids = {n.id for n in graph.nodes if n.op == "linear"
                      and any(graph[c].op == "output" for c in consumers[n.id])}
    out = []
    for index, node in enumerate(graph.nodes):
        for pname, shape in node.parameter_shapes.items():
            if node.op in ("batch_norm", "layer_norm", "group_norm"):
                kind = "norm_weight" if pname == "weight" else "norm_bias"
            elif node.op == "opaque":
                kind = _opaque_kind(pname, shape)
            elif node.op in _CELL_OPS and "norm" in pname:  # the cells' own layer norms
                kind = "norm_bias" if pname.endswith("bias") else "norm_weight"
            elif pname.endswith("bias") or pname.startswith("bias_"):
                kind = "bias"
            elif node.op in ("conv2d", "conv1d", "conv_transpose2d", "std_conv2d"):
                kind = "conv"
            elif node.op == "patch_embed":
                kind = "patch"
            elif node.op == "linear":
                kind = "classifier" if node.id in classifier_ids else "linear"
            elif node.op == "recurrent" or node.op in _CELL_OPS:
                kind = "linear"  # input, recurrent and hypernetwork matrices (and stacks)
            elif node.op == "self_attention":
                kind = "attention_in" if pname == "in_proj_weight" else "attention_out"
            elif node.op in ("pos_embed", "embedding"):
                kind = "position"
            elif node.op == "class_token":
                kind = "token"
            elif node.op in ("scale", "prelu"):
                kind = "norm_weight"  # a learned multiplicative gain per channel
            else:
                raise ValueError(f"node {node.id!r}: the GHN cannot predict parameter "
                                 f"{pname!r} of op {node.op!r}")
            gain = _gain(graph, consumers, node.id) if kind in ("conv", "linear") else 1.0
            out.append(ParameterRequest(f"{node.id}.{pname}", index, kind, tuple(shape), gain))
    return out


def _opaque_kind(name: str, shape: tuple[int, ...]) -> str:
    """The decoder kind of a parameter of an ``opaque`` node, from its shape and name: a
    ``(O, I, *kernel)`` tensor is a convolution's, a matrix a linear layer's, a vector a gain
    when named like one (``weight``, ``gamma``, ``scale``), else a bias."""
    if len(shape) >= 3 and not (len(shape) == 3 and shape[0] == 1):
        return "conv"
    if len(shape) >= 2:
        return "linear" if shape[0] > 1 else "position"
    last = name.rsplit(".", 1)[-1].lower()
    if any(word in last for word in ("weight", "gamma", "scale", "gain", "alpha")):
        return "norm_weight"
    return "bias"


def shortest_path_lengths(graph: ArchitectureGraph, cutoff: int) -> np.ndarray:
    """``D[u, v]`` = length of the shortest directed path ``u -> v`` (``cutoff + 1`` if longer
    or absent), computed column by column in topological order."""
    if not 1 <= cutoff < 32767:
        raise ValueError("cutoff must be in [1, 32766]")
    n = len(graph.nodes)
    index = {node.id: i for i, node in enumerate(graph.nodes)}
    far = np.int16(cutoff + 1)
    dist = np.full((n, n), far, dtype=np.int16)
    for v, node in enumerate(graph.nodes):
        if node.inputs:
            parents = [index[i] for i in node.inputs]
            col = dist[:, parents[0]] if len(parents) == 1 else dist[:, parents].min(axis=1)
            np.minimum(col + 1, far, out=dist[:, v])
        dist[v, v] = 0
    return dist


def featurize(graph: ArchitectureGraph, cutoff: int = 16) -> Data:
    """The GHN input for one graph (see the module docstring)."""
    nodes = graph.nodes
    n = len(nodes)
    index = {node.id: i for i, node in enumerate(nodes)}
    consumers = graph.consumers()
    dist = shortest_path_lengths(graph, max(cutoff, 1))

    # Depth from the input and height to the output, normalised to [0, 1].
    depth = np.zeros(n)
    for v, node in enumerate(nodes):
        if node.inputs:
            depth[v] = max(depth[index[i]] for i in node.inputs) + 1
    height = np.zeros(n)
    for v in range(n - 1, -1, -1):
        cs = consumers[nodes[v].id]
        if cs:
            height[v] = max(height[index[c]] for c in cs) + 1
    depth /= max(depth.max(), 1)
    height /= max(height.max(), 1)

    classifier = {i for i, node in enumerate(nodes) if node.op == "linear"
                  and any(nodes[index[c]].op == "output" for c in consumers[node.id])}
    feat = torch.tensor([
        _node_features(node, len(consumers[node.id]), depth[v], height[v], v in classifier)
        for v, node in enumerate(nodes)], dtype=torch.float32)
    op = torch.tensor([OP_NAMES.index(node.op) for node in nodes], dtype=torch.long)

    # Real edges (distance 1) in both directions, virtual edges (2..cutoff) in both directions.
    src, dst = np.nonzero(dist == 1)
    vsrc, vdst = np.nonzero((dist >= 2) & (dist <= cutoff))
    vd = dist[vsrc, vdst].astype(np.float32)
    sources = np.concatenate([src, dst, vsrc, vdst])
    targets = np.concatenate([dst, src, vdst, vsrc])
    types = np.concatenate([np.full(len(src), EDGE_FORWARD), np.full(len(src), EDGE_BACKWARD),
                            np.full(len(vsrc), EDGE_VIRTUAL_FORWARD),
                            np.full(len(vsrc), EDGE_VIRTUAL_BACKWARD)])
    scale = np.concatenate([np.ones(2 * len(src), np.float32), 1.0 / vd, 1.0 / vd])
    # Mean over each (target, type) group: divide by the group's size.
    group = targets * NUM_EDGE_TYPES + types
    counts = np.bincount(group, minlength=n * NUM_EDGE_TYPES).astype(np.float32)
    scale = scale / counts[group]
    # Sorted by (target, source, type): the rows of the GHN's sparse adjacency in CSR order, so
    # a batch (graphs concatenated with offsets) needs no sort (see typed_adjacency).
    order = np.lexsort((types, sources, targets))
    sources, targets, types, scale = sources[order], targets[order], types[order], scale[order]

    return Data(
        op=op,
        feat=feat,
        edge_index=torch.from_numpy(np.stack([sources, targets]).astype(np.int64)),
        edge_type=torch.from_numpy(types.astype(np.int64)),
        edge_weight=torch.from_numpy(scale.astype(np.float32)),
        num_nodes=n,
    )


class FeatureCache:
    """LRU cache of :func:`featurize` results by graph content hash (search revisits graphs)."""

    def __init__(self, maxsize: int = 1024, cutoff: int = 16):
        self.maxsize, self.cutoff = maxsize, cutoff
        self._items: OrderedDict[str, tuple[Data, list[ParameterRequest]]] = OrderedDict()

    def get(self, graph: ArchitectureGraph) -> tuple[Data, list[ParameterRequest]]:
        key = graph.content_hash()
        item = self._items.get(key)
        if item is None:
            item = (featurize(graph, self.cutoff), parameter_requests(graph))
            self._items[key] = item
            if len(self._items) > self.maxsize:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(key)
        return item


def typed_adjacency(edge_index: torch.Tensor, edge_type: torch.Tensor, edge_weight: torch.Tensor,
                    num_nodes: int) -> torch.Tensor:
    """The aggregation of a GHN layer as a sparse CSR matrix ``A`` of shape ``(|V|, 4 |V|)``:
    ``A[v, 4 u + t]`` is the weight of the edge ``u -> v`` of type ``t``, so ``A @ P``, where
    row ``4 u + t`` of ``P`` is node ``u``'s message for edge type ``t``, sums every node's
    weighted incoming messages in one sparse product (no ``|E| x hidden`` gather).

    Edges sorted by target (as :func:`featurize` stores them, also after PyG batching) become
    CSR rows directly; others are sorted first.
    """
    rows = edge_index[1]
    cols = edge_index[0] * NUM_EDGE_TYPES + edge_type
    if rows.numel() > 1 and bool((rows[1:] < rows[:-1]).any()):
        order = torch.argsort(rows * (NUM_EDGE_TYPES * num_nodes) + cols)
        rows, cols, edge_weight = rows[order], cols[order], edge_weight[order]
    crow = torch.zeros(num_nodes + 1, dtype=torch.long, device=rows.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=num_nodes), 0)
    return csr_adjacency(crow, cols, edge_weight, num_nodes)


def csr_adjacency(crow: torch.Tensor, cols: torch.Tensor, weights: torch.Tensor,
                  num_nodes: int) -> torch.Tensor:
    """The matrix of :func:`typed_adjacency` from its CSR arrays (``crow_indices()``,
    ``col_indices()``, ``values()``), e.g. built on the host and copied to a GPU. The arrays are
    not checked: nothing here reads device memory, so nothing waits for the device."""
    with warnings.catch_warnings():  # PyTorch flags CSR tensors as beta, once per process
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
        return torch.sparse_csr_tensor(crow, cols, weights,
                                       (num_nodes, NUM_EDGE_TYPES * num_nodes),
                                       check_invariants=False)
