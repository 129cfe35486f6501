"""The library facade of the surrogate: predicted weights and the score the service reports.

    from nas_service import predict_parameters, surrogate_accuracy
    net = predict_parameters(my_resnet)            # a copy of my_resnet with predicted weights
    score = surrogate_accuracy(my_resnet)           # fraction in [0, 1] on the validation split
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence

import torch
from torch import nn

from nas_service.data import load_task
from nas_service.ghn import GraphHyperNetwork
from nas_service.ghn.checkpoint import load_ghn as _load_ghn
from nas_service.graph import ArchitectureGraph, from_module, to_module

from .evaluation import accuracy, load_parameters, recalibrate, recalibration_batches
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


def predict_parameters(module_or_graph: nn.Module | ArchitectureGraph, *,
                       task: str = DEFAULT_TASK, ghn: GraphHyperNetwork | None = None,
                       data_root: str | None = None) -> nn.Module:
    """A runnable network with GHN-predicted weights, in eval mode, ready for inputs normalised
    as the task documents (``nas_service.data.get_task(task).mean/std``).

    A ``torch.nn.Module`` comes back as a copy of itself (same class) with predicted weights; a
    graph comes back as a :class:`~nas_service.graph.GraphNetwork`. Batch-norm running statistics
    are estimated on a few training batches of the task; a network without batch norm has its
    activations normalised on one of them instead (:func:`~.evaluation.recalibrate`).
    """
    ghn = ghn or load_ghn()
    data = load_task(task, data_root)
    graph = as_graph(module_or_graph, data.spec.input_shape)
    with torch.no_grad():
        params = ghn.predict([graph])[0]
    if isinstance(module_or_graph, nn.Module):
        net = copy.deepcopy(module_or_graph).to(ghn.device)
        sources = graph.parameter_sources
        load_parameters_by_name(net, {sources.get(k, k): v for k, v in params.items()})
    else:
        net = load_parameters(to_module(graph, initialize=False, device=ghn.device), params)
    images, labels = zip(*recalibration_batches(data, ghn.device), strict=True)
    return recalibrate(net, images, labels if READOUT else None)


def load_parameters_by_name(net: nn.Module, params: dict[str, torch.Tensor]) -> nn.Module:
    """:func:`load_parameters` that also refuses names ``net`` does not have."""
    unknown = params.keys() - dict(net.named_parameters()).keys()
    if unknown:
        raise KeyError(f"the module has no parameters named {sorted(unknown)[:5]}")
    return load_parameters(net, params)


def surrogate_accuracy(module_or_graph: nn.Module | ArchitectureGraph, task: str = DEFAULT_TASK,
                       *, ghn: GraphHyperNetwork | None = None, data_root: str | None = None,
                       bn_mode: BatchNormMode = SURROGATE_MODE,
                       images: int | None = DEFAULT_EVAL_IMAGES) -> float:
    """The service's score: accuracy with predicted parameters on the first ``images`` images
    of the task's validation split (``None``: all of them)."""
    if images is not None and images < 1:
        raise ValueError(f"images must be at least 1, got {images}")
    data = load_task(task, data_root)
    net = predict_parameters(module_or_graph, task=task, ghn=ghn, data_root=data_root)
    x, y = data.tensors("val", device=next(net.parameters()).device)
    return accuracy(net, x[:images], y[:images], bn_mode=bn_mode)
