"""Will a network train at all? Its gradient norm at initialisation, a feature of the ranking head.

The GHN's score says how well an architecture's wiring works with predicted parameters; it
cannot say whether plain SGD from PyTorch's default initialisation gets anywhere. Networks that
do not train (deep stacks without normalisation, saturating activations, branches that vanish)
are scored like any other, up to 75 % on Fashion-MNIST, yet stay near chance when trained
(``bench/results/generalization_bench.json``: 9 of 86 trained networks). Their gradients at
initialisation give them away: eight of the nine have gradient norms (:mod:`~.proxies`'s
``grad_norm``) among the nine smallest of all 86.

The protocol is fixed so that a value measured offline (``bench/generalization_bench.py``) and
one measured by the service are the same number: the network built with ``torch.manual_seed(0)``
(default initialisation), in train mode (batch norm on the batch's statistics, dropout drawn from
the same seeded generator), cross-entropy on :data:`GRAD_NORM_IMAGES` training images picked by a
seeded permutation of the training split, the sum of the convolution and linear weights'
gradient norms. The global random state is left as it was.

32 images, not the 128 the offline zero-cost proxies read: on the 86 trained networks of
``bench/generalization_bench.py`` the gradient on the first 32 of those 128 ranks as well (Kendall
τ against trained accuracy, 128 / 32 images: 0.39 / 0.41 on the trained families, 0.49 / 0.51 on
the held-out ones, 0.72 / 0.74 on hand-written CNNs) at a quarter of the backward pass, which is
what a cache miss and a search candidate pay for it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nas_service.data import TaskData
from nas_service.graph import ArchitectureGraph, to_module

from .proxies import grad_norm, weight_grad_norm

GRAD_NORM_IMAGES = 32
"""Training images of the gradient: the first of the batch the offline proxies read
(:data:`~nas_service.training.generalization.PROXY_BATCH`)."""
GRAD_NORM_SEED = 0
"""Seeds both the pick of the images and the network's initialisation."""


def even_batch_size(size: int, minimum: int = 2) -> int:
    """``size`` rounded down to an even number, at least ``minimum``: the batch a backward pass
    may run on (see :func:`initial_grad_norm` for why never an odd one)."""
    return max(minimum, size // 2 * 2)


def grad_norm_batch(task: TaskData, device: torch.device | str = "cpu",
                    images: int = GRAD_NORM_IMAGES) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images (normalised) and labels of ``task`` the gradient is taken on, on
    ``device``: the first ``images`` of a permutation of the training split seeded with
    :data:`GRAD_NORM_SEED`. A longer batch (the offline proxies') begins with the gradient's."""
    split = task.train
    generator = torch.Generator().manual_seed(GRAD_NORM_SEED)
    pick = torch.randperm(len(split), generator=generator)[:images]
    return task.normalize(split.images[pick].to(device)), split.labels[pick].to(device)


def initial_grad_norm(graph: ArchitectureGraph, images: torch.Tensor, labels: torch.Tensor,
                      *, batch_size: int | None = None) -> float:
    """``graph``'s gradient norm at its seeded default initialisation on ``images`` and
    ``labels`` (:func:`grad_norm_batch`), on their device. ``nan`` when it is not finite (the
    ranking head takes that as a network that does not train). ``batch_size`` below the number
    of images accumulates the gradient of the mean loss over batches of that many (what
    admission control asks for when the whole batch's backward pass does not fit the memory
    budget): exact without batch norm, an approximation with it (each batch is normalised with
    its own statistics).

    Always in the default (contiguous) layout, never channels-last, though the scorer's forward
    passes run channels-last on a CPU. In channels-last, torch 2.13's CPU backward pass runs
    oneDNN's AVX2 1x1-convolution weight-gradient kernel on the ``nhwc`` layout, which on two
    threads gave wrong gradients in some ``cells`` networks (a 1x1 convolution's gradient 100x
    too large: a norm of 11.7 where the contiguous pass and a single thread give 7.6,
    ``tests/test_trainability.py``) and hung a search worker for good (one OpenMP thread
    spinning inside that kernel, the other waiting at its barrier). In the default layout
    oneDNN runs the kernel's blocked-layout variant, whose result on two threads matches one
    thread's.

    An odd ``batch_size`` is rounded down to an even one (at least 2): a backward pass over an
    odd number of images corrupted the heap of that build (``cells`` networks, batches of 3, 61,
    63: ``corrupted size vs. prev_size``, the process aborted), never an even one in the same
    runs."""
    even = len(labels) // 2 * 2  # see above: never an odd batch
    if even == 0:
        return math.nan
    images, labels, device = images[:even], labels[:even], images.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            torch.enable_grad():
        torch.manual_seed(GRAD_NORM_SEED)
        net = to_module(graph, device=device)
        if batch_size is None or batch_size >= len(labels):
            value = grad_norm(net, images, labels, copy=False)
        else:
            value = _accumulated_grad_norm(net, images, labels, even_batch_size(batch_size))
    return value if math.isfinite(value) else math.nan


def _accumulated_grad_norm(net: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                           batch_size: int) -> float:
    """:func:`~.proxies.grad_norm` of the mean loss over all of ``images``, its gradient summed
    over batches of ``batch_size`` (each batch's mean loss weighted by its share)."""
    net.train()
    net.zero_grad()
    for start in range(0, len(labels), batch_size):
        x, y = images[start:start + batch_size], labels[start:start + batch_size]
        (F.cross_entropy(net(x), y) * (len(y) / len(labels))).backward()
    return weight_grad_norm(net)
