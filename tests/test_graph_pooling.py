"""The graph's pooling modules pool channels-last on the CPU when scoring, for speed; the results
must be bit-identical to PyTorch's NCHW pooling so that a score, and a downloaded checkpoint
evaluated anywhere, do not depend on it. Training (autograd) keeps PyTorch's own kernels."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from nas_service.graph.ops import AvgPool2d, MaxPool2d

CONFIGS = [(k, s, p, ceil) for k, s, p, ceil in itertools.product(
    (1, 2, 3, 5, 7), (1, 2, 3), (0, 1, 2, 3), (False, True)) if 2 * p <= k]


def _input(seed: int, shape: tuple[int, ...] = (3, 5, 13, 11)) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen)


def _same_forward_and_backward(ours: nn.Module, torchs: nn.Module, seed: int) -> None:
    x = _input(seed)
    ties = x.relu()  # windows of equal maxima, as after a ReLU
    with torch.no_grad():  # as scoring runs: the channels-last kernels
        for given in (x, ties):
            out = ours(given)
            assert out.is_contiguous()
            assert torch.equal(out, torchs(given))
    # With autograd (training), PyTorch's own kernels: the same gradients, ties included.
    x = ties.requires_grad_(True)
    y = ties.detach().clone().requires_grad_(True)
    out, ref = ours(x), torchs(y)
    assert torch.equal(out, ref)
    grad = _input(seed + 1, tuple(ref.shape))
    out.backward(grad)
    ref.backward(grad)
    assert torch.equal(x.grad, y.grad)


@pytest.mark.parametrize(("kernel", "stride", "padding", "ceil_mode"), CONFIGS)
def test_max_pool_is_bit_identical_to_nchw_pooling(kernel: int, stride: int, padding: int,
                                                   ceil_mode: bool) -> None:
    _same_forward_and_backward(MaxPool2d(kernel, stride, padding, ceil_mode=ceil_mode),
                               nn.MaxPool2d(kernel, stride, padding, ceil_mode=ceil_mode),
                               seed=kernel * 100 + stride * 10 + padding)


@pytest.mark.parametrize(("kernel", "stride", "padding", "ceil_mode"), CONFIGS)
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_is_bit_identical_to_nchw_pooling(kernel: int, stride: int, padding: int,
                                                   ceil_mode: bool,
                                                   count_include_pad: bool) -> None:
    _same_forward_and_backward(
        AvgPool2d(kernel, stride, padding, ceil_mode=ceil_mode,
                  count_include_pad=count_include_pad),
        nn.AvgPool2d(kernel, stride, padding, ceil_mode=ceil_mode,
                     count_include_pad=count_include_pad),
        seed=kernel * 100 + stride * 10 + padding + 1000)


def test_wide_batches_nans_and_infinities_pool_as_pytorch_does() -> None:
    x = _input(3, (64, 48, 28, 28))
    x[0, 0, 0, 0] = float("nan")
    x[1, 2, 3, 4] = float("inf")
    x[2, 3, 4, 5] = float("-inf")
    for ours, torchs in ((MaxPool2d(3, 1, 1), nn.MaxPool2d(3, 1, 1)),
                         (AvgPool2d(3, 2, 1), nn.AvgPool2d(3, 2, 1))):
        with torch.no_grad():
            assert torch.equal(ours(x).isnan(), torchs(x).isnan())
            assert torch.equal(ours(x).nan_to_num(), torchs(x).nan_to_num())


def test_inputs_that_are_not_contiguous_nchw_pool_as_given() -> None:
    x = _input(4, (2, 3, 9, 9))
    for given in (x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3), x[0]):
        assert torch.equal(MaxPool2d(3, 2)(given), nn.MaxPool2d(3, 2)(given))
        assert torch.equal(AvgPool2d(3, 2)(given), nn.AvgPool2d(3, 2)(given))


def test_modules_holding_the_graph_pooling_layers_convert_with_from_module() -> None:
    from nas_service.graph import from_module

    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), MaxPool2d(3, 1, 1),
                        AvgPool2d(2, count_include_pad=False), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 5))
    graph = from_module(net, (3, 16, 16))
    pools = [n for n in graph.nodes if n.op in ("max_pool", "avg_pool")]
    assert [n.op for n in pools] == ["max_pool", "avg_pool"]
    assert pools[1].attrs.count_include_pad is False
