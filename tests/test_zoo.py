"""Every reference model converts, and the rebuilt network computes what the original computes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import zoo
from torch import nn

from nas_service.graph import to_module
from nas_service.graph.tracing import from_module, map_state_dict
from nas_service.zoo.handwritten import HANDWRITTEN, handwritten_models

MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)

# (name, factory taking the input shape, input shapes it supports)
MODELS: list[tuple[str, Callable[[tuple[int, ...]], nn.Module], list[tuple[int, ...]]]] = [
    ("resnet18", lambda s: zoo.resnet18(10, s[0]), [MNIST, CIFAR]),
    ("resnet50", lambda s: zoo.resnet50(10, s[0]), [MNIST, CIFAR]),
    ("mobilenet_v2", lambda s: zoo.mobilenet_v2(10, s[0]), [MNIST, CIFAR]),
    # Five 2x2 max-pools need 32 pixels.
    ("vgg11_bn", lambda s: zoo.vgg11_bn(10, s[0]), [CIFAR]),
    ("densenet_bc", lambda s: zoo.densenet_bc(10, s[0]), [MNIST, CIFAR]),
    ("se_net", lambda s: zoo.se_net(10, s[0]), [MNIST, CIFAR]),
    ("small_vit", lambda s: zoo.small_vit(img=s[1], in_channels=s[0]), [MNIST, CIFAR]),
    ("mlp", lambda s: zoo.mlp(in_features=s[0] * s[1] * s[2]), [MNIST, CIFAR]),
    ("darts_like", lambda s: zoo.darts_like(cells=5, C=8, in_channels=s[0]), [MNIST, CIFAR]),
]
CASES = [pytest.param(make, shape, id=f"{name}-{'x'.join(map(str, shape))}")
         for name, make, shapes in MODELS for shape in shapes]


def _num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _randomise_batch_norm_statistics(module: nn.Module) -> None:
    """Non-default running statistics, so that copying them is actually checked."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.num_batches_tracked.fill_(7)


@pytest.mark.parametrize(("make", "shape"), CASES)
def test_zoo_model_round_trips_through_the_graph(make: Callable, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    original = make(shape).eval()
    _randomise_batch_norm_statistics(original)

    graph = from_module(original, shape)
    assert graph.input_shape == shape
    assert graph.num_classes == 10
    assert graph.num_parameters == _num_parameters(original)

    rebuilt = to_module(graph).eval()
    assert _num_parameters(rebuilt) == _num_parameters(original)
    state = map_state_dict(graph, original.state_dict())
    assert list(state) == list(rebuilt.state_dict())
    rebuilt.load_state_dict(state, strict=True)

    x = torch.randn(2, *shape)
    with torch.no_grad():
        expected, actual = original(x), rebuilt(x)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_full_size_darts_network_converts_with_every_parameter() -> None:
    model = zoo.darts_like()  # 20 cells, C=36: the benchmark's network
    graph = from_module(model, CIFAR)
    assert graph.num_parameters == _num_parameters(model)
    assert set(graph.parameter_sources.values()) == set(model.state_dict())


def test_resnet_parameter_names_map_back_to_the_module() -> None:
    graph = from_module(zoo.resnet18(), CIFAR)
    assert graph.parameter_sources["layer1_0_conv1.weight"] == "layer1.0.conv1.weight"
    assert graph.parameter_sources["layer2_0_downsample_1.running_var"] == \
        "layer2.0.downsample.1.running_var"
    assert graph.parameter_sources["fc.bias"] == "fc.bias"
    assert set(graph.parameter_shapes()) <= set(graph.parameter_sources)


def test_vit_uses_the_transformer_ops() -> None:
    graph = from_module(zoo.small_vit(), CIFAR)
    ops = [n.op for n in graph]
    assert ops[:4] == ["input", "patch_embed", "class_token", "pos_embed"]
    assert ops.count("self_attention") == 2
    assert ops[-3:] == ["select_token", "linear", "output"]
    assert graph.parameter_sources["cls_token.weight"] == "cls_token"
    assert graph.parameter_sources["pos_embed.weight"] == "pos_embed"
    assert graph.parameter_sources["patch_embed.weight"] == "patch_embed.weight"
    assert graph.parameter_sources["blocks_0_attn.out_proj.weight"] == \
        "blocks.0.attn.out_proj.weight"


def test_squeeze_excitation_gate_is_a_broadcast_multiply() -> None:
    graph = from_module(zoo.se_net(), CIFAR)
    gates = [n for n in graph if n.op == "mul"]
    assert len(gates) == 3
    assert all(n.input_shapes[1] == (n.shape[0], 1, 1) for n in gates)
    assert any(n.op == "global_avg_pool" and n.attrs.keepdim for n in graph)


@pytest.mark.parametrize("input_shape", [(1, 28, 28), (3, 32, 32)])
def test_every_handwritten_cnn_converts_and_matches_its_module(input_shape):
    models = handwritten_models(input_shape, num_classes=10)
    assert len(models) == len(HANDWRITTEN) >= 24
    x = torch.randn(2, *input_shape)
    for name, make in models.items():
        torch.manual_seed(0)
        module = make().eval()
        graph = from_module(module, input_shape, name=name)
        rebuilt = to_module(graph).eval()
        rebuilt.load_state_dict(map_state_dict(graph, module.state_dict()))
        assert torch.allclose(rebuilt(x), module(x), atol=1e-4), name
