r"""Scoring language models: bits per character of next-character prediction.

A character task's (``gcide-chars``) networks read ``T`` token ids and return logits for the
next token at every position (graphs with ``task="next_token"``). Their score is the mean
cross-entropy, in bits, of predicting character :math:`t + 1` from characters
:math:`\le t` (the network's window, from a zero state):

.. math:: \mathrm{bpc} = \frac{1}{N T} \sum_{n, t} -\log_2 p(w_{n, t + 1} \mid w_{n, \le t})

over the first ``N`` windows of the fixed validation split, cut by position into consecutive,
non-overlapping windows of ``T + 1`` characters (:func:`validation_windows`). Lower is better; a
uniform guess over ``V`` symbols scores :math:`\log_2 V` (6.49 for the 90 of ``gcide-chars``).
Each window starts from a zero state, so a score is a property of the graph and its parameters
alone (no state carried across windows, unlike :func:`nas_service.sequence.evaluate_bpc`,
which is why a score is higher than the bpc of the same model evaluated on the whole split).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nas_service.ghn import GraphHyperNetwork
from nas_service.graph import ArchitectureGraph, to_module

from .evaluation import load_parameters
from .protocol import BPC_NAME

__all__ = ["BPC_NAME", "EVAL_BATCH_SIZE", "bits_per_character", "next_token_loss",
           "predicted_bpc", "training_windows", "validation_windows"]
EVAL_BATCH_SIZE = 64
"""Windows per forward pass."""


def validation_windows(tokens: torch.Tensor, steps: int, count: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)``, each ``(count, steps)`` int64: window ``n`` is
    ``tokens[n * steps : (n + 1) * steps + 1]``, the inputs its first ``steps`` characters and
    the targets its last ``steps``. Fewer windows when ``tokens`` is too short."""
    count = min(count, (len(tokens) - 1) // steps)
    if count < 1:
        raise ValueError(f"{len(tokens)} tokens hold no window of {steps} + 1 characters")
    flat = tokens[:count * steps + 1].long()
    inputs = flat[:-1].view(count, steps)
    targets = flat[1:].view(count, steps)
    return inputs.contiguous(), targets.contiguous()


def training_windows(tokens: torch.Tensor, steps: int, batch: int, generator: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` windows of ``steps + 1`` characters at random positions of ``tokens`` (drawn
    from ``generator``): ``(inputs, targets)``, each ``(batch, steps)`` int64."""
    starts = torch.randint(0, len(tokens) - steps - 1, (batch,), generator=generator)
    index = starts[:, None] + torch.arange(steps + 1)
    windows = tokens[index].long()
    return windows[:, :-1], windows[:, 1:]


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in nats of ``logits (B, T, V)`` against ``targets (B, T)``."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


@torch.no_grad()
def bits_per_character(net: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *,
                       batch_size: int = EVAL_BATCH_SIZE) -> float:
    """Bits per character of ``net`` (eval mode; restored afterwards) on ``(inputs, targets)``
    windows (:func:`validation_windows`). A network whose logits are not finite scores
    ``inf``."""
    was_training = net.training
    net.eval()
    total = 0.0
    try:
        for start in range(0, len(inputs), batch_size):
            logits = net(inputs[start:start + batch_size])
            y = targets[start:start + batch_size]
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                           y.reshape(-1), reduction="sum"))
    finally:
        net.train(was_training)
    bpc = total / targets.numel() / math.log(2)
    return bpc if math.isfinite(bpc) else math.inf


def predicted_bpc(ghn: GraphHyperNetwork, graphs: Sequence[ArchitectureGraph],
                  inputs: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """The validation bpc of each of ``graphs`` with the parameters ``ghn`` predicts (one GHN
    forward pass for all of them)."""
    with torch.no_grad():
        predicted = ghn.predict(list(graphs))
    out = []
    for graph, params in zip(graphs, predicted, strict=True):
        net = load_parameters(to_module(graph, initialize=False, device=inputs.device), params)
        out.append(bits_per_character(net, inputs, targets))
    return out
