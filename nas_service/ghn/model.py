"""The graph hypernetwork: graph in, every parameter of the graph's network out.

Three parts, readable top to bottom:

1. **Encoder** — ``x_v = LayerNorm(E[op_v] + MLP(feat_v))``.
2. **Propagation** — ``layers`` synchronous :class:`GHNLayer` rounds over real and virtual
   edges in both directions. GHN-2 walks the DAG node by node (cost grows with nodes x edges,
   sequentially); here every node updates at once and the virtual edges carry information across
   up to ``virtual_cutoff`` hops per round, so a round is two matrix products and one
   sparse-dense product over all graphs of a batch.
3. **Decoder** — GHN-2's idea of predicting a bounded block per tensor and tiling it, factorised
   so that only what a tensor needs is computed: each node emits a ``K x K`` grid of codes; a
   ``kh x kw`` kernel takes the centre crop of the grid (or its bilinear resize when larger than
   ``K``); each code becomes a ``block_out x block_in`` slice; the block is sliced or tiled to
   ``(out, in)``. 1-D tensors come from a separate head. A learned embedding of the parameter's
   kind (conv, classifier, attention, bias, norm weight, ...) conditions both heads.
   Outputs are normalised as in GHN-2: weights ``w * sqrt(gain / fan_in)`` (gain 2 before a ReLU)
   after RMS-normalising the raw block, times a learned per-tensor scale ``exp(s)``; norm weights
   ``2 * sigmoid``, biases ``tanh``.

**Tasks** — a GHN predicts parameters for the task it was trained on (``task=None``). Each task
added later (:meth:`GraphHyperNetwork.add_task`) has a learned embedding ``e_t`` (``hidden``
values) added to every node's encoding before its LayerNorm, as von Oswald et al. condition a
hypernetwork on a task embedding. The trained task's embedding is zero and not stored, so its
predictions are exactly those of the unconditioned GHN; a new task's embedding starts at zero
too, i.e. from the trained task's predictions. Embeddings are kept out of ``state_dict()``: each
is its own small file (:mod:`nas_service.ghn.tasks`), and a GHN checkpoint stays what it was.
"""

from __future__ import annotations

import functools
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
from torch_geometric.utils import spmm

from nas_service.graph import OP_NAMES, OPS, ArchitectureGraph

from .features import (
    MATRIX_KINDS,
    NUM_EDGE_TYPES,
    NUM_FEATURES,
    VECTOR_KINDS,
    FeatureCache,
    ParameterRequest,
    csr_adjacency,
    typed_adjacency,
)
from .sequential import SequentialGHNLayer, sequential_schedule

KINDS = MATRIX_KINDS + VECTOR_KINDS
PROPAGATIONS = ("synchronous", "sequential")


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
    tile_signs: bool = True
    """Decorrelate the tiles of tensors larger than one block (see :func:`tile_signs`): without
    it, a tensor's tiles are copies, so a wide layer repeats its output channels and a linear
    layer over many inputs sees only their sums modulo ``block_in``."""
    propagation: str = "synchronous"
    """``synchronous`` (:class:`GHNLayer` rounds, the default) or ``sequential`` (GHN-2's
    node-by-node traversal, :mod:`nas_service.ghn.sequential`, kept for the ablation); with
    ``sequential``, ``layers`` counts forward-backward traversals (GHN-2 uses one)."""

    def __post_init__(self) -> None:
        if self.propagation not in PROPAGATIONS:
            raise ValueError(f"propagation must be one of {PROPAGATIONS}, "
                             f"got {self.propagation!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> GHNConfig:
        data = json.loads(text)
        data["ops"] = tuple(data.get("ops", OP_NAMES))
        # A checkpoint saved before the option existed was trained with plain tiling.
        data.setdefault("tile_signs", False)
        return cls(**data)


class UnsupportedArchitectureError(ValueError):
    """The GHN cannot predict parameters for this graph (e.g. an op it was not trained with)."""


class UnsupportedTaskError(ValueError):
    """The GHN has no embedding of this task."""


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

    The sum runs as one sparse-dense product with the CSR matrix of
    :func:`~nas_service.ghn.features.typed_adjacency` (PyG's fused ``message_and_aggregate``
    path): gathering a message per edge instead costs ``|E| x hidden`` memory traffic, 30x the
    time on a DARTS network's 154 k edges.

    Shapes:
        - x: ``(|V|, hidden)``
        - adjacency: sparse CSR ``(|V|, 4 |V|)``
        - output: ``(|V|, hidden)``
    """

    def __init__(self, hidden: int):
        super().__init__(aggr="sum")
        self.hidden = hidden
        self.message_proj = nn.Linear(hidden, NUM_EDGE_TYPES * hidden, bias=False)
        self.update_mlp = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.GELU(),
                                        nn.Linear(2 * hidden, hidden))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        n = x.size(0)
        # Project once per node and type; an edge of type t from u reads row u * 4 + t.
        projected = self.message_proj(x).view(n * NUM_EDGE_TYPES, self.hidden)
        m = self.propagate(adjacency, x=(projected, x))
        return self.norm(x + self.update_mlp(torch.cat([x, m.to(x.dtype)], dim=-1)))

    def message_and_aggregate(self, adj_t: torch.Tensor, x: tuple[torch.Tensor, torch.Tensor]
                              ) -> torch.Tensor:
        # One sparse-dense product (fp32: sparse kernels under autocast take no bf16).
        return spmm(adj_t, x[0].to(adj_t.dtype), reduce="sum")


class GraphHyperNetwork(nn.Module):
    """Predicts all parameters of architectures given as :class:`ArchitectureGraph`."""

    def __init__(self, config: GHNConfig | None = None):
        super().__init__()
        self.config = c = config or GHNConfig()
        h = c.hidden
        self.op_embed = _op_embedding(c.ops, h)
        self.feat_mlp = nn.Sequential(nn.Linear(NUM_FEATURES, h), nn.GELU(), nn.Linear(h, h))
        self.input_norm = nn.LayerNorm(h)
        layer = SequentialGHNLayer if c.propagation == "sequential" else GHNLayer
        self.layers = nn.ModuleList(layer(h) for _ in range(c.layers))
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
        # Added tasks' embeddings: plain attributes, not registered parameters, so that they are
        # neither in state_dict() nor in parameters(); training passes them to its optimizer.
        self.task_embeddings: dict[str, nn.Parameter] = {}

    # ---- public API -------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.op_embed.weight.device

    def prepare(self, graphs: Sequence[ArchitectureGraph],
                features: Sequence[tuple[Data, list[ParameterRequest]]] | None = None
                ) -> tuple[Batch, list[list[ParameterRequest]]]:
        """Featurises graphs (cached by content hash) into one PyG batch on the GHN's device.

        ``features``, one ``(featurize(g, cutoff), parameter_requests(g))`` per graph, skips that
        work here: training computes them in worker processes, ahead of the step (and
        :func:`collate` too, so a step's batch only has to be copied to the device)."""
        if features is None:
            _check_supported(graphs, self._op_index)  # before featurising an unknown op
            features = [self._features.get(g) for g in graphs]
        batch, requests = collate(graphs, features, self.config)
        return batch.to(self.device, non_blocking=True), requests

    def predict(self, graphs: Sequence[ArchitectureGraph], task: str | None = None
                ) -> list[dict[str, torch.Tensor]]:
        """``[{"<node>.<param>": tensor}]``, one dict per graph, in ``state_dict`` order, for
        ``task`` (an added task's name; ``None``: the task the GHN was trained on)."""
        batch, requests = self.prepare(graphs)
        return self(batch, requests, task=task)

    def add_task(self, name: str, embedding: torch.Tensor | None = None) -> nn.Parameter:
        """A learnable embedding for task ``name``: ``embedding`` (``(hidden,)``), or zeros,
        which predict what the trained task's predictions are. Replaces one of the same name."""
        h = self.config.hidden
        value = torch.zeros(h) if embedding is None else embedding.detach().float().reshape(-1)
        if value.shape != (h,):
            raise ValueError(f"a task embedding of this GHN has {h} values, got "
                             f"{tuple(value.shape)}")
        param = nn.Parameter(value.to(self.device).clone())
        self.task_embeddings[name] = param
        return param

    def task_embedding(self, task: str | None) -> torch.Tensor | None:
        """The embedding of ``task``: ``None`` for the trained task (``None``, or its name)."""
        if task is None or task == getattr(self, "task", None):
            return None
        try:
            return self.task_embeddings[task]
        except KeyError:
            raise UnsupportedTaskError(f"this GHN has no embedding of task {task!r}; known: "
                                       f"{sorted(self.task_embeddings)}") from None

    def _apply(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        # .to(device) and friends move the task embeddings along with the registered tensors.
        out = super()._apply(fn, *args, **kwargs)
        with torch.no_grad():
            for name, param in list(self.task_embeddings.items()):
                moved = fn(param.data)
                if moved is not param.data:
                    self.task_embeddings[name] = nn.Parameter(moved, param.requires_grad)
        return out

    def extend_ops(self, ops: Sequence[str] = OP_NAMES) -> tuple[str, ...]:
        """Appends an embedding row for each op of ``ops`` this GHN was trained without; returns
        those ops. A new row starts as a copy of the row of the op's ``stand_in`` (the older op
        it generalises: ``std_conv2d`` starts as ``conv2d``), or as the mean of every row when
        it has none (``opaque``). Predictions for graphs of the old ops do not change; further
        training learns the new rows (``config.ops`` lists them, so a saved checkpoint keeps
        them)."""
        new = tuple(op for op in ops if op not in self._op_index)
        if not new:
            return new
        with torch.no_grad():
            old = self.op_embed.weight
            rows = [old[self._op_index[known]] if (known := self._known_stand_in(op)) else
                    old.mean(dim=0) for op in new]
            embed = nn.Embedding(len(old) + len(new), old.shape[1], device=old.device,
                                 dtype=old.dtype)
            embed.weight.copy_(torch.cat([old, torch.stack(rows)]))
        self.op_embed = embed
        self.config.ops = (*self.config.ops, *new)
        self._op_index = {op: i for i, op in enumerate(self.config.ops)}
        return new

    def _known_stand_in(self, op: str) -> str | None:
        """The first op this GHN knows along ``op``'s chain of stand-ins (``hyper_rhn`` ->
        ``recurrent`` -> ``linear``), or ``None``."""
        seen = {op}
        stand_in = OPS[op].stand_in if op in OPS else None
        while stand_in is not None and stand_in not in self._op_index and stand_in not in seen:
            seen.add(stand_in)
            stand_in = OPS[stand_in].stand_in if stand_in in OPS else None
        return stand_in if stand_in in self._op_index else None

    # ---- the model ----------------------------------------------------------------------------

    def embed(self, batch: Batch, task_embedding: torch.Tensor | None = None) -> torch.Tensor:
        """Node embeddings after propagation: ``(|V|, hidden)`` for every node of the batch,
        conditioned on ``task_embedding`` (``(hidden,)``; ``None``: the trained task)."""
        x = self.op_embed(batch.op) + self.feat_mlp(batch.feat)
        if task_embedding is not None:
            x = x + task_embedding
        x = self.input_norm(x)
        if self.config.propagation == "sequential":
            structure = sequential_schedule(batch.edge_index, batch.edge_type,
                                            batch.edge_weight, x.size(0))
        elif "adjacency_crow" in batch:  # built by collate, on the host
            structure = csr_adjacency(batch.adjacency_crow, batch.adjacency_col,
                                      batch.adjacency_weight, x.size(0))
        else:
            structure = typed_adjacency(batch.edge_index, batch.edge_type, batch.edge_weight,
                                        x.size(0))
        for layer in self.layers:
            x = layer(x, structure)
        return x

    def forward(self, batch: Batch, requests: list[list[ParameterRequest]],
                task: str | None = None) -> list[dict[str, torch.Tensor]]:
        x = self.embed(batch, self.task_embedding(task))
        ptr = batch.ptr  # on the device: node offsets are gathered there, not read back
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

    def _conditioned(self, x: torch.Tensor, ptr: torch.Tensor,
                     items: list[tuple[int, ParameterRequest]]) -> torch.Tensor:
        graphs = _host_tensor([g for g, _ in items], torch.long, x.device)
        nodes = ptr.index_select(0, graphs) + _host_tensor([r.node for _, r in items],
                                                           torch.long, x.device)
        kinds = _host_tensor([KINDS.index(r.kind) for _, r in items], torch.long, x.device)
        return x[nodes] + self.kind_embed(kinds)

    def _decode_matrices(self, x: torch.Tensor, ptr: torch.Tensor,
                         items: list[tuple[int, ParameterRequest]]
                         ) -> dict[tuple[int, str], torch.Tensor]:
        c = self.config
        z = self._conditioned(x, ptr, items)
        hidden = self.code_head[:-1](z)  # (R, 2h); the last layer runs per group, on demand
        gains = torch.exp(self.scale_head(z).squeeze(-1).clamp(-6.0, 3.0))  # (R,)
        # Requests sharing a kernel and a block size share one decoding: only the code-grid
        # cells their kernel crops and the block entries their shape keeps are computed (a
        # 1x1 conv needs 1 of the 49 cells, a depthwise conv 1 of the 64 input columns).
        groups: dict[tuple[int, int, int, int], list[int]] = defaultdict(list)
        for i, (_, r) in enumerate(items):
            out_ch, in_ch = _matrix_dims(r)
            groups[(*_kernel_of(r), min(out_ch, c.block_out), min(in_ch, c.block_in))].append(i)
        out = {}
        for (kh, kw, bo, bi), idx in groups.items():
            index = _host_tensor(idx, torch.long, x.device)
            grid = self._code_grid(hidden.index_select(0, index), kh, kw)  # (r, Dc, kh, kw)
            rows = (torch.arange(bo, device=x.device)[:, None] * c.block_in
                    + torch.arange(bi, device=x.device)).reshape(-1)
            blocks = F.linear(grid.permute(0, 2, 3, 1), self.block_head.weight[rows],
                              self.block_head.bias[rows])  # (r, kh, kw, bo * bi)
            blocks = blocks.view(len(idx), kh, kw, bo, bi).permute(0, 3, 4, 1, 2)
            # Each block is RMS-normalised before GHN-2's fan-in scaling, so every predicted
            # layer starts from the scale that keeps activations stable (He/LeCun init) and the
            # learned gain adjusts it. Scaling the small blocks before tiling leaves the copy
            # that materialises each tensor as the only full-size operation.
            # (In fp32: under autocast the blocks are bf16, too coarse for a fan-in of 18,432.)
            fan_in = _host_tensor([_matrix_dims(items[i][1])[1] * kh * kw for i in idx],
                                  torch.float32, x.device)
            beta = _host_tensor([items[i][1].gain for i in idx], torch.float32, x.device)
            rms = blocks.float().pow(2).mean(dim=(1, 2, 3, 4)).sqrt()
            scale = gains.index_select(0, index) * torch.sqrt(beta / fan_in) / (rms + 1e-6)
            blocks = blocks * scale.view(-1, 1, 1, 1, 1)
            for j, i in enumerate(idx):
                g, r = items[i]
                out_ch, in_ch = _matrix_dims(r)
                tiled = _tile(blocks[j], (out_ch, in_ch, kh, kw))
                if c.tile_signs and (out_ch > bo or in_ch > bi):
                    tiled = tiled * tile_signs(out_ch, in_ch, bo, bi,
                                               tiled.device)[:, :, None, None]
                out[(g, r.name)] = tiled.reshape(r.shape)
        return out

    def _code_grid(self, hidden: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
        """The ``kh x kw`` code grid of each row of ``hidden``: the centre crop of the ``K x K``
        grid the code head emits, computed for the cropped cells only; a kernel larger than
        ``K`` resizes the whole grid (bilinear)."""
        c = self.config
        k = c.kernel
        last = self.code_head[-1]
        if kh > k or kw > k:
            codes = last(hidden).view(len(hidden), c.code, k, k)
            return _fit_grid(codes, kh, kw)
        top, left = (k - kh) // 2, (k - kw) // 2
        cells = ((torch.arange(top, top + kh, device=hidden.device)[:, None] * k
                  + torch.arange(left, left + kw, device=hidden.device)).reshape(-1))
        rows = (torch.arange(c.code, device=hidden.device)[:, None] * (k * k) + cells).reshape(-1)
        return F.linear(hidden, last.weight[rows], last.bias[rows]).view(
            len(hidden), c.code, kh, kw)

    def _decode_vectors(self, x: torch.Tensor, ptr: torch.Tensor,
                        items: list[tuple[int, ParameterRequest]]
                        ) -> dict[tuple[int, str], torch.Tensor]:
        raw = self.vector_head(self._conditioned(x, ptr, items))  # (R, V)
        # Each kind's output range (norm weights 2 * sigmoid, tokens 0.1 * tanh, biases tanh),
        # applied to all rows at once before tiling, which only repeats values.
        sigmoid = _host_tensor([r.kind == "norm_weight" for _, r in items], torch.bool,
                               raw.device)
        gain = _host_tensor([0.1 if r.kind == "token" else 1.0 for _, r in items], raw.dtype,
                            raw.device)
        values = torch.where(sigmoid[:, None], 2 * torch.sigmoid(raw), gain[:, None] * torch.tanh(raw))
        out = {}
        for i, (g, r) in enumerate(items):
            out[(g, r.name)] = _tile(values[i], (math.prod(r.shape),)).view(r.shape)
        return out


def collate(graphs: Sequence[ArchitectureGraph],
            features: Sequence[tuple[Data, list[ParameterRequest]]], config: GHNConfig
            ) -> tuple[Batch, list[list[ParameterRequest]]]:
    """The host side of :meth:`GraphHyperNetwork.prepare`: the graphs' features as one PyG batch
    on the CPU, op indices in ``config``'s vocabulary, with the sparse adjacency of synchronous
    propagation already built (``adjacency_crow``, ``adjacency_col``, ``adjacency_weight``:
    building it on a GPU reads device memory back twice). Copying the batch to the device is
    then all a forward pass waits for. A pure function of its arguments: GHN training runs it in
    worker processes, ahead of the step.

    ``features``: one ``(featurize(g, config.virtual_cutoff), parameter_requests(g))`` per graph.
    """
    if len(features) != len(graphs):
        raise ValueError(f"{len(features)} feature sets for {len(graphs)} graphs")
    op_index = {op: i for i, op in enumerate(config.ops)}
    _check_supported(graphs, op_index)
    data, requests = [], []
    for g, (d, r) in zip(graphs, features, strict=True):
        if tuple(config.ops) != OP_NAMES:
            d = d.clone()
            d.op = torch.tensor([op_index[n.op] for n in g.nodes])
        data.append(d)
        requests.append(r)
    batch = Batch.from_data_list(data)
    if config.propagation == "synchronous":
        adjacency = typed_adjacency(batch.edge_index, batch.edge_type, batch.edge_weight,
                                    batch.num_nodes)
        batch.adjacency_crow = adjacency.crow_indices()
        batch.adjacency_col = adjacency.col_indices()
        batch.adjacency_weight = adjacency.values()
    return batch, requests


def _check_supported(graphs: Sequence[ArchitectureGraph], op_index: dict[str, int]) -> None:
    for g in graphs:
        unknown = sorted({n.op for n in g.nodes} - op_index.keys())
        if unknown:
            raise UnsupportedArchitectureError(
                f"this GHN was trained without the op(s) {unknown}; retrain it to predict them")


def _host_tensor(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # Non-blocking, from pageable memory: the driver stages the values at once and the host
    # goes on; a blocking copy would wait for every kernel queued before it.
    return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)


FIRST_VOCABULARY = frozenset(OP_NAMES[:35])
"""The ops of ``nas-graph/1``'s first vocabulary (``input`` to ``select_token``); the ops of real
models were appended after them."""


def _op_embedding(ops: Sequence[str], hidden: int) -> nn.Embedding:
    """The initial op embedding: rows of the first vocabulary from the global random stream, as
    ``nn.Embedding`` draws them; rows of later ops from a generator seeded by their index, so
    appending ops changes no other initial value of a new GHN."""
    first = [i for i, op in enumerate(ops) if op in FIRST_VOCABULARY]
    weight = torch.empty(len(ops), hidden)
    weight[first] = torch.randn(len(first), hidden)
    for i, op in enumerate(ops):
        if op not in FIRST_VOCABULARY:
            seed = OP_NAMES.index(op) if op in OP_NAMES else i
            weight[i] = torch.randn(hidden, generator=torch.Generator().manual_seed(seed))
    return nn.Embedding(len(ops), hidden, _weight=weight)


def _matrix_dims(r: ParameterRequest) -> tuple[int, int]:
    """``(out, in)`` of a matrix-like parameter: a conv's channels, else its leading axes
    together and its last axis."""
    if r.kind in ("conv", "patch"):
        return r.shape[0], r.shape[1]
    return math.prod(r.shape[:-1]), r.shape[-1]


def _kernel_of(r: ParameterRequest) -> tuple[int, int]:
    """``(kh, kw)`` of a convolution's kernel: ``(1, k)`` for a 1-D one, the trailing axes
    folded into two for more; ``(1, 1)`` for other parameters."""
    if r.kind not in ("conv", "patch"):
        return 1, 1
    kernel = r.shape[2:]
    if len(kernel) < 2:
        return 1, kernel[0] if kernel else 1
    return math.prod(kernel[:-1]), kernel[-1]


def _fit_grid(codes: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """Centre crop of a ``K x K`` code grid to ``kh x kw``, resizing axes longer than ``K``."""
    k = codes.shape[-1]
    if kh > k or kw > k:
        codes = F.interpolate(codes, size=(max(kh, k), max(kw, k)), mode="bilinear",
                              align_corners=True)
    top = (codes.shape[-2] - kh) // 2
    left = (codes.shape[-1] - kw) // 2
    return codes[..., top:top + kh, left:left + kw]


@functools.lru_cache(maxsize=64)  # int8: a 2048 x 2048 pattern is 4 MiB
def tile_signs(out_ch: int, in_ch: int, block_out: int, block_in: int,
               device: torch.device) -> torch.Tensor:
    """The ``(out_ch, in_ch)`` pattern of signs that makes the tiles of a tiled tensor differ.

    ``sign[o, i] = a(o, i // block_in) * b(i, o // block_out)`` with ``a(o, 0) = b(i, 0) = 1``, so
    the first tile is the predicted block itself, tile ``(0, q)`` flips the block's rows by a
    pattern of its own and tile ``(p, 0)`` its columns. Output ``o`` of a layer over many inputs
    then sees a signed sum of the input's chunks (a random projection) rather than their plain
    sum, and the channels of a wide layer are no longer copies. The signs come from an integer
    hash of the indices, so every process, device and version of torch computes the same ones.
    """
    o = torch.arange(out_ch, dtype=torch.int64)[:, None]
    i = torch.arange(in_ch, dtype=torch.int64)[None, :]
    q, p = i // block_in, o // block_out
    a = torch.where(q == 0, 1, _hash_sign(o, q, 0x9E3779B1))
    b = torch.where(p == 0, 1, _hash_sign(i, p, 0x85EBCA77))
    return (a * b).to(device=device, dtype=torch.int8)


def _hash_sign(x: torch.Tensor, y: torch.Tensor, salt: int) -> torch.Tensor:
    """``+1`` or ``-1`` from a 32-bit multiplicative hash of the index pair ``(x, y)``."""
    h = (x * 0x27D4EB2F + y * 0x165667B1 + salt) & 0xFFFFFFFF
    h = ((h ^ (h >> 15)) * 0x2C1B3C6D) & 0xFFFFFFFF
    return 1 - 2 * ((h >> 13) & 1)


def _tile(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Slice ``t`` to ``shape`` where it is larger, repeat it cyclically where it is smaller.

    The repeat is one broadcast copy into the output viewed as ``(r0, d0, r1, d1, ...)`` (3x
    faster than ``Tensor.repeat``, which dominated a ResNet-50's 23.5 M predicted values); a
    shape that is not a whole number of tiles is cut from the next whole number, then made
    contiguous.
    """
    t = t[tuple(slice(0, min(s, d)) for s, d in zip(shape, t.shape, strict=True))]
    reps = [math.ceil(s / d) for s, d in zip(shape, t.shape, strict=True)]
    if all(r == 1 for r in reps):
        return t
    interleaved = [x for r, d in zip(reps, t.shape, strict=True) for x in (r, d)]
    out = t.new_empty([r * d for r, d in zip(reps, t.shape, strict=True)])
    source = t.reshape([x for d in t.shape for x in (1, d)]).expand(interleaved)
    out.view(interleaved).copy_(source)
    if list(out.shape) != list(shape):
        out = out[tuple(slice(0, s) for s in shape)].contiguous()
    return out
