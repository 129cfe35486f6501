"""Truncated BPTT for the character language model, bits per character, gradient flow.

- :func:`batch_streams` cuts a token sequence into ``B`` contiguous streams, read ``bptt``
  steps at a time by :func:`windows`; the state is carried from one window to the next and
  detached between them (truncated backpropagation through time).
- :func:`bits_per_character`: mean cross-entropy in bits,
  :math:`-\\frac{1}{N}\\sum \\log_2 p(w_{t+1} \\mid w_{\\le t})`.
- :func:`train_steps` and :func:`evaluate_bpc`: the optimisation and evaluation loops (Adam,
  gradient-norm clipping, a step or wall-clock budget; the caller draws any progress bar
  through ``on_step``).
- :func:`gradient_flow`: :math:`\\lVert \\partial L_T / \\partial h_t \\rVert` for every
  ``t < T``, the measurement behind Suarez's claim that RHNs keep gradients alive over time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .model import CharLanguageModel, ModelState, detach_state

__all__ = ["TrainStats", "batch_streams", "bits_per_character", "evaluate_bpc",
           "gradient_flow", "train_steps", "windows"]

LN2 = math.log(2.0)


def bits_per_character(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in bits: ``logits: (..., V)``, ``targets: (...)`` -> scalar."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)) / LN2


def batch_streams(tokens: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``tokens: (N,)`` -> ``(N // B, B)``: column ``b`` is the ``b``-th contiguous slice of
    the text (the tail that does not fill a row is dropped)."""
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
    rows = tokens.numel() // batch_size
    if rows < 2:
        raise ValueError(f"{tokens.numel()} tokens are too few for {batch_size} streams")
    return tokens[:rows * batch_size].view(batch_size, rows).t().long()


def windows(streams: torch.Tensor, bptt: int,
            start: int = 0) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(position, inputs, targets)`` windows of ``(≤ bptt, B)``, targets shifted by one."""
    for i in range(start, streams.shape[0] - 1, bptt):
        n = min(bptt, streams.shape[0] - 1 - i)
        yield i, streams[i:i + n], streams[i + 1:i + 1 + n]


@dataclass
class TrainStats:
    steps: int
    tokens: int
    seconds: float
    train_bpc: float
    """Mean training bpc of the last ``min(steps, 50)`` steps."""

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


def train_steps(model: CharLanguageModel, streams: torch.Tensor, *, bptt: int,
                optimizer: torch.optim.Optimizer, max_steps: int | None = None,
                max_seconds: float | None = None, clip: float = 1.0,
                on_step: Callable[[int, float], None] | None = None) -> TrainStats:
    """Trains on ``streams`` (from :func:`batch_streams`), window after window with carried
    state, for ``max_steps`` windows or ``max_seconds`` of wall clock, whichever ends first
    (at least one must be given); epochs wrap around with a fresh state. ``on_step(step,
    bpc)`` is called after every optimiser step."""
    if max_steps is None and max_seconds is None:
        raise ValueError("give max_steps or max_seconds")
    model.train()
    B = streams.shape[1]
    device = streams.device
    state: ModelState = model.initial_state(B, device)
    step, tokens, recent = 0, 0, []
    start = time.perf_counter()
    while True:
        for _, x, y in windows(streams, bptt):
            logits, state = model(x, state)
            loss = bits_per_character(logits, y)
            optimizer.zero_grad(set_to_none=True)
            (loss * LN2).backward()  # nats: the usual scale for Adam's learning rate
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            state = detach_state(state)
            step += 1
            tokens += x.numel()
            recent = (recent + [loss.item()])[-50:]
            if on_step is not None:
                on_step(step, recent[-1])
            elapsed = time.perf_counter() - start
            if (max_steps is not None and step >= max_steps) or \
                    (max_seconds is not None and elapsed >= max_seconds):
                return TrainStats(step, tokens, elapsed, sum(recent) / len(recent))
        state = model.initial_state(B, device)


@torch.no_grad()
def evaluate_bpc(model: CharLanguageModel, tokens: torch.Tensor, *, bptt: int = 200,
                 batch_size: int = 32, max_tokens: int | None = None) -> float:
    """Bits per character of ``tokens: (N,)`` (its first ``max_tokens``), read as
    ``batch_size`` streams with carried state; every predicted character counts equally."""
    model.eval()
    if max_tokens is not None:
        tokens = tokens[:max_tokens]
    streams = batch_streams(tokens, batch_size)
    state = model.initial_state(batch_size, streams.device)
    total, count = 0.0, 0
    for _, x, y in windows(streams, bptt):
        logits, state = model(x, state)
        total += bits_per_character(logits, y).item() * y.numel()
        count += y.numel()
    return total / count


def gradient_flow(model: CharLanguageModel, streams: torch.Tensor, *, length: int = 100,
                  batches: int = 4) -> list[float]:
    """:math:`\\lVert \\partial L_T / \\partial h_{T-k} \\rVert_2` for ``k = 1 .. length - 1``
    (list index ``k - 1``): :math:`L_T` is the loss of the prediction at the last of ``length``
    steps, :math:`h_{T-k}` the top layer's hidden state ``k`` steps earlier (all streams of the
    batch at once); averaged over ``batches`` windows of ``streams``. The model runs one step
    at a time, so :math:`h_t` is the very tensor the next step reads (for ``nn.LSTM`` too) and
    the gradient is the whole one, through the recurrence. Dropout is off."""
    if length < 2:
        raise ValueError(f"length must be at least 2, got {length}")
    model.eval()
    B = streams.shape[1]
    norms = torch.zeros(length - 1)
    used = 0
    for _, x, y in windows(streams, length):
        if x.shape[0] < length or used == batches:
            break
        state = model.initial_state(B, streams.device)
        hidden: list[torch.Tensor] = []
        logits = None
        with torch.enable_grad():
            for t in range(length):
                logits, state = model(x[t:t + 1], state)
                h = model.top_hidden(state)
                h.retain_grad()
                hidden.append(h)
            assert logits is not None
            loss = bits_per_character(logits, y[length - 1:length])
            model.zero_grad(set_to_none=True)
            loss.backward()
        # hidden[length - 1 - k] is k steps before the prediction
        norms += torch.tensor([hidden[length - 1 - k].grad.norm().item()  # type: ignore[union-attr]
                               for k in range(1, length)])
        used += 1
    if used == 0:
        raise ValueError(f"streams of {streams.shape[0]} steps are shorter than length={length}")
    model.zero_grad(set_to_none=True)
    return (norms / used).tolist()
