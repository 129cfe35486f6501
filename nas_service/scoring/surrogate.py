"""The library facade of the surrogate: predicted weights and the score the service reports.

    from nas_service import predict_parameters, surrogate_accuracy
    net = predict_parameters(my_resnet)            # a copy of my_resnet with predicted weights
    score = surrogate_accuracy(my_resnet)           # fraction in [0, 1] on the validation split
"""

from __future__ import annotations

import copy
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from nas_service.data import TaskData, load_task
from nas_service.ghn import GraphHyperNetwork
from nas_service.ghn.checkpoint import load_ghn as _load_ghn
from nas_service.graph import ArchitectureGraph, from_module, to_module

from .evaluation import (
    accuracy,
    fit_readout,
    load_parameters,
    recalibrate,
    recalibration_batches,
)
from .protocol import DEFAULT_EVAL_IMAGES, DEFAULT_TASK, READOUT, SURROGATE_MODE, BatchNormMode

_lock = threading.Lock()
_default_ghn: GraphHyperNetwork | None = None


def load_ghn(path: str | None = None, device: str | None = None) -> GraphHyperNetwork:
    """The bundled Fashion-MNIST GHN (cached per process), or the checkpoint at ``path``."""
    global _default_ghn
    if path is not None:
        return _load_ghn(path, device)
    with _lock:
        if _default_ghn is None or (device is not None and
                                    _default_ghn.device != torch.device(device)):
            _default_ghn = _load_ghn(None, device)
        return _default_ghn


def as_graph(module_or_graph: nn.Module | ArchitectureGraph, input_shape: Sequence[int]
             ) -> ArchitectureGraph:
    """A graph as it is, a module converted with ``from_module`` for inputs of ``input_shape``."""
    if isinstance(module_or_graph, ArchitectureGraph):
        return module_or_graph
    if isinstance(module_or_graph, nn.Module):
        return from_module(module_or_graph, tuple(input_shape))
    raise TypeError("expected an ArchitectureGraph or a torch.nn.Module, got "
                    f"{type(module_or_graph).__name__}")


@dataclass(frozen=True)
class ParameterReport:
    """Where every tensor of a module given to :func:`predict_parameters` came from, by its
    name in the module's ``state_dict``."""

    predicted: tuple[str, ...]
    """Parameters set to the GHN's prediction."""
    estimated: tuple[str, ...]
    """Batch-norm statistics, re-estimated on training batches of the task, and the
    classifier's weights, refitted on their labels (the readout)."""
    untouched: tuple[str, ...]
    """Parameters and buffers that keep the module's own values: the graph does not know them
    (a parameter forward never reads, a buffer such as an attention mask or index table)."""
    opaque_nodes: tuple[str, ...]
    """Nodes of the module's graph that are ``opaque`` (their parameters are predicted too)."""


def predict_parameters(module_or_graph: nn.Module | ArchitectureGraph, *,
                       task: str = DEFAULT_TASK, ghn: GraphHyperNetwork | None = None,
                       data_root: str | None = None) -> nn.Module:
    """A runnable network with GHN-predicted weights, in eval mode, ready for inputs normalised
    as the task documents (``nas_service.data.get_task(task).mean/std``).

    A ``torch.nn.Module`` comes back as a copy of itself (same class) with predicted weights,
    parts that ``nas-graph/1`` can only hold as ``opaque`` nodes included; its
    ``parameter_report`` attribute (a :class:`ParameterReport`) names every parameter and buffer
    as predicted, estimated or untouched, and a warning names the parameters left untouched. A
    graph comes back as a :class:`~nas_service.graph.GraphNetwork`. Batch-norm running
    statistics are estimated on a few training batches of the task (a network without batch norm
    has its activations normalised on one of them instead, :func:`~.evaluation.recalibrate`),
    and the classifier is refitted on their labels (:func:`~.evaluation.fit_readout`).
    """
    ghn = ghn or load_ghn()
    data = load_task(task, data_root)
    graph = as_graph(module_or_graph, data.spec.input_shape)
    with torch.no_grad():
        params = ghn.predict([graph])[0]
    if not isinstance(module_or_graph, nn.Module):
        net = load_parameters(to_module(graph, initialize=False, device=ghn.device), params)
        return _recalibrated(net, data, ghn.device)[0]
    net = copy.deepcopy(module_or_graph).to(ghn.device)
    sources = graph.parameter_sources
    predicted = load_parameters_by_name(net, {sources.get(k, k): v for k, v in params.items()})
    net, classifier = _recalibrated(net, data, ghn.device)
    estimated = [f"{name}.{b}" for name, m in net.named_modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
                 for b in ("running_mean", "running_var", "num_batches_tracked")]
    estimated += [f"{name}.{p}" for name, m in net.named_modules() if m is classifier
                  for p, _ in m.named_parameters()]
    done = set(predicted) | set(estimated)
    predicted = [k for k in predicted if k not in estimated]
    untouched = [k for k in net.state_dict() if k not in done]
    unpredicted = [k for k, _ in net.named_parameters() if k not in done]
    if unpredicted:
        warnings.warn(f"predict_parameters({type(module_or_graph).__name__}): "
                      f"{len(unpredicted)} parameter(s) keep the module's values, the graph "
                      "does not know them: " + ", ".join(unpredicted[:20]), stacklevel=2)
    net.parameter_report = ParameterReport(tuple(predicted), tuple(estimated),
                                           tuple(untouched),
                                           tuple(n.id for n in graph.opaque_nodes))
    return net


def _recalibrated(net: nn.Module, data: TaskData, device: torch.device
                  ) -> tuple[nn.Module, nn.Linear | None]:
    """``net`` recalibrated as the service's score does it, and the classifier the readout
    refitted (``None`` without a readout)."""
    images, labels = zip(*recalibration_batches(data, device), strict=True)
    recalibrate(net, images)
    classifier = fit_readout(net, torch.cat(images), torch.cat(labels)) if READOUT else None
    return net.eval(), classifier


def load_parameters_by_name(net: nn.Module, params: dict[str, torch.Tensor]) -> list[str]:
    """Copies ``params`` into the parameters of ``net`` of the same names (a tensor that differs
    by axes of size 1, a layer scale kept as ``(C, 1, 1)``, is reshaped); returns the names set.
    Refuses names ``net`` does not have."""
    own = dict(net.named_parameters())
    unknown = params.keys() - own.keys()
    if unknown:
        raise KeyError(f"the module has no parameters named {sorted(unknown)[:5]}")
    with torch.no_grad():
        for name, value in params.items():
            own[name].copy_(value.detach().reshape(own[name].shape).to(own[name].device,
                                                                        own[name].dtype))
    return [name for name in own if name in params]


def surrogate_accuracy(module_or_graph: nn.Module | ArchitectureGraph, task: str = DEFAULT_TASK,
                       *, ghn: GraphHyperNetwork | None = None, data_root: str | None = None,
                       bn_mode: BatchNormMode = SURROGATE_MODE,
                       images: int | None = DEFAULT_EVAL_IMAGES) -> float:
    """The service's score: accuracy with predicted parameters on the first ``images`` images
    of the task's validation split (``None``: all of them).

    Computed in PyTorch's default layout, since a module of yours may reshape its maps in ways
    only that layout allows. The service computes its recalibration and readout channels-last
    on a CPU (:mod:`nas_service.scoring.scorer`), so the two can differ by the odd near-tied
    image, as scores taken with different thread counts do."""
    if images is not None and images < 1:
        raise ValueError(f"images must be at least 1, got {images}")
    data = load_task(task, data_root)
    net = predict_parameters(module_or_graph, task=task, ghn=ghn, data_root=data_root)
    x, y = data.tensors("val", device=next(net.parameters()).device)
    return accuracy(net, x[:images], y[:images], bn_mode=bn_mode)
