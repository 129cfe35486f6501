"""Fine-tuning a network from its GHN-predicted weights, against the same network trained from
PyTorch's default initialisation: the practical use of predicted parameters that GHN-3 reports
(Knyazev et al., 2023: ResNet-50 from predicted weights plus one epoch beats random
initialisation plus one epoch, 43.7 % vs 18.2 % top-1 on ImageNet).

Both runs use :func:`~nas_service.training.evaluate.sgd_train`'s protocol with the same seed
(the same batches in the same order), and are scored after every epoch on the same validation
images in eval mode; epoch 0 is before any training (the predicted network's score, and chance
for the random one).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nas_service.data import TaskData
from nas_service.graph import ArchitectureGraph
from nas_service.scoring import accuracy

from .evaluate import SGD_LR, evaluation_tensors, sgd_train


@dataclass
class FinetuneReport:
    """Validation accuracy after each epoch (index 0: before training) of both starts."""

    epochs: int
    images_per_epoch: int
    eval_images: int
    lr: float
    predicted: list[float] = field(default_factory=list)
    random_init: list[float] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "images_per_epoch": self.images_per_epoch,
                "eval_images": self.eval_images, "lr": self.lr,
                "accuracy": {"predicted": self.predicted, "random_init": self.random_init},
                "seconds": self.seconds}


def finetune_against_random_init(predicted: nn.Module, graph: ArchitectureGraph,
                                 task_data: TaskData, *, epochs: int = 1,
                                 max_images: int | None = None, eval_images: int | None = 2000,
                                 lr: float = SGD_LR, seed: int = 0, progress: bool = False,
                                 device: str | torch.device | None = None) -> FinetuneReport:
    """Trains ``predicted`` (``graph``'s network with predicted weights, e.g. a downloaded
    checkpoint's ``module()``) and ``graph`` from random initialisation for ``epochs`` epochs of
    ``max_images`` training images each (all when ``None``); returns the validation accuracy of
    both on the first ``eval_images`` images after every epoch."""
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    dev = next(predicted.parameters()).device if device is None else torch.device(device)
    x, y = evaluation_tensors(task_data, "val", eval_images, dev)
    per_epoch = len(task_data.split("train"))
    report = FinetuneReport(epochs=epochs, images_per_epoch=min(per_epoch, max_images or per_epoch),
                            eval_images=len(y), lr=lr)
    for name, start, scores in (("predicted", predicted, report.predicted),
                                ("random_init", graph, report.random_init)):
        if isinstance(start, nn.Module):
            scores.append(accuracy(start.to(dev), x, y, batch_size=250))
        started = time.perf_counter()
        net = sgd_train(start, task_data, epochs=epochs, max_images=max_images, lr=lr,
                        seed=seed, device=dev, progress=progress,
                        on_epoch=lambda _epoch, net, scores=scores: scores.append(
                            accuracy(net, x, y, batch_size=250)))
        report.seconds[name] = time.perf_counter() - started
        if not isinstance(start, nn.Module):
            # Before training, the seeded random network: sgd_train builds it under the seed.
            untrained = sgd_train(start, task_data, epochs=0, seed=seed, device=dev)
            scores.insert(0, accuracy(untrained, x, y, batch_size=250))
        del net
    return report
