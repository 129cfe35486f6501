"""Zero-cost proxies: what a user could rank architectures by instead of a GHN's score.

Each scores a network at its random initialisation from one or two minibatches, no training
(formulas of the reference code: SamsungLabs/zero-cost-nas for ``grad_norm`` and ``synflow``,
BayesWatch/nas-without-training for ``naswot``, SLDGroup/ZiCo for ``zico``). Higher is taken to
mean better for every one. They are the baselines the GHN's ranking is compared with
(``docs/evaluation.md``); the service does not use them.

- ``grad_norm``: :math:`\\sum_l \\lVert \\partial L / \\partial W_l \\rVert_2` over convolution
  and linear weights, cross-entropy on one batch.
- ``synflow``: with batch norm off, every parameter replaced by its absolute value, float64 and an
  all-ones input, :math:`R = \\sum \\text{output}`; the score is
  :math:`\\sum_l \\sum |W_l \\odot \\partial R / \\partial W_l|`.
- ``naswot``: the binary codes :math:`c` of which inputs of each activation are positive, over a
  batch; :math:`K = \\sum_{\\text{activations}} c c^\\top + (1 - c)(1 - c)^\\top`; the score is
  :math:`\\log |\\det K|`.
- ``zico``: gradients of two batches; per layer :math:`\\log \\sum \\text{mean}|g| /
  \\text{std}(g)` over the layer's weights (mean and standard deviation across the batches),
  summed over layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from copy import deepcopy as _copy

import torch
import torch.nn.functional as F
from torch import nn

PROXIES = ("grad_norm", "synflow", "naswot", "zico")

_WEIGHTED = (nn.Conv2d, nn.Linear)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh,
                nn.Sigmoid, nn.Hardswish, nn.Hardsigmoid)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def _weighted(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, _WEIGHTED)]


def grad_norm(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
              copy: bool = True) -> float:
    """With ``copy=False`` the gradients are taken on ``net`` itself (left in train mode, with
    its ``.grad`` set): no second copy of a large network."""
    net = (_copy(net) if copy else net).train()
    net.zero_grad()
    F.cross_entropy(net(images), labels).backward()
    return weight_grad_norm(net)


def weight_grad_norm(net: nn.Module) -> float:
    """:math:`\\sum_l \\lVert \\partial L / \\partial W_l \\rVert_2` over ``net``'s convolution and
    linear weights, from the gradients their ``.grad`` holds."""
    return float(sum(m.weight.grad.norm() for m in _weighted(net) if m.weight.grad is not None))


def synflow(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    net = _copy(net).double()
    for m in net.modules():
        if isinstance(m, _BN):  # batch norm off: the identity, so the signal is the weights'
            m.reset_running_stats()
    net.eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    net.zero_grad()
    ones = torch.ones((1, *images.shape[1:]), dtype=torch.float64, device=images.device)
    net(ones).sum().backward()
    return float(sum((m.weight * m.weight.grad).abs().sum() for m in _weighted(net)
                     if m.weight.grad is not None))


def naswot(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    net = _copy(net).train()
    n = len(images)
    kernel = torch.zeros(n, n, dtype=torch.float64, device=images.device)

    def record(_module: nn.Module, inputs: tuple, _out: torch.Tensor) -> None:
        nonlocal kernel
        codes = (inputs[0].detach().reshape(n, -1) > 0).double()
        kernel += codes @ codes.T + (1 - codes) @ (1 - codes).T

    hooks = [m.register_forward_hook(record) for m in net.modules()
             if isinstance(m, _ACTIVATIONS)]
    try:
        with torch.no_grad():
            net(images)
    finally:
        for h in hooks:
            h.remove()
    sign, logdet = torch.linalg.slogdet(kernel)
    return float(logdet) if sign != 0 else -math.inf


def zico(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    net = _copy(net).train()
    layers = _weighted(net)
    grads: list[list[torch.Tensor]] = [[] for _ in layers]
    for xb, yb in zip(images.chunk(2), labels.chunk(2), strict=True):
        net.zero_grad()
        F.cross_entropy(net(xb), yb).backward()
        for i, m in enumerate(layers):
            if m.weight.grad is not None:
                grads[i].append(m.weight.grad.detach().reshape(-1).clone())
    score = 0.0
    for g in grads:
        if len(g) < 2:
            continue
        stacked = torch.stack(g)  # (batches, weights)
        std = stacked.std(0)
        keep = std > 0
        ratio = (stacked.abs().mean(0)[keep] / std[keep]).sum()
        if ratio > 0:
            score += float(torch.log(ratio))
    return score


_FUNCTIONS: dict[str, Callable[[nn.Module, torch.Tensor, torch.Tensor], float]] = {
    "grad_norm": grad_norm, "synflow": synflow, "naswot": naswot, "zico": zico}


def proxy_scores(net: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 proxies: tuple[str, ...] = PROXIES) -> dict[str, float]:
    """Every proxy of ``proxies`` for ``net`` (left unchanged: each works on a copy) on one batch
    of training ``images`` and ``labels`` (64 in the reference code for ``grad_norm``, 128 for
    ``naswot``; ``zico`` splits the batch in two). A proxy that fails or is not finite is
    ``nan``."""
    out = {}
    for name in proxies:
        try:
            value = _FUNCTIONS[name](net, images, labels)
        except (RuntimeError, ValueError):
            value = math.nan
        out[name] = value if math.isfinite(value) else math.nan
    return out
