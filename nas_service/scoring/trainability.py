"""Will a network train at all? Its gradient norm at initialisation, a feature of the ranking head.

The GHN's score says how well an architecture's wiring works with predicted parameters; it
cannot say whether plain SGD from PyTorch's default initialisation gets anywhere. Networks that
do not train (deep stacks without normalisation, saturating activations, branches that vanish)
are scored like any other, 72-75 % on Fashion-MNIST, yet stay at chance when trained
(``bench/results/generalization_bench.json``: 6 of 62 trained networks). Their gradients at
initialisation give them away: ``grad_norm`` (:mod:`~.proxies`) gives five of the six the five
smallest values of all 62.

The protocol is fixed so that a value measured offline (``bench/generalization_bench.py``) and
one measured by the service are the same number: the network built with ``torch.manual_seed(0)``
(default initialisation), in train mode (batch norm on the batch's statistics, dropout drawn from
the same seeded generator), cross-entropy on :data:`GRAD_NORM_IMAGES` training images picked by a
seeded permutation of the training split, the sum of the convolution and linear weights'
gradient norms. The global random state is left as it was.
"""

from __future__ import annotations

import math

import torch

from nas_service.data import TaskData
from nas_service.graph import ArchitectureGraph, to_module

from .proxies import grad_norm

GRAD_NORM_IMAGES = 128
"""Training images of the gradient (the batch the offline proxies use, ``PROXY_BATCH``)."""
GRAD_NORM_SEED = 0
"""Seeds both the pick of the images and the network's initialisation."""


def grad_norm_batch(task: TaskData, device: torch.device | str = "cpu"
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The :data:`GRAD_NORM_IMAGES` training images (normalised) and labels of ``task`` the
    gradient is taken on, on ``device``: the first of a permutation of the training split seeded
    with :data:`GRAD_NORM_SEED`."""
    split = task.train
    generator = torch.Generator().manual_seed(GRAD_NORM_SEED)
    pick = torch.randperm(len(split), generator=generator)[:GRAD_NORM_IMAGES]
    return task.normalize(split.images[pick].to(device)), split.labels[pick].to(device)


def initial_grad_norm(graph: ArchitectureGraph, images: torch.Tensor, labels: torch.Tensor,
                      *, channels_last: bool = False) -> float:
    """``graph``'s gradient norm at its seeded default initialisation on ``images`` and
    ``labels`` (:func:`grad_norm_batch`), on their device. ``nan`` when it is not finite (the
    ranking head takes that as a network that does not train). ``channels_last`` runs it in
    that layout (1.7x faster on a CPU for the latency benchmark's small networks; the value moves
    in its last bits, which a ranking head's estimate does not notice)."""
    device = images.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            torch.enable_grad():
        torch.manual_seed(GRAD_NORM_SEED)
        net = to_module(graph, device=device)
        if channels_last and images.dim() == 4:
            net = net.to(memory_format=torch.channels_last)
            images = images.contiguous(memory_format=torch.channels_last)
        value = grad_norm(net, images, labels, copy=False)
    return value if math.isfinite(value) else math.nan
