"""A few SGD steps from the default initialisation: a ranking signal that holds out of the GHN's
spaces.

The GHN's score ranks architectures of its own training distribution well and those of families
it never saw poorly; a network's accuracy after a handful of plain SGD steps from PyTorch's
default initialisation ranks both (``bench/finetune_bench.py``; Kendall τ against trained
accuracy in ``nas_service/assets/short-training.json``, which that benchmark writes and
:func:`~.protocol.short_training_description` reads). A search job may rank its candidates by it
(``ranking: {"method": "short-training"}``), each candidate still getting its GHN-predicted
checkpoint and score beside it.

The protocol is the ground truth's SGD (:func:`nas_service.training.evaluate.sgd_train`: the
network built under ``torch.manual_seed(0)``, nesterov momentum 0.9, weight decay 5e-4 on every
parameter, batches of 128, gradient norm clipped at 5, the learning rate 0.05 decayed to 0 by a
cosine over the steps), cut to ``steps`` batches of the first epoch's seeded shuffle of the
first 8,000 training images; then the network is recalibrated on the score's recalibration
batches (batch-norm statistics; activations of a network without batch norm) and its accuracy
taken on the score's validation images. Each step is :func:`sgd_step`, which ``sgd_train``
takes too; the service holds only the images those steps read, not the training split
(:func:`training_batches`). ``tests/test_short_training.py`` checks that it gives what
``sgd_train`` gives for the same steps.

Always in the default (contiguous) memory layout, never channels-last: the backward pass of
torch 2.13's oneDNN on channels-last tensors gave wrong gradients and hung a worker
(:func:`~.trainability.initial_grad_norm` tells the story).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nas_service.data import TaskData, TaskSpec
from nas_service.data.loader import normalize
from nas_service.graph import ArchitectureGraph, to_module

from .evaluation import accuracy, recalibrate
from .protocol import (
    SGD_BATCH_SIZE,
    SGD_EPOCH_IMAGES,
    SGD_FINITE_CHECK_EVERY,
    SGD_GRAD_CLIP,
    SGD_LR,
    SGD_MOMENTUM,
    SGD_WEIGHT_DECAY,
)
from .trainability import even_batch_size

SHORT_TRAINING_SEED = 0
"""Seeds the network's initialisation, its dropout and the shuffle of the training images."""


@dataclass(frozen=True)
class TrainingBatches:
    """The training images a short training of up to ``len(images)`` steps reads, in order."""

    images: list[torch.Tensor]  # uint8 (B, C, H, W), one per step
    labels: list[torch.Tensor]  # (B,)

    @property
    def batch_size(self) -> int:
        return len(self.labels[0]) if self.labels else 0


def training_batches(task: TaskData, steps: int, device: torch.device | str = "cpu"
                     ) -> TrainingBatches:
    """The batches of ``steps`` steps of :func:`~nas_service.training.evaluate.sgd_train` on
    ``task`` at the ground truth's epoch of :data:`SGD_EPOCH_IMAGES` images: each epoch a fresh
    permutation of the training split drawn from a generator seeded with
    :data:`SHORT_TRAINING_SEED`, cut to the epoch's images and to full batches."""
    train = task.split("train")
    per_epoch = min(len(train), SGD_EPOCH_IMAGES)
    batch = even_batch_size(min(SGD_BATCH_SIZE, per_epoch), minimum=1)
    per_epoch_steps = per_epoch // batch
    shuffle = torch.Generator().manual_seed(SHORT_TRAINING_SEED)
    images: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    while len(images) < steps:
        order = torch.randperm(len(train), generator=shuffle)[:per_epoch]
        for b in range(min(per_epoch_steps, steps - len(images))):
            pick = order[b * batch:(b + 1) * batch]
            images.append(train.images.index_select(0, pick).to(device))
            labels.append(train.labels.index_select(0, pick).to(device))
    return TrainingBatches(images, labels)


def short_training_accuracy(graph: ArchitectureGraph, batches: TrainingBatches, spec: TaskSpec,
                            recalibration: Sequence[torch.Tensor], val_images: torch.Tensor,
                            val_labels: torch.Tensor, *, steps: int, lr: float = SGD_LR,
                            eval_batch_size: int = 1000, train_batch_size: int | None = None,
                            device: torch.device | str = "cpu") -> float:
    """``graph``'s accuracy on ``(val_images, val_labels)`` after ``steps`` SGD steps on the
    first ``steps`` of ``batches`` from its seeded default initialisation, recalibrated on
    ``recalibration`` (the module docstring gives the protocol). Images in the default layout;
    the caller's random state is left as it was.

    ``train_batch_size`` below the batches' size accumulates each step's gradient over parts of
    that many images (what admission control asks for when a whole batch's backward pass does
    not fit the memory budget): the same step without batch norm, an approximation with it
    (each part normalised by its own statistics)."""
    if not 0 <= steps <= len(batches.labels):
        raise ValueError(f"{steps} steps, but batches for {len(batches.labels)}")
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(SHORT_TRAINING_SEED)
        net = to_module(graph, device=device)
        params = [p for p in net.parameters() if p.requires_grad]
        if steps and params:
            with torch.enable_grad():
                _train(net, params, batches, spec, steps, lr,
                       train_batch_size or batches.batch_size)
        net.eval()
        with torch.no_grad():
            recalibrate(net, [x.contiguous() for x in recalibration])
            return accuracy(net, val_images.contiguous(), val_labels,
                            batch_size=eval_batch_size)


def _train(net: torch.nn.Module, params: list[torch.nn.Parameter], batches: TrainingBatches,
           spec: TaskSpec, steps: int, lr: float, part: int) -> None:
    """``sgd_train``'s steps (see the module docstring), each over parts of ``part`` images."""
    opt = sgd_optimizer(params, lr)
    finite = torch.ones((), dtype=torch.bool, device=batches.labels[0].device)
    net.train()
    for step in range(steps):
        x, y = normalize(batches.images[step], spec), batches.labels[step]
        if not sgd_step(net, params, opt, x, y, step=step, total=steps, lr=lr, finite=finite,
                        part=part):
            return


def sgd_optimizer(params: list[torch.nn.Parameter], lr: float, momentum: float = SGD_MOMENTUM,
                  weight_decay: float = SGD_WEIGHT_DECAY) -> torch.optim.SGD:
    """The SGD protocol's optimiser: nesterov momentum, weight decay on every parameter."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True,
                           weight_decay=weight_decay)


def sgd_step(net: torch.nn.Module, params: list[torch.nn.Parameter], opt: torch.optim.Optimizer,
             x: torch.Tensor, y: torch.Tensor, *, step: int, total: int, lr: float,
             finite: torch.Tensor, part: int | None = None) -> bool:
    """Step ``step`` of ``total`` of the SGD protocol, the one of
    :func:`~nas_service.training.evaluate.sgd_train` and of the short training: the learning
    rate ``lr`` on a cosine down to 0, cross-entropy on the normalised images ``x`` and labels
    ``y``, the gradient norm clipped at :data:`SGD_GRAD_CLIP`, the update. ``finite`` (a boolean
    tensor, updated in place) gathers whether every loss so far was finite; it is read every
    :data:`SGD_FINITE_CHECK_EVERY` steps (reading it waits for the device), and once it is
    false the step returns ``False`` without updating: the parameters are lost anyway.
    ``part`` below the batch's size accumulates the gradient of the batch's mean loss over
    parts of that many images."""
    for group in opt.param_groups:
        group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / total))
    check = step % SGD_FINITE_CHECK_EVERY == 0
    if part is None or part >= len(y):
        loss = F.cross_entropy(net(x), y)
        finite &= torch.isfinite(loss)
        if check and not finite:
            return False
        opt.zero_grad(set_to_none=True)
        loss.backward()
    else:
        opt.zero_grad(set_to_none=True)
        for start in range(0, len(y), part):
            xs, ys = x[start:start + part], y[start:start + part]
            loss = F.cross_entropy(net(xs), ys) * (len(ys) / len(y))
            finite &= torch.isfinite(loss)
            loss.backward()
        if check and not finite:
            return False
    torch.nn.utils.clip_grad_norm_(params, SGD_GRAD_CLIP)
    opt.step()
    return True


@dataclass(frozen=True)
class ShortTrainingResult:
    """What :meth:`~.scorer.ArchitectureScorer.short_training` gives a search job."""

    accuracy: float
    steps: int
    seconds: float
