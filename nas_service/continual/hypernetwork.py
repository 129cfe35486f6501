"""Task-conditioned hypernetworks for continual learning (von Oswald et al., ICLR 2020).

A hypernetwork ``h`` maps a learned task embedding ``e_t`` to every weight of a target network,
``Θ_target(t) = h(e_t, Θ)``; the target network then runs with those weights through
:func:`torch.func.functional_call`. Learning task ``t`` trains ``Θ`` and ``e_t`` on

    L_t = L_task(t) + (β / (t−1)) · Σ_{t'<t} ‖ h(e_t', Θ) − h(e_t', Θ*) ‖²

where ``Θ*`` are the hypernetwork's weights before task ``t`` and the earlier embeddings
``e_t'`` are frozen (:func:`output_regularizer`). The hypernetwork only has to rehearse its own
outputs for ``t−1`` embedding vectors: no earlier data is kept.

Two hypernetworks, as hypnettorch's ``HMLP`` and ``ChunkedHMLP``:

* :class:`HyperMLP` (full): ``e_t → MLP → all P target weights`` in one output layer
  (``hidden[-1] · P`` weights: larger than the target network);
* :class:`ChunkedHyperMLP`: the same MLP is applied to ``[e_t, c_i]`` for ``n = ⌈P/chunk⌉``
  learned chunk embeddings ``c_i`` and emits ``chunk`` weights each; the concatenated chunks,
  cut to ``P``, are the target weights. Its size does not grow with ``P`` beyond the chunk
  embeddings, which is what makes the paper's "compressive regime" (fewer trainable parameters
  than the target network) possible.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from .errors import ContinualError

__all__ = [
    "BETA_DEFAULTS",
    "ChunkedHyperMLP",
    "HyperMLP",
    "TaskHypernetwork",
    "WeightLayout",
    "output_regularizer",
    "snapshot_outputs",
]

#: β of the output regulariser in the paper's reference code, per benchmark.
BETA_DEFAULTS: dict[str, float] = {"split": 0.01, "permuted": 0.1, "cifar": 0.05}


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ContinualError(f"{name} must be a positive int, got {value!r}")
    return value


class WeightLayout:
    """Where each target tensor lives in a flat weight vector of length ``numel``.

    Shapes:
        ``unflatten(flat)``: ``(..., numel)`` → ``{name: (..., *shape)}`` (views, no copy).
    """

    def __init__(self, shapes: Mapping[str, Sequence[int]]) -> None:
        if not shapes:
            raise ContinualError("the target network has no parameters to generate")
        self.shapes = {name: torch.Size(shape) for name, shape in shapes.items()}
        self.sizes = [s.numel() for s in self.shapes.values()]
        if min(self.sizes) < 1:
            raise ContinualError("every target tensor must hold at least one value")
        self.numel = sum(self.sizes)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        if flat.shape[-1] != self.numel:
            raise ContinualError(f"expected {self.numel} weights in the last dimension, "
                                 f"got {flat.shape[-1]}")
        lead = flat.shape[:-1]
        parts = flat.split(self.sizes, dim=-1)
        return {name: part.reshape(*lead, *shape)
                for (name, shape), part in zip(self.shapes.items(), parts, strict=True)}


def _mlp(widths: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class TaskHypernetwork(nn.Module):
    """What both hypernetworks share: the weight layout, the task embeddings, and turning a
    task into a ``{name: tensor}`` dict for :func:`torch.func.functional_call`.

    Args:
        target_shapes: ``{parameter name: shape}`` of the target network
            (:func:`~nas_service.continual.targets.parameter_shapes`).
        embedding_dim: size ``E`` of a task embedding.
        embedding_std: task embeddings start as ``N(0, embedding_std²)``.

    Shapes:
        ``forward(embeddings)``: ``(T, E)`` → flat target weights ``(T, P)``, one row per task,
        all tasks in one batched pass.
    """

    def __init__(self, target_shapes: Mapping[str, Sequence[int]], embedding_dim: int,
                 embedding_std: float = 1.0) -> None:
        super().__init__()
        self.layout = WeightLayout(target_shapes)
        self.embedding_dim = _positive("embedding_dim", embedding_dim)
        if not embedding_std > 0:
            raise ContinualError(f"embedding_std must be positive, got {embedding_std!r}")
        self.embedding_std = float(embedding_std)
        self.task_embeddings = nn.ParameterList()

    @property
    def num_tasks(self) -> int:
        return len(self.task_embeddings)

    def add_task(self, generator: torch.Generator | None = None) -> int:
        """Append a fresh embedding ``e_t ~ N(0, embedding_std²)`` and return its task index."""
        e = torch.randn(self.embedding_dim, generator=generator) * self.embedding_std
        self.task_embeddings.append(nn.Parameter(e))
        return self.num_tasks - 1

    def _check_tasks(self, tasks: Sequence[int]) -> list[int]:
        tasks = [int(t) for t in tasks]
        for t in tasks:
            if not 0 <= t < self.num_tasks:
                raise ContinualError(f"unknown task {t}: the hypernetwork has {self.num_tasks} "
                                     "task embeddings (add_task adds one)")
        return tasks

    def embeddings(self, tasks: Sequence[int]) -> torch.Tensor:
        """The embeddings of ``tasks`` stacked: ``(len(tasks), E)``."""
        tasks = self._check_tasks(tasks)
        if not tasks:
            return torch.empty(0, self.embedding_dim)
        return torch.stack([self.task_embeddings[t] for t in tasks])

    def weights(self, task: int) -> dict[str, torch.Tensor]:
        """The target network's weights for ``task``: ``{name: shape}`` as in the layout."""
        flat = self(self.embeddings([task]))[0]
        return self.layout.unflatten(flat)

    def hypernetwork_parameters(self) -> Iterator[nn.Parameter]:
        """``Θ``: every parameter except the task embeddings (chunk embeddings included)."""
        embedding_ids = {id(p) for p in self.task_embeddings}
        return (p for p in self.parameters() if id(p) not in embedding_ids)

    def parameter_count(self) -> dict[str, int]:
        """Trainable numbers: ``hypernetwork`` (Θ), ``task_embeddings`` (all tasks so far),
        ``target`` (P, one target network), and ``compression`` = (Θ + embeddings) / P."""
        theta = sum(p.numel() for p in self.hypernetwork_parameters())
        embeddings = self.num_tasks * self.embedding_dim
        return {"hypernetwork": theta, "task_embeddings": embeddings,
                "target": self.layout.numel,
                "compression": (theta + embeddings) / self.layout.numel}


class HyperMLP(TaskHypernetwork):
    """Full hypernetwork (hypnettorch's ``HMLP``): ``e_t → MLP(hidden) → P`` weights.

    ``h(e) = W_L · ReLU(… ReLU(W_1 e + b_1) …) + b_L`` with ``W_L ∈ R^{P × hidden[-1]}``.

    Shapes:
        ``forward(embeddings)``: ``(T, E)`` → ``(T, P)``.
    """

    def __init__(self, target_shapes: Mapping[str, Sequence[int]], *, embedding_dim: int = 32,
                 hidden: Sequence[int] = (50, 50), embedding_std: float = 1.0) -> None:
        super().__init__(target_shapes, embedding_dim, embedding_std)
        widths = [self.embedding_dim, *(_positive("hidden width", h) for h in hidden),
                  self.layout.numel]
        self.net = _mlp(widths)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.net(embeddings)  # (T, P)


class ChunkedHyperMLP(TaskHypernetwork):
    """Chunked hypernetwork (hypnettorch's ``ChunkedHMLP``).

    With ``n = ⌈P / chunk_size⌉`` learned chunk embeddings ``c_1..c_n ∈ R^{C}``,

        h(e) = concat_i MLP([e, c_i])[: P],   MLP: R^{E+C} → R^{chunk_size}

    so ``Θ`` = the MLP plus the ``n · C`` chunk-embedding values, shared by every task.

    Shapes:
        ``forward(embeddings)``: ``(T, E)`` → ``[e, c_i]`` ``(T, n, E + C)`` → MLP
        ``(T, n, chunk_size)`` → ``(T, n · chunk_size)`` → ``(T, P)``.
    """

    def __init__(self, target_shapes: Mapping[str, Sequence[int]], *, chunk_size: int = 800,
                 embedding_dim: int = 32, chunk_embedding_dim: int = 32,
                 hidden: Sequence[int] = (64, 64), embedding_std: float = 1.0) -> None:
        super().__init__(target_shapes, embedding_dim, embedding_std)
        self.chunk_size = _positive("chunk_size", chunk_size)
        self.num_chunks = math.ceil(self.layout.numel / self.chunk_size)
        chunk_dim = _positive("chunk_embedding_dim", chunk_embedding_dim)
        self.chunk_embeddings = nn.Parameter(
            torch.randn(self.num_chunks, chunk_dim) * self.embedding_std)
        widths = [self.embedding_dim + chunk_dim, *(_positive("hidden width", h) for h in hidden),
                  self.chunk_size]
        self.net = _mlp(widths)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        t = embeddings.shape[0]
        inputs = torch.cat([embeddings[:, None, :].expand(t, self.num_chunks, -1),
                            self.chunk_embeddings[None].expand(t, -1, -1)], dim=-1)
        chunks = self.net(inputs)  # (T, n, chunk_size)
        return chunks.reshape(t, self.num_chunks * self.chunk_size)[:, : self.layout.numel]  # (T, P)


@torch.no_grad()
def snapshot_outputs(hnet: TaskHypernetwork, tasks: Sequence[int]) -> torch.Tensor:
    """``h(e_t', Θ*)`` for ``t' ∈ tasks``, detached: the regulariser's targets, taken once
    before a new task is learned. Shape ``(len(tasks), P)``."""
    return hnet(hnet.embeddings(tasks)).detach()


def output_regularizer(hnet: TaskHypernetwork, tasks: Sequence[int], targets: torch.Tensor,
                       beta: float) -> torch.Tensor:
    """The output regulariser ``(β / |tasks|) · Σ_{t' ∈ tasks} ‖h(e_t', Θ) − targets[t']‖²``.

    All earlier tasks go through the hypernetwork in one batched pass. The earlier embeddings
    are used detached (they stay frozen, as in the paper); gradients flow into ``Θ`` only.
    ``targets`` ``(len(tasks), P)`` come from :func:`snapshot_outputs`. With no earlier task the
    result is a zero scalar.
    """
    if not beta >= 0:
        raise ContinualError(f"beta must be >= 0, got {beta!r}")
    tasks = list(tasks)
    if targets.shape != (len(tasks), hnet.layout.numel):
        raise ContinualError(f"targets must have shape ({len(tasks)}, {hnet.layout.numel}), "
                             f"got {tuple(targets.shape)}")
    if not tasks:
        return torch.zeros(())
    current = hnet(hnet.embeddings(tasks).detach())  # (T', P)
    return beta / len(tasks) * (current - targets).pow(2).sum()
