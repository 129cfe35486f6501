"""Scoring networks whose parameters were predicted by a GHN.

Batch norm is the subtle part. GHN-2 evaluates with batch statistics (``"batch"`` mode: each
batch is normalised by its own statistics). A network handed to users must instead work in
``eval()`` mode, so ``"recalibrated"`` mode re-estimates the running statistics on a few
training batches (a cumulative average, ``momentum=None``) and then evaluates in eval mode.

A network without batch norm has no statistics to re-estimate, and GHN-predicted weights leave
its signal to die out layer by layer: every output ends up the same near-constant vector (chance
accuracy, as GHN-2 also reports for BN-free networks). :func:`recalibrate` gives such a network
the data-dependent rescaling of Krähenbühl et al. (2016) and LSUV (Mishkin & Matas, 2016)
instead: each convolution's and linear layer's output is centred and scaled to unit variance per
channel on a training batch, folded into its weight and bias. The predicted weights' directions,
which carry what the GHN knows, are kept; only their per-channel scale and offset are set from
data, which is what batch-norm recalibration does for networks that have batch norm.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from nas_service.data import TaskData

from .protocol import RECALIBRATION_BATCH_SIZE, RECALIBRATION_BATCHES, BatchNormMode

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)
_DEAD_CHANNEL_STD = 1e-5
"""A channel whose output varies less than this on the batch is only centred, not scaled: its
scale cannot be read off the batch, and dividing by ~0 would blow up on other inputs."""


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


def has_batch_norm(net: nn.Module) -> bool:
    return any(isinstance(m, _BN_TYPES) for m in net.modules())


@torch.no_grad()
def normalize_activations(net: nn.Module, x: torch.Tensor) -> nn.Module:
    """Centres and scales every ``Conv2d`` and ``Linear`` output of ``net`` to zero mean and
    unit variance per channel on the batch ``x``, folded into the layers' weights and biases
    (a layer without bias is only scaled). One forward pass: each layer is rescaled as the pass
    reaches it, and passes its rescaled output on, so the layers after it are measured on what
    they will see. A module called more than once per pass is rescaled at its first call.
    Leaves ``net`` in eval mode."""
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    done: set[nn.Module] = set()

    def rescale(module: nn.Module, _inputs: object, out: torch.Tensor) -> torch.Tensor | None:
        if module in done or not isinstance(out, torch.Tensor) or not out.is_floating_point():
            return None
        done.add(module)
        out_channels = module.weight.shape[0]
        # Channels are dim 1 of a convolution's (B, C, H, W) output and the last dim of a linear
        # layer's (..., C) output, or of a patch embedding's (B, T, C) tokens.
        channel_dim = 1 if isinstance(module, nn.Conv2d) and out.dim() == 4 else out.dim() - 1
        if out.shape[channel_dim] != out_channels:
            return None  # an output this function cannot read channels off: left as predicted
        dims = [d for d in range(out.dim()) if d != channel_dim]
        # Without a bias there is nothing to centre with: only the scale is set.
        mean = out.mean(dims) if module.bias is not None else out.new_zeros(out_channels)
        std = out.std(dims)
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            return None
        std = torch.where(std > _DEAD_CHANNEL_STD, std, torch.ones_like(std))
        module.weight.div_(std.view(-1, *([1] * (module.weight.dim() - 1))))
        if module.bias is not None:
            module.bias.sub_(mean).div_(std)
        shape = [1] * out.dim()
        shape[channel_dim] = -1
        return (out - mean.view(shape)) / std.view(shape)

    hooks = [m.register_forward_hook(rescale) for m in layers]
    try:
        net.eval()
        net(x)
    finally:
        for h in hooks:
            h.remove()
    return net


def recalibration_batches(task: TaskData, device: torch.device | str, *,
                          batches: int = RECALIBRATION_BATCHES,
                          batch_size: int = RECALIBRATION_BATCH_SIZE) -> list[torch.Tensor]:
    """The training batches a score recalibrates on: the first ``batches`` of the task's
    training split shuffled with seed 0, normalised, on ``device``. Fixed, so that the service's
    scores, the library's and the evaluation's all report what a user of the network gets."""
    out: list[torch.Tensor] = []
    for x, _ in task.batches("train", batch_size, shuffle=True, seed=0, device=device):
        if len(out) == batches:
            break
        out.append(x)
    return out


def recalibrate(net: nn.Module, batches: Sequence[torch.Tensor]) -> nn.Module:
    """What the ``"recalibrated"`` score does to a network with predicted weights: batch-norm
    statistics re-estimated on ``batches`` (:func:`recalibrate_batch_norm`) or, for a network
    without batch norm, its activations normalised on the first batch
    (:func:`normalize_activations`). Leaves ``net`` in eval mode."""
    if has_batch_norm(net) or not batches:
        return recalibrate_batch_norm(net, batches)
    return normalize_activations(net, batches[0])


@torch.no_grad()
def accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             bn_mode: BatchNormMode = "recalibrated", batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``net`` on ``(images, labels)``.

    ``"batch"`` normalises each batch by its own statistics (dropout stays off);
    ``"recalibrated"`` assumes :func:`recalibrate` was called and uses eval mode.
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
