"""Recurrent sequence models: LSTM, recurrent highway networks (RHN), HyperLSTM and the
recurrent highway hypernetwork (hyper-RHN), and the character-level language model built from
them (docs/sequence.md).

Quick use::

    from nas_service.sequence import CharLanguageModel, CharModelConfig

    model = CharLanguageModel(CharModelConfig("hyper-rhn", vocab_size=97, hidden_size=256))
    logits, state = model(tokens)  # tokens: (T, B) int64 -> logits: (T, B, 97)

Torch only: no data loading here (the corpus is ``nas_service.data.characters``).
"""

from .cells import (
    GroupLayerNorm,
    HyperLSTMCell,
    HyperRHNCell,
    HyperScales,
    LSTMLayer,
    RHNCell,
    State,
)
from .model import (
    KINDS,
    CharLanguageModel,
    CharModelConfig,
    ModelState,
    count_parameters,
    detach_state,
    hidden_size_for_parameters,
)
from .training import (
    TrainStats,
    batch_streams,
    bits_per_character,
    evaluate_bpc,
    gradient_flow,
    train_steps,
    windows,
)

__all__ = [
    "KINDS",
    "CharLanguageModel",
    "CharModelConfig",
    "GroupLayerNorm",
    "HyperLSTMCell",
    "HyperRHNCell",
    "HyperScales",
    "LSTMLayer",
    "ModelState",
    "RHNCell",
    "State",
    "TrainStats",
    "batch_streams",
    "bits_per_character",
    "count_parameters",
    "detach_state",
    "evaluate_bpc",
    "gradient_flow",
    "hidden_size_for_parameters",
    "train_steps",
    "windows",
]
