"""The graph hypernetwork: graph in, every parameter of the graph's network out.

Three parts, readable top to bottom:

1. **Encoder** — ``x_v = LayerNorm(E[op_v] + MLP(feat_v))``.
2. **Propagation** — ``layers`` synchronous :class:`GHNLayer` rounds over real and virtual
   edges in both directions. GHN-2 walks the DAG node by node (cost grows with nodes x edges,
   sequentially); here every node updates at once and the virtual edges carry information across
   up to ``virtual_cutoff`` hops per round, so a round is two matrix products and one
   scatter-add over all graphs of a batch.
3. **Decoder** — GHN-2's idea of predicting a bounded block per tensor and tiling it, factorised
   so that only what a tensor needs is computed: each node emits a ``K x K`` grid of codes; a
   ``kh x kw`` kernel takes the centre crop of the grid (or its bilinear resize when larger than
   ``K``); each code becomes a ``block_out x block_in`` slice; the block is sliced or tiled to
   ``(out, in)``. 1-D tensors come from a separate head. A learned embedding of the parameter's
   kind (conv, classifier, attention, bias, norm weight, ...) conditions both heads.
   Outputs are normalised as in GHN-2: weights ``w * sqrt(gain / fan_in)`` (gain 2 before a ReLU)
   after RMS-normalising the raw block, times a learned per-tensor scale ``exp(s)``; norm weights
   ``2 * sigmoid``, biases ``tanh``.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Batch, Data
from torch_geometric.nn import MessagePassing

from nas_service.graph import OP_NAMES, ArchitectureGraph

from .features import (
    MATRIX_KINDS,
    NUM_EDGE_TYPES,
    NUM_FEATURES,
    VECTOR_KINDS,
    FeatureCache,
    ParameterRequest,
)

KINDS = MATRIX_KINDS + VECTOR_KINDS


@dataclass
class GHNConfig:
    hidden: int = 128
    layers: int = 4
    virtual_cutoff: int = 16
    kernel: int = 7
    """Side of the grid of kernel codes each node emits."""
    code: int = 64
    block_out: int = 64
    block_in: int = 64
    vector: int = 64
    ops: tuple[str, ...] = field(default_factory=lambda: OP_NAMES)
    """The op vocabulary this GHN was trained with (embedding rows, in order)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> GHNConfig:
        data = json.loads(text)
        data["ops"] = tuple(data.get("ops", OP_NAMES))
        return cls(**data)


class UnsupportedArchitectureError(ValueError):
    """The GHN cannot predict parameters for this graph (e.g. an op it was not trained with)."""


class GHNLayer(MessagePassing):
    r"""One synchronous round of typed message passing with a residual update.

    .. math::
        m_v = \sum_{t} \sum_{u \in \mathcal{N}_t(v)} \alpha_{uv} W_t x_u, \qquad
        x_v' = \mathrm{LayerNorm}\big(x_v + \mathrm{MLP}([x_v \,\|\, m_v])\big)

    where ``t`` ranges over the four edge types (forward, backward, virtual forward, virtual
    backward) and ``alpha_uv`` (``edge_weight``) makes each type's sum a mean, scaled by ``1 / d``
    on virtual edges of distance ``d`` (GHN-2).

    Args:
        hidden: width of node embeddings.

    Shapes:
        - x: ``(|V|, hidden)``
        - edge_index: ``(2, |E|)``, edge_type: ``(|E|,)`` in ``[0, 4)``, edge_weight: ``(|E|,)``
        - output: ``(|V|, hidden)``
    """

    def __init__(self, hidden: int):
        super().__init__(aggr="sum")
        self.hidden = hidden
        self.message_proj = nn.Linear(hidden, NUM_EDGE_TYPES * hidden, bias=False)
        self.update_mlp = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.GELU(),
                                        nn.Linear(2 * hidden, hidden))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_type: torch.Tensor,
                edge_weight: torch.Tensor) -> torch.Tensor:
        n = x.size(0)
        # Project once per node and type; an edge of type t from u reads row u * 4 + t.
        projected = self.message_proj(x).view(n * NUM_EDGE_TYPES, self.hidden)
        typed = torch.stack([edge_index[0] * NUM_EDGE_TYPES + edge_type, edge_index[1]])
        m = self.propagate(typed, x=(projected, x), edge_weight=edge_weight,
                           size=(n * NUM_EDGE_TYPES, n))
        return self.norm(x + self.update_mlp(torch.cat([x, m], dim=-1)))

    def message(self, x_j: torch.Tensor, edge_weight: torch.Tensor) -> torch.Tensor:
        return x_j * edge_weight.unsqueeze(-1)


class GraphHyperNetwork(nn.Module):
    """Predicts all parameters of architectures given as :class:`ArchitectureGraph`."""

    def __init__(self, config: GHNConfig | None = None):
        super().__init__()
        self.config = c = config or GHNConfig()
        h = c.hidden
        self.op_embed = nn.Embedding(len(c.ops), h)
        self.feat_mlp = nn.Sequential(nn.Linear(NUM_FEATURES, h), nn.GELU(), nn.Linear(h, h))
        self.input_norm = nn.LayerNorm(h)
        self.layers = nn.ModuleList(GHNLayer(h) for _ in range(c.layers))
        self.kind_embed = nn.Embedding(len(KINDS), h)
        self.code_head = nn.Sequential(nn.Linear(h, 2 * h), nn.GELU(),
                                       nn.Linear(2 * h, c.kernel * c.kernel * c.code))
        self.block_head = nn.Linear(c.code, c.block_out * c.block_in)
        # log of a per-tensor gain on top of the normalised scale; zero-initialised so training
        # starts from He/LeCun scales, but the GHN can learn to shrink a classifier's logits or
        # damp a residual branch of a network without batch norm.
        self.scale_head = nn.Linear(h, 1)
        nn.init.zeros_(self.scale_head.weight)
        nn.init.zeros_(self.scale_head.bias)
        self.vector_head = nn.Sequential(nn.Linear(h, 2 * h), nn.GELU(), nn.Linear(2 * h, c.vector))
        self._op_index = {op: i for i, op in enumerate(c.ops)}
        self._features = FeatureCache(cutoff=c.virtual_cutoff)

    # ---- public API -------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.op_embed.weight.device

    def prepare(self, graphs: Sequence[ArchitectureGraph],
                features: Sequence[tuple[Data, list[ParameterRequest]]] | None = None
                ) -> tuple[Batch, list[list[ParameterRequest]]]:
        """Featurises graphs (cached by content hash) into one PyG batch on the GHN's device.

        ``features``, one ``(featurize(g, cutoff), parameter_requests(g))`` per graph, skips that
        work here: training computes them in worker processes, ahead of the step."""
        if features is not None and len(features) != len(graphs):
            raise ValueError(f"{len(features)} feature sets for {len(graphs)} graphs")
        data, requests = [], []
        for i, g in enumerate(graphs):
            unknown = sorted({n.op for n in g.nodes} - self._op_index.keys())
            if unknown:
                raise UnsupportedArchitectureError(
                    f"this GHN was trained without the op(s) {unknown}; retrain it to predict them")
            d, r = self._features.get(g) if features is None else features[i]
            if tuple(self.config.ops) != OP_NAMES:
                d = d.clone()
                d.op = torch.tensor([self._op_index[n.op] for n in g.nodes])
            data.append(d)
            requests.append(r)
        return Batch.from_data_list(data).to(self.device), requests

    def predict(self, graphs: Sequence[ArchitectureGraph]) -> list[dict[str, torch.Tensor]]:
        """``[{"<node>.<param>": tensor}]``, one dict per graph, in ``state_dict`` order."""
        batch, requests = self.prepare(graphs)
        return self(batch, requests)

    # ---- the model ----------------------------------------------------------------------------

    def embed(self, batch: Batch) -> torch.Tensor:
        """Node embeddings after propagation: ``(|V|, hidden)`` for every node of the batch."""
        x = self.input_norm(self.op_embed(batch.op) + self.feat_mlp(batch.feat))
        for layer in self.layers:
            x = layer(x, batch.edge_index, batch.edge_type, batch.edge_weight)
        return x

    def forward(self, batch: Batch, requests: list[list[ParameterRequest]]
                ) -> list[dict[str, torch.Tensor]]:
        x = self.embed(batch)
        ptr = batch.ptr.tolist()
        flat = [(g, r) for g, reqs in enumerate(requests) for r in reqs]
        out: list[dict[str, torch.Tensor]] = [{} for _ in requests]
        matrix = [(g, r) for g, r in flat if r.kind in MATRIX_KINDS]
        vector = [(g, r) for g, r in flat if r.kind in VECTOR_KINDS]
        predicted: dict[tuple[int, str], torch.Tensor] = {}
        if matrix:
            predicted.update(self._decode_matrices(x, ptr, matrix))
        if vector:
            predicted.update(self._decode_vectors(x, ptr, vector))
        for g, r in flat:  # keep state_dict order
            out[g][r.name] = predicted[(g, r.name)]
        return out

    def _conditioned(self, x: torch.Tensor, ptr: list[int],
                     items: list[tuple[int, ParameterRequest]]) -> torch.Tensor:
        nodes = torch.tensor([ptr[g] + r.node for g, r in items], device=x.device)
        kinds = torch.tensor([KINDS.index(r.kind) for _, r in items], device=x.device)
        return x[nodes] + self.kind_embed(kinds)

    def _decode_matrices(self, x: torch.Tensor, ptr: list[int],
                         items: list[tuple[int, ParameterRequest]]
                         ) -> dict[tuple[int, str], torch.Tensor]:
        c = self.config
        z = self._conditioned(x, ptr, items)
        codes = self.code_head(z).view(len(items), c.code, c.kernel, c.kernel)  # (R, Dc, K, K)
        gains = torch.exp(self.scale_head(z).squeeze(-1).clamp(-6.0, 3.0))  # (R,)
        by_kernel: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, (_, r) in enumerate(items):
            by_kernel[_kernel_of(r)].append(i)
        out = {}
        for (kh, kw), idx in by_kernel.items():
            grid = _fit_grid(codes[idx], kh, kw)  # (r, Dc, kh, kw)
            blocks = self.block_head(grid.permute(0, 2, 3, 1))  # (r, kh, kw, Bo * Bi)
            blocks = blocks.view(len(idx), kh, kw, c.block_out, c.block_in).permute(0, 3, 4, 1, 2)
            for j, i in enumerate(idx):
                g, r = items[i]
                out[(g, r.name)] = _matrix_to_parameter(blocks[j], r, gains[i])
        return out

    def _decode_vectors(self, x: torch.Tensor, ptr: list[int],
                        items: list[tuple[int, ParameterRequest]]
                        ) -> dict[tuple[int, str], torch.Tensor]:
        raw = self.vector_head(self._conditioned(x, ptr, items))  # (R, V)
        out = {}
        for i, (g, r) in enumerate(items):
            length = math.prod(r.shape)
            v = _tile(raw[i], (length,))
            if r.kind == "norm_weight":
                v = 2 * torch.sigmoid(v)
            elif r.kind == "token":
                v = 0.1 * torch.tanh(v)
            else:
                v = torch.tanh(v)
            out[(g, r.name)] = v.view(r.shape)
        return out


def _kernel_of(r: ParameterRequest) -> tuple[int, int]:
    return (r.shape[2], r.shape[3]) if r.kind in ("conv", "patch") else (1, 1)


def _fit_grid(codes: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """Centre crop of a ``K x K`` code grid to ``kh x kw``, resizing axes longer than ``K``."""
    k = codes.shape[-1]
    if kh > k or kw > k:
        codes = F.interpolate(codes, size=(max(kh, k), max(kw, k)), mode="bilinear",
                              align_corners=True)
    top = (codes.shape[-2] - kh) // 2
    left = (codes.shape[-1] - kw) // 2
    return codes[..., top:top + kh, left:left + kw]


def _tile(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Slice ``t`` to ``shape`` where it is larger, repeat it cyclically where it is smaller
    (one full-size copy, by ``repeat``)."""
    t = t[tuple(slice(0, min(s, d)) for s, d in zip(shape, t.shape, strict=True))]
    reps = [math.ceil(s / d) for s, d in zip(shape, t.shape, strict=True)]
    if any(r > 1 for r in reps):
        t = t.repeat(*reps)[tuple(slice(0, s) for s in shape)]
    return t


def _matrix_to_parameter(block: torch.Tensor, r: ParameterRequest,
                         learned_gain: torch.Tensor) -> torch.Tensor:
    """``block``: ``(Bo, Bi, kh, kw)``; returns the parameter, normalised then tiled.

    The block is cut to at most the parameter's size and RMS-normalised before GHN-2's fan-in
    scaling, so every predicted layer starts from the scale that keeps activations stable
    (He/LeCun init) and ``learned_gain`` adjusts it. Scaling the small block before tiling keeps
    the only full-size operation the copy that materialises the tensor.
    """
    if r.kind in ("conv", "patch"):
        out_ch, in_ch, kh, kw = r.shape
        b = block[:out_ch, :in_ch]
        fan_in = in_ch * kh * kw
    else:
        out_ch, in_ch = r.shape[-2], r.shape[-1]
        b = block[:out_ch, :in_ch, 0, 0]
        fan_in = in_ch
    scale = learned_gain * math.sqrt(r.gain / fan_in) / (b.pow(2).mean().sqrt() + 1e-6)
    full = (out_ch, in_ch, *r.shape[2:]) if r.kind in ("conv", "patch") else (out_ch, in_ch)
    return _tile(b * scale, full).reshape(r.shape)
