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

The classifier is the weakest part of a predicted network. GHN-2's decoder tiles one bounded
block of weights over a tensor's input channels, so a classifier reading channels that come from
different layers (a DenseNet's concatenation, an Inception module's branches) repeats weights
meant for other channels, and its accuracy drops to chance while the features beneath it are
good (a linear probe on a predicted DenseNet's features reaches 78 %). :func:`fit_readout`
refits that last linear layer from the recalibration batch's labels by logistic regression on the
features the predicted network computes (a fixed L-BFGS budget): the score then measures the features
the GHN predicted, and a downloaded checkpoint carries the refitted classifier.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nas_service.data import TaskData
from nas_service.graph import GraphNetwork

from .protocol import RECALIBRATION_BATCH_SIZE, RECALIBRATION_BATCHES, BatchNormMode

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)
READOUT_BATCH_SIZE = 128
"""Images per forward pass of the readout's feature pass (:func:`classifier_of`)."""
READOUT_L2 = 1e-3
"""L2 penalty of :func:`fit_readout` on the standardised classifier weights (beside the mean
cross-entropy). Chosen on 26 tuning architectures (``cells``/``macro`` seeds 100-107 and
``families`` seeds 100-109, none of them in any other benchmark) from 1e-4, 1e-3 and 1e-2: mean
readout accuracy 73.1, 73.9 and 73.3 %, a least-squares (ridge) readout's at best 72.4 %
(``bench/readout_bench.py``)."""
READOUT_ITERATIONS = 100
"""L-BFGS iterations of :func:`fit_readout` (strong-Wolfe line search): a fixed budget, so that
a score does not depend on a tolerance; 0.1 s (median) on one CPU thread."""
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
    _normalize_activations(net, x)
    return net


def _normalize_activations(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """:func:`normalize_activations`; returns the network's output on ``x`` (rescaled as it went)."""
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

    # Prepended, so that other hooks on these layers (a readout probe) see the rescaled output.
    hooks = [m.register_forward_hook(rescale, prepend=True) for m in layers]
    try:
        net.eval()
        return net(x)
    finally:
        for h in hooks:
            h.remove()


def recalibration_batches(task: TaskData, device: torch.device | str, *,
                          batches: int = RECALIBRATION_BATCHES,
                          batch_size: int = RECALIBRATION_BATCH_SIZE
                          ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The ``(images, labels)`` training batches a score recalibrates on: the first ``batches``
    of the task's training split shuffled with seed 0, images normalised, on ``device``. Fixed,
    so that the service's scores, the library's and the evaluation's all report what a user of
    the network gets."""
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    for x, y in task.batches("train", batch_size, shuffle=True, seed=0, device=device):
        if len(out) == batches:
            break
        out.append((x, y))
    return out


class _ClassifierProbe:
    """Forward hooks on every ``Linear`` of a network that find, over one or more forward passes,
    the layer whose output is the network's output (its logits) and keep the features it reads.
    After each pass, :meth:`after_pass` drops the layers that did not produce that pass's logits
    (an unchanged copy of them counts: dropout in eval, identity); a layer called more than once
    per pass is not a classifier."""

    def __init__(self, net: nn.Module) -> None:
        self.linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
        self.candidates = set(self.linears)
        self.inputs: dict[nn.Module, list[torch.Tensor]] = {}
        self._last_output: dict[nn.Module, torch.Tensor] = {}
        self._passes = 0
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> _ClassifierProbe:
        self._hooks = [m.register_forward_hook(self._record) for m in self.linears]
        return self

    def __exit__(self, *_exc: object) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _record(self, module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        if isinstance(out, torch.Tensor) and args and isinstance(args[0], torch.Tensor) \
                and args[0].dim() == 2:
            self.inputs.setdefault(module, []).append(args[0])
            self._last_output[module] = out

    def after_pass(self, logits: torch.Tensor) -> bool:
        """Keeps the layers whose output was ``logits`` on this pass; whether any is left."""
        self._passes += 1
        self.candidates = {m for m in self.candidates if m in self._last_output
                           and len(self.inputs[m]) == self._passes
                           and self._last_output[m].shape == logits.shape
                           and torch.equal(self._last_output[m], logits)}
        self._last_output.clear()
        return bool(self.candidates)

    def found(self) -> tuple[nn.Linear, torch.Tensor] | None:
        """The classifier and the features it read on every pass, ``(N, in_features)``."""
        if not self.candidates or not self._passes:
            return None
        layer = next(m for m in reversed(self.linears) if m in self.candidates)
        return layer, torch.cat(self.inputs[layer])  # type: ignore[return-value]


@torch.no_grad()
def classifier_of(net: nn.Module, x: torch.Tensor, batch_size: int = READOUT_BATCH_SIZE
                  ) -> tuple[nn.Linear, torch.Tensor] | None:
    """The linear layer whose output is ``net``'s output on ``x`` (its logits), and the features
    it reads, ``(N, in_features)``; ``None`` when the output does not come straight from a
    linear layer (a pooled or otherwise transformed output). ``x`` runs in batches of
    ``batch_size`` (activations of a whole batch of 512 images fall out of cache)."""
    net.eval()
    with _ClassifierProbe(net) as probe:
        for start in range(0, len(x), batch_size):
            if not probe.after_pass(net(x[start:start + batch_size])):
                return None
    return probe.found()


@torch.no_grad()
def fit_readout(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                l2: float = READOUT_L2) -> nn.Linear | None:
    r"""Refits ``net``'s classifier (:func:`classifier_of`) to ``labels`` by L2-regularised
    multinomial logistic regression on the features it reads, and returns it; ``None`` (``net``
    unchanged) when ``net`` has no such classifier or its features are not finite.

    Features are standardised per column (:math:`Z`, ``N x d``); the weights minimise the mean
    cross-entropy of :math:`Z W + b` plus :math:`\lambda \lVert W \rVert^2`
    (:func:`_logistic_regression`), and the standardisation is folded back into the layer's
    weight and bias. Cross-entropy, not least squares, because a least-squares fit to one-hot
    targets spends its few degrees of freedom on matching the targets' 0/1 values rather than
    on separating classes: on classifiers of at most 32 features it lost 3 points on average
    (``bench/readout_bench.py``).
    """
    found = classifier_of(net, images)
    if found is None:
        return None
    return _fit_classifier(*found, labels, l2=l2)


def feature_standardisation(features: torch.Tensor, *, centre: bool = True
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-column ``(mean, std)`` the readout standardises ``features`` (``(N, d)``) with:
    the mean is zero when ``centre`` is off, and a column that does not vary (std below
    :data:`_DEAD_CHANNEL_STD`) keeps its scale (std 1)."""
    mean = features.mean(0) if centre else features.new_zeros(features.shape[1])
    std = features.std(0)
    return mean, torch.where(std > _DEAD_CHANNEL_STD, std, torch.ones_like(std))


def _fit_classifier(layer: nn.Linear, features: torch.Tensor, labels: torch.Tensor, *,
                    l2: float = READOUT_L2) -> nn.Linear | None:
    """:func:`fit_readout` on features already read (``(N, in_features)``, one per label)."""
    f = features.detach().double()
    if not torch.isfinite(f).all():
        return None
    # Without a bias there is nothing to fold the centring into: the features stay uncentred.
    mean, std = feature_standardisation(f, centre=layer.bias is not None)
    z = (f - mean) / std
    y = labels.long().clamp(0, layer.out_features - 1)
    with torch.enable_grad():
        w, b = _logistic_regression(z, y, layer.out_features, l2=l2,
                                    bias=layer.bias is not None)
    with torch.no_grad():
        # logits = ((f - mean) / std) @ w + b = f @ (w / std) + b - (mean / std) @ w
        layer.weight.copy_((w / std[:, None]).T.to(layer.weight.dtype))
        if layer.bias is not None:
            layer.bias.copy_((b - (mean / std) @ w).to(layer.bias.dtype))
    return layer


def _logistic_regression(z: torch.Tensor, y: torch.Tensor, classes: int, *, l2: float,
                         bias: bool, kernel_form: bool | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Weights ``(d, classes)`` and bias ``(classes,)`` minimising the mean cross-entropy of
    ``z @ w + b`` plus :math:`\lambda \lVert w \rVert^2`, by L-BFGS from zero
    (:data:`READOUT_ITERATIONS`, float64, deterministic).

    With more features than images (``d > N``) the minimiser lies in the span of the images
    (representer theorem), so the same problem is solved on ``N`` features: with the kernel
    :math:`K = z z^\top = U S U^\top`, the features :math:`\Phi = U S^{1/2}` have the same
    inner products as ``z``, a weight :math:`\beta` on them is the weight
    :math:`w = z^\top U S^{-1/2} \beta` on ``z`` with the same logits and the same norm. A
    25,088-wide flattened feature map then costs products of ``N x N`` matrices, not
    ``N x 25,088`` ones, and L-BFGS sees the primal problem's conditioning (optimising the
    coefficients of :math:`w = z^\top a` directly squares it, and 100 iterations fell short).
    ``kernel_form`` forces either form (``None``: the kernel form exactly when ``d > N``)."""
    n, d = z.shape
    if d > n if kernel_form is None else kernel_form:
        eigenvalues, vectors = torch.linalg.eigh(z @ z.T)
        keep = eigenvalues > eigenvalues.max().clamp_min(0) * 1e-10
        root = eigenvalues[keep].sqrt()
        beta, offset = _logistic_regression(vectors[:, keep] * root, y, classes, l2=l2,
                                            bias=bias, kernel_form=False)
        return z.T @ (vectors[:, keep] @ (beta / root[:, None])), offset
    coef = z.new_zeros(d, classes, requires_grad=True)
    offset = z.new_zeros(classes, requires_grad=bias)
    params = [coef, offset] if bias else [coef]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=READOUT_ITERATIONS, history_size=10,
                            line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ coef + offset, y) + l2 * (coef * coef).sum()
        loss.backward()
        return loss

    opt.step(objective)
    return coef.detach(), offset.detach()


def recalibrate(net: nn.Module, images: Sequence[torch.Tensor],
                labels: Sequence[torch.Tensor] | None = None, *,
                one_pass: bool = False) -> nn.Module:
    """What the ``"recalibrated"`` score does to a network with predicted weights: batch-norm
    statistics re-estimated on the batches ``images`` (:func:`recalibrate_batch_norm`) or, for a
    network without batch norm, its activations normalised on the first batch
    (:func:`normalize_activations`); then, when ``labels`` (one per image) are given, the
    classifier refitted on all the batches (:func:`fit_readout`). Leaves ``net`` in eval
    mode.

    ``one_pass`` (with labels): the classifier's features are read off the recalibration's own
    forward passes, one per batch, instead of a second pass over every batch in eval mode.
    With batch norm, each batch is normalised by its own statistics, whose average is what the
    network is recalibrated to, with dropout off; without batch norm, the features are the
    rescaled activations :func:`normalize_activations` passes on for the first batch and
    eval-mode passes for the others, what eval mode computes afterwards up to rounding. With a
    single batch the batch-norm features are the recalibrated network's eval-mode ones up to
    the unbiased variance's ``n / (n - 1)``: the service's cheap rungs read them so. With
    several, each batch's statistics differ from their average by sampling noise, which costs
    ranking quality: on the service's four batches it saves 31 % of the recalibration's time,
    and lowers Kendall tau against trained accuracy on each of four sets (by 0.05 on the 39
    ranked ``cells``/``macro`` networks, by 0.01 on three others; ``python
    bench/readout_pass_bench.py``), so full scores take the second pass. The network is
    evaluated in eval mode either way."""
    if one_pass and labels is not None and images:
        _recalibrate_in_one_pass(net, images, labels)
        return net.eval()
    if has_batch_norm(net) or not images:
        recalibrate_batch_norm(net, images)
    else:
        normalize_activations(net, images[0])
    if labels is not None and images:
        fit_readout(net, torch.cat(list(images)), torch.cat(list(labels)))
    return net.eval()


@torch.no_grad()
def _recalibrate_in_one_pass(net: nn.Module, images: Sequence[torch.Tensor],
                             labels: Sequence[torch.Tensor]) -> None:
    """:func:`recalibrate` with ``one_pass``: one forward pass over each batch of ``images``."""
    with _ClassifierProbe(net) as probe:
        bns = [m for m in net.modules() if isinstance(m, _BN_TYPES)]
        if bns:
            tracked = [m for m in bns if m.track_running_stats]
            saved = [m.momentum for m in tracked]
            for m in tracked:
                m.reset_running_stats()
                m.momentum = None  # cumulative average over all recalibration batches
            net.eval()
            for m in bns:
                m.train()  # only batch norm: dropout stays off, the features are the eval ones
            try:
                for x in images:  # every batch, classifier or not: the statistics need them
                    probe.after_pass(net(x))
            finally:
                for m, momentum in zip(tracked, saved, strict=True):
                    m.momentum = momentum
                net.eval()
        else:
            probe.after_pass(_normalize_activations(net, images[0]))
            for x in images[1:]:
                if not probe.after_pass(net(x)):
                    break  # no classifier to refit: the other batches have nothing to give
    found = probe.found()
    if found is not None:
        _fit_classifier(*found, torch.cat(list(labels)))


TIE_MARGIN = 1e-3
"""An image whose two largest logits lie within this fraction of its largest absolute logit is
a near tie for :func:`default_layout_accuracy`: the channels-last layout and batch norm folded
into convolutions move logits only in their last bits (about 1e-7 of their size in float32), so
only a near tie's prediction could flip; it is evaluated again as the plain network computes it."""


@torch.no_grad()
def default_layout_accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                            batch_size: int, fold_batch_norm: bool = True) -> tuple[float, int]:
    """:func:`accuracy` (eval mode) of ``net`` as PyTorch's default (NCHW) layout computes it,
    with the forward passes run faster: channels-last, which PyTorch's CPU convolutions run
    faster (a median 1.3x on small networks, ``bench/layout_bench.py``), and, for a
    :class:`~nas_service.graph.GraphNetwork` and ``fold_batch_norm``, with each batch norm that
    follows a convolution folded into it
    (:meth:`~nas_service.graph.GraphNetwork.with_batch_norm_folded`, a median 6-11 % less);
    returns ``(accuracy, images evaluated again)``.

    ``net`` and ``images`` may be in either layout. Both speed-ups change logits in their last
    bits only, so they can change a prediction only where the two largest logits (nearly) tie:
    every image within :data:`TIE_MARGIN` of a tie, or with a non-finite logit, is evaluated
    again with ``net`` itself in the default layout, in which this function leaves it. The
    result is what a user gets from the network's ``state_dict`` the plain way (``to_module``,
    ``load_state_dict``, :func:`accuracy`), which is what lets the service's scores run fast
    and still reproduce exactly from their checkpoints."""
    net.eval()
    net.to(memory_format=torch.channels_last)
    fast = (net.with_batch_norm_folded() if fold_batch_norm and isinstance(net, GraphNetwork)
            else net)
    correct = 0
    doubtful: list[torch.Tensor] = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = fast(x)
        hits = logits.argmax(dim=1) == labels[start:start + batch_size]
        near = _near_ties(logits)
        correct += (hits & ~near).sum().item()
        doubtful.append(near.nonzero().flatten() + start)
    del fast
    net.to(memory_format=torch.contiguous_format)
    again = torch.cat(doubtful) if doubtful else torch.zeros(0, dtype=torch.long)
    for start in range(0, len(again), batch_size):
        index = again[start:start + batch_size].to(images.device)
        x = images.index_select(0, index).contiguous()
        correct += (net(x).argmax(dim=1) == labels.index_select(0, index)).sum().item()
    return correct / max(len(images), 1), len(again)


def _near_ties(logits: torch.Tensor) -> torch.Tensor:
    """Which rows of ``(N, classes)`` logits another layout could give another argmax."""
    if logits.shape[1] < 2:
        return torch.zeros(len(logits), dtype=torch.bool, device=logits.device)
    top = logits.topk(2, dim=1).values
    margin = top[:, 0] - top[:, 1]
    scale = logits.abs().amax(dim=1)
    return ~torch.isfinite(logits).all(dim=1) | (margin <= TIE_MARGIN * scale)


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
