"""Regularisation baselines on a directly trained network: EWC, online EWC and SI.

Each is a :class:`WeightPenalty` that a :class:`~nas_service.continual.learners.
RegularizedLearner` adds to the task loss; with no penalty the learner is plain sequential
fine-tuning. ``θ`` below is every parameter of the network (all heads included: an earlier
task's head is touched only through the penalty).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from .errors import ContinualError
from .tasks import ContinualTask

__all__ = [
    "EWC",
    "OnlineEWC",
    "SynapticIntelligence",
    "WeightPenalty",
    "diagonal_fisher",
]

Tensors = dict[str, torch.Tensor]


def _detached(model: nn.Module) -> Tensors:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _non_negative(name: str, value: float) -> float:
    if not value >= 0:
        raise ContinualError(f"{name} must be >= 0, got {value!r}")
    return float(value)


def diagonal_fisher(model: nn.Module, task_index: int, task: ContinualTask, samples: int,
                    generator: torch.Generator, batch_size: int = 100) -> Tensors:
    """The diagonal of the Fisher information of ``model``'s head ``task_index`` on ``task``:

        F_i = E_{x ~ train, ŷ ~ p_θ(·|x)} [ (∂ log p_θ(ŷ|x) / ∂θ_i)² ]

    estimated on ``samples`` training images with labels sampled from the model's own
    predictive distribution (the true Fisher, as EWC defines it, not the empirical one).
    Per-example gradients come from ``vmap(grad(...))``. Returns ``{name: shape of θ}``.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ContinualError(f"samples must be a positive int, got {samples!r}")
    params = _detached(model)

    def log_likelihood(p: Tensors, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, p, (x[None], task_index))  # (1, classes)
        return -F.cross_entropy(logits, y[None])

    per_example = vmap(grad(log_likelihood), in_dims=(None, 0, 0))
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    done = 0
    while done < samples:
        x, _ = task.sample(min(batch_size, samples - done), generator)
        with torch.no_grad():
            probs = F.softmax(model(x, task_index), dim=-1)
        y = torch.multinomial(probs, 1, generator=generator)[:, 0]
        for n, g in per_example(params, x, y).items():  # g: (B, *shape)
            total[n] += g.pow(2).sum(0)
        done += len(x)
    return {n: t / samples for n, t in total.items()}


class WeightPenalty:
    """A penalty on the weights of a directly trained network. The learner calls
    ``begin_task``, then per step ``loss`` (added to the task loss), ``before_step`` (the
    gradients are final) and ``after_step`` (the optimizer has moved θ), then ``end_task``."""

    name = "penalty"

    def begin_task(self, model: nn.Module) -> None:
        pass

    def loss(self, model: nn.Module) -> torch.Tensor:
        raise NotImplementedError

    def before_step(self, model: nn.Module) -> None:
        pass

    def after_step(self, model: nn.Module) -> None:
        pass

    def end_task(self, model: nn.Module, task_index: int, task: ContinualTask,
                 generator: torch.Generator) -> None:
        pass


class EWC(WeightPenalty):
    """Elastic weight consolidation (Kirkpatrick et al., PNAS 2017), one penalty per task:

        L = L_task + (λ/2) · Σ_{t'<t} Σ_i F_{t',i} (θ_i − θ*_{t',i})²

    with ``F_t'`` the diagonal Fisher (:func:`diagonal_fisher`) and ``θ*_t'`` the weights after
    task ``t'``.
    """

    name = "ewc"

    def __init__(self, strength: float, fisher_samples: int = 600) -> None:
        self.strength = _non_negative("strength", strength)
        self.fisher_samples = fisher_samples
        self.anchors: list[tuple[Tensors, Tensors]] = []  # (F_t', θ*_t') per earlier task

    def loss(self, model: nn.Module) -> torch.Tensor:
        total = torch.zeros(())
        for fisher, anchor in self.anchors:
            for n, p in model.named_parameters():
                total = total + (fisher[n] * (p - anchor[n]).pow(2)).sum()
        return 0.5 * self.strength * total

    def end_task(self, model: nn.Module, task_index: int, task: ContinualTask,
                 generator: torch.Generator) -> None:
        fisher = diagonal_fisher(model, task_index, task, self.fisher_samples, generator)
        self.anchors.append((fisher, _detached(model)))


class OnlineEWC(WeightPenalty):
    """Online EWC (Schwarz et al., ICML 2018): one running Fisher and one anchor,

        F̃_t = γ F̃_{t−1} + F_t,   L = L_task + (λ/2) · Σ_i F̃_{t−1,i} (θ_i − θ*_{t−1,i})²
    """

    name = "online-ewc"

    def __init__(self, strength: float, gamma: float = 1.0, fisher_samples: int = 600) -> None:
        self.strength = _non_negative("strength", strength)
        if not 0 <= gamma <= 1:
            raise ContinualError(f"gamma must be in [0, 1], got {gamma!r}")
        self.gamma = float(gamma)
        self.fisher_samples = fisher_samples
        self.fisher: Tensors | None = None
        self.anchor: Tensors | None = None

    def loss(self, model: nn.Module) -> torch.Tensor:
        if self.fisher is None or self.anchor is None:
            return torch.zeros(())
        total = sum((self.fisher[n] * (p - self.anchor[n]).pow(2)).sum()
                    for n, p in model.named_parameters())
        return 0.5 * self.strength * total

    def end_task(self, model: nn.Module, task_index: int, task: ContinualTask,
                 generator: torch.Generator) -> None:
        fisher = diagonal_fisher(model, task_index, task, self.fisher_samples, generator)
        if self.fisher is not None:
            fisher = {n: self.gamma * self.fisher[n] + f for n, f in fisher.items()}
        self.fisher, self.anchor = fisher, _detached(model)


class SynapticIntelligence(WeightPenalty):
    """Synaptic intelligence (Zenke et al., ICML 2017).

    During task ``t`` each weight's contribution to the loss decrease is summed along the path,
    ``ω_i += −g_i · Δθ_i`` per step (``g``: the gradient the optimizer used); at the end of the
    task ``Ω_i += max(0, ω_i) / ((θ_i(end) − θ_i(start))² + ξ)`` and the anchor moves to
    ``θ(end)`` (an Adam step is not along ``−g``, so a weight's ``ω_i`` can come out negative;
    it is taken as no importance rather than as a reward for moving):

        L = L_task + c · Σ_i Ω_i (θ_i − θ*_i)²
    """

    name = "si"

    def __init__(self, strength: float, damping: float = 0.1) -> None:
        self.strength = _non_negative("strength", strength)
        if not damping > 0:
            raise ContinualError(f"damping must be positive, got {damping!r}")
        self.damping = float(damping)
        self.importance: Tensors | None = None  # Ω
        self.anchor: Tensors | None = None  # θ*
        self._start: Tensors = {}
        self._path: Tensors = {}  # ω
        self._before: Tensors = {}
        self._grads: Tensors = {}

    def begin_task(self, model: nn.Module) -> None:
        self._start = _detached(model)
        self._path = {n: torch.zeros_like(p) for n, p in self._start.items()}

    def loss(self, model: nn.Module) -> torch.Tensor:
        if self.importance is None or self.anchor is None:
            return torch.zeros(())
        total = sum((self.importance[n] * (p - self.anchor[n]).pow(2)).sum()
                    for n, p in model.named_parameters())
        return self.strength * total

    def before_step(self, model: nn.Module) -> None:
        self._before = _detached(model)
        self._grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()
                       if p.grad is not None}

    def after_step(self, model: nn.Module) -> None:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in self._grads:
                    self._path[n] -= self._grads[n] * (p - self._before[n])

    def end_task(self, model: nn.Module, task_index: int, task: ContinualTask,
                 generator: torch.Generator) -> None:
        end = _detached(model)
        step = {n: self._path[n].clamp_min(0) / ((end[n] - self._start[n]).pow(2) + self.damping)
                for n in end}
        if self.importance is not None:
            step = {n: self.importance[n] + s for n, s in step.items()}
        self.importance, self.anchor = step, end
