r"""The character-level language model: embedding -> stack of recurrent layers -> softmax.

.. math::
    e_t = \mathrm{Dropout}(E[w_t]), \quad
    y^{(k)}_t = \mathrm{Layer}_k(y^{(k-1)}_t, \text{state}_k), \quad
    p(w_{t+1} \mid w_{\le t}) = \mathrm{softmax}(V\,\mathrm{Dropout}(y^{(K)}_t) + c)

with :math:`y^{(0)} = e` and ``Layer`` one of :mod:`nas_service.sequence.cells` (``kind``).

Shapes: ``tokens: (T, B)`` int64 (time-major) ``-> logits: (T, B, vocab_size)``; ``state`` is
one tuple per layer (see the cells), carried from one window of truncated BPTT to the next.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from .cells import HyperLSTMCell, HyperRHNCell, LSTMLayer, RHNCell, State

KINDS = ("lstm", "rhn", "hyper-lstm", "hyper-rhn")

__all__ = ["KINDS", "CharLanguageModel", "CharModelConfig", "ModelState", "count_parameters",
           "detach_state",
           "hidden_size_for_parameters"]

ModelState = list[State]


@dataclass(frozen=True)
class CharModelConfig:
    kind: str
    """``lstm`` (``nn.LSTM``), ``rhn``, ``hyper-lstm`` or ``hyper-rhn``."""
    vocab_size: int
    hidden_size: int
    num_layers: int = 1
    depth: int = 5
    """RHN recurrence depth ``L`` (``rhn``, ``hyper-rhn``)."""
    hyper_size: int = 64
    """Width of the hypernetwork (``hyper-lstm``, ``hyper-rhn``)."""
    hyper_embedding_size: int = 16
    """Size of each hypernetwork embedding ``z`` (``HyperScales``)."""
    embedding_size: int = 64
    dropout: float = 0.0
    """Dropout on the embeddings, between layers and before the softmax."""
    recurrent_dropout: float = 0.0
    """Variational dropout on the recurrent state (custom cells only)."""
    layer_norm: bool = False
    """Layer norm of the pre-activations (custom cells only)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("vocab_size", "hidden_size", "num_layers", "depth", "hyper_size",
                     "hyper_embedding_size", "embedding_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("dropout", "recurrent_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.kind == "lstm" and (self.layer_norm or self.recurrent_dropout):
            raise ValueError("the lstm kind is nn.LSTM, which has no layer norm and no "
                             "recurrent dropout; use hyper-lstm with those options")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _layer(cfg: CharModelConfig, input_size: int) -> nn.Module:
    H = cfg.hidden_size
    opts = {"layer_norm": cfg.layer_norm, "recurrent_dropout": cfg.recurrent_dropout}
    hyper = {"hyper_embedding_size": cfg.hyper_embedding_size, **opts}
    if cfg.kind == "lstm":
        return LSTMLayer(input_size, H)
    if cfg.kind == "rhn":
        return RHNCell(input_size, H, cfg.depth, **opts)
    if cfg.kind == "hyper-lstm":
        return HyperLSTMCell(input_size, H, cfg.hyper_size, **hyper)
    return HyperRHNCell(input_size, H, cfg.depth, cfg.hyper_size, **hyper)


class CharLanguageModel(nn.Module):
    """See the module docstring. ``forward(tokens, state) -> (logits, state)``."""

    def __init__(self, config: CharModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_size)
        sizes = [config.embedding_size] + [config.hidden_size] * config.num_layers
        self.layers = nn.ModuleList(_layer(config, sizes[k]) for k in range(config.num_layers))
        self.dropout = nn.Dropout(config.dropout)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> ModelState:
        return [layer.initial_state(batch, device) for layer in self.layers]

    def top_hidden(self, state: ModelState) -> torch.Tensor:
        """The last layer's hidden state ``h_t``: ``(B, H)``."""
        return self.layers[-1].output_state(state[-1])

    def forward(self, tokens: torch.Tensor,
                state: ModelState | None = None) -> tuple[torch.Tensor, ModelState]:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (T, B), got shape {tuple(tokens.shape)}")
        if state is None:
            state = self.initial_state(tokens.shape[1], tokens.device)
        y = self.dropout(self.embedding(tokens))  # (T, B, E)
        new_state = []
        for layer, layer_state in zip(self.layers, state, strict=True):
            y, s = layer(y, layer_state)  # (T, B, H)
            y = self.dropout(y)
            new_state.append(s)
        return self.decoder(y), new_state  # (T, B, V)


def detach_state(state: ModelState) -> ModelState:
    """Cuts the graph between two windows of truncated BPTT, keeping the values."""
    return [tuple(t.detach() for t in s) for s in state]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def hidden_size_for_parameters(config: CharModelConfig, target: int) -> CharModelConfig:
    """``config`` with the largest ``hidden_size`` whose model has at most ``target``
    parameters (everything else fixed), so that models of different kinds can be compared at
    equal parameter counts. Raises ``ValueError`` when even ``hidden_size=1`` is too large."""

    def size(h: int) -> int:
        with torch.device("meta"):  # counts shapes without allocating
            return count_parameters(CharLanguageModel(replace(config, hidden_size=h)))

    if size(1) > target:
        raise ValueError(f"{config.kind}: {size(1)} parameters at hidden_size=1 already exceed "
                         f"the target {target}")
    lo, hi = 1, 2
    while size(hi) <= target:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # size(lo) <= target < size(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if size(mid) <= target else (lo, mid)
    return replace(config, hidden_size=lo)
