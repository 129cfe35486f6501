"""Scoring networks whose parameters were predicted by a GHN.

Batch norm is the subtle part. GHN-2 evaluates with batch statistics (``"batch"`` mode: each
batch is normalised by its own statistics). A network handed to users must instead work in
``eval()`` mode, so ``"recalibrated"`` mode re-estimates the running statistics on a few
training batches (a cumulative average, ``momentum=None``) and then evaluates in eval mode.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn

BatchNormMode = Literal["batch", "recalibrated"]

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


def load_parameters(net: nn.Module, params: dict[str, torch.Tensor]) -> nn.Module:
    """Copies predicted tensors into ``net`` (names from ``ArchitectureGraph.parameter_shapes``)."""
    with torch.no_grad():
        own = dict(net.named_parameters())
        missing = own.keys() - params.keys()
        if missing:
            raise KeyError(f"no predicted value for parameters {sorted(missing)[:5]}")
        for name, value in params.items():
            own[name].copy_(value.detach().to(own[name].device, own[name].dtype))
    return net


@torch.no_grad()
def recalibrate_batch_norm(net: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Re-estimates every batch-norm layer's running statistics on ``batches``.

    Leaves ``net`` in eval mode; a net without batch norm is only switched to eval mode.
    """
    bns = [m for m in net.modules() if isinstance(m, _BN_TYPES) and m.track_running_stats]
    if bns:
        saved = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over all recalibration batches
        net.train()
        for x in batches:
            net(x)
        for m, momentum in zip(bns, saved, strict=True):
            m.momentum = momentum
    return net.eval()


@torch.no_grad()
def accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             bn_mode: BatchNormMode = "recalibrated", batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``net`` on ``(images, labels)``.

    ``"batch"`` normalises each batch by its own statistics (dropout stays off);
    ``"recalibrated"`` assumes :func:`recalibrate_batch_norm` was called and uses eval mode.
    """
    net.eval()
    if bn_mode == "batch":
        for m in net.modules():
            if isinstance(m, _BN_TYPES):
                m.train()
    correct = 0
    try:
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size]
            y = labels[start:start + batch_size]
            correct += (net(x).argmax(dim=1) == y).sum().item()
    finally:
        net.eval()
    return correct / max(len(images), 1)
