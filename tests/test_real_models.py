"""``from_module`` on real models: the families of :mod:`real_models`, ``torch.nn``'s transformer
and recurrent layers, and ``transformers`` vision models built from configs.

Every model converts and its graph knows every parameter; a graph without opaque nodes rebuilt by
``to_module`` with the original weights computes what the original computes; the GHN predicts
every parameter of the user's module, opaque parts included.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from real_models import OWN, TORCH_NN, transformers_models
from torch import nn

from nas_service.ghn import GHNConfig, GraphHyperNetwork
from nas_service.graph import ArchitectureGraph, to_module
from nas_service.graph.tracing import UnsupportedModuleError, from_module, map_state_dict
from nas_service.scoring.surrogate import predict_parameters
from nas_service.zoo import resnet18, small_vit

MNIST = (1, 28, 28)
TINY_GHN = GHNConfig(hidden=16, layers=1, code=8, block_out=8, block_in=8, vector=8)


def _convert(make, shape=MNIST) -> tuple[nn.Module, ArchitectureGraph]:
    torch.manual_seed(0)
    model = make(shape[0], shape[1], 10).eval()
    return model, from_module(model, shape)


def _assert_rebuilt_computes_the_same(model: nn.Module, graph: ArchitectureGraph,
                                      shape=MNIST) -> None:
    rebuilt = to_module(graph).eval()
    rebuilt.load_state_dict(map_state_dict(graph, model.state_dict()), strict=True)
    x = torch.randn(3, *shape)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=1e-4, atol=1e-5)


EXPECTED_OPS = {
    "convnext": {"scale", "layer_norm", "conv2d"},
    "ghostnet": {"slice", "concat", "hardsigmoid"},
    "efficientnet": {"batch_norm", "silu", "mul"},
    "regnet": {"batch_norm", "relu"},
    "bit_resnet_timm_stdconv": {"std_conv2d", "group_norm"},
    "bit_resnet_var_mean": {"std_conv2d", "group_norm"},
    "unet_classifier": {"upsample", "conv_transpose2d", "prelu", "group_norm", "slice"},
    "conv_mixer": {"conv2d", "gelu", "batch_norm"},
    "squeezenet": {"concat", "max_pool"},
    "mlp_mixer": {"permute", "linear", "layer_norm"},
    "transformer_encoder_pre_norm": {"self_attention", "layer_norm", "gelu", "pos_embed"},
    "transformer_encoder_post_norm": {"self_attention", "layer_norm", "gelu", "pos_embed"},
    "lstm_rows": {"conv1d", "batch_norm", "recurrent", "select_token"},
    "gru_rows": {"conv1d", "batch_norm", "recurrent", "select_token"},
}
"""What each family must become; those not listed here keep some opaque nodes."""


@pytest.mark.parametrize("name", [*OWN, *TORCH_NN])
def test_every_family_converts_and_keeps_every_parameter(name: str) -> None:
    model, graph = _convert({**OWN, **TORCH_NN}[name])
    assert graph.num_parameters == sum(p.numel() for p in model.parameters())
    assert set(graph.parameter_sources.values()) >= {n for n, _ in model.named_parameters()}
    if name in EXPECTED_OPS:
        assert not graph.opaque_nodes, [n.attrs.label for n in graph.opaque_nodes]
        assert EXPECTED_OPS[name] <= {n.op for n in graph}
        _assert_rebuilt_computes_the_same(model, graph)
    else:
        assert graph.opaque_nodes
        with pytest.raises(ValueError, match="opaque"):
            to_module(graph)


def test_rows_of_32x32_colour_images_too() -> None:
    for name in ("lstm_rows", "unet_classifier", "convnext"):
        model, graph = _convert({**OWN, **TORCH_NN}[name], (3, 32, 32))
        assert not graph.opaque_nodes
        _assert_rebuilt_computes_the_same(model, graph, (3, 32, 32))


def test_attention_written_with_a_fused_qkv_is_one_opaque_node_per_block() -> None:
    model, graph = _convert(OWN["vit_fused_qkv_layer_scale"])
    opaque = graph.opaque_nodes
    assert len(opaque) == 2  # the reshape/permute/unbind/sdpa/transpose of each block, merged
    assert "F.scaled_dot_product_attention in blocks.0.attn (Attention)" in opaque[0].attrs.label
    ops = [n.op for n in graph]
    # The projections around the attention core stay linear layers; layer scale is scale.
    assert ops.count("linear") == 2 * 4 + 1 and ops.count("scale") == 4
    assert ops.count("class_token") == ops.count("pos_embed") == 1
    with pytest.raises(UnsupportedModuleError) as info:
        from_module(model, MNIST, exact=True)
    assert any("Tensor.unbind() in blocks.1.attn (Attention)" in u
               for u in info.value.unsupported)


def test_the_recording_and_fx_agree_where_fx_converts() -> None:
    for make in (resnet18, small_vit):
        model = make().eval()
        fx = from_module(model, (3, 32, 32), trace="symbolic")
        run = from_module(model, (3, 32, 32), trace="run")
        assert [n.op for n in fx] == [n.op for n in run]
        assert [n.attrs for n in fx] == [n.attrs for n in run]
        assert sorted(fx.parameter_sources.values()) == sorted(run.parameter_sources.values())


def test_a_recorded_run_leaves_the_module_as_it_was() -> None:
    torch.manual_seed(0)
    model = OWN["efficientnet"](1, 28, 10).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model[2].eval()
    flags = {name: m.training for name, m in model.named_modules()}
    with torch.enable_grad():
        graph = from_module(model, MNIST, trace="run")
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert not graph.opaque_nodes


def test_a_module_that_does_not_run_on_the_shape_names_the_error() -> None:
    with pytest.raises(UnsupportedModuleError, match=r"running Sequential on a batch of 2 inputs "
                       r"of shape \[3, 8, 8\] failed in 0 \(Conv2d\): RuntimeError"):
        from_module(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 2)), (3, 8, 8),
                    trace="run")


def test_predicted_parameters_land_in_the_users_module_opaque_parts_included() -> None:
    ghn = GraphHyperNetwork(TINY_GHN).eval()
    model, graph = _convert(OWN["vit_fused_qkv_layer_scale"])
    model.unused = nn.Linear(3, 3)  # never called by forward
    model.register_buffer("mask", torch.ones(4))
    with pytest.warns(UserWarning, match=r"2 parameter\(s\) keep the module's values.*"
                      r"unused.weight, unused.bias"):
        net = predict_parameters(model, ghn=ghn)
    report = net.parameter_report
    assert set(report.untouched) == {"unused.weight", "unused.bias", "mask"}
    # The classifier is refitted on the task's labels (the readout), every other parameter the
    # forward pass reads is predicted: opaque attention and layer scales included.
    assert set(report.estimated) >= {"head.weight", "head.bias"}
    assert set(report.predicted) == {n for n, _ in model.named_parameters()} - {
        "unused.weight", "unused.bias", "head.weight", "head.bias"}
    assert report.opaque_nodes == tuple(n.id for n in graph.opaque_nodes)
    assert not torch.equal(net.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)
    assert torch.equal(net.unused.weight, model.unused.weight)
    assert net(torch.randn(2, *MNIST)).shape == (2, 10)


def test_a_layer_scale_kept_as_c11_is_predicted_in_its_shape() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.gamma = nn.Parameter(torch.full((4, 1, 1), 0.5))
            self.fc = nn.Linear(4, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc((self.conv(x) * self.gamma).mean((2, 3)))

    model = Scaled()
    graph = from_module(model, MNIST)
    assert [n.op for n in graph][2] == "scale" and graph.parameter_shapes()["mul.weight"] == (4,)
    _assert_rebuilt_computes_the_same(model, graph)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net = predict_parameters(model, ghn=GraphHyperNetwork(TINY_GHN).eval())
    assert net.gamma.shape == (4, 1, 1) and not torch.equal(net.gamma, model.gamma)


TRANSFORMERS = transformers_models()
EXACT_TRANSFORMERS = ("hf_resnet", "hf_mobilenet_v2", "hf_regnet", "hf_convnext",
                      "hf_poolformer", "hf_bit")


@pytest.mark.skipif(not TRANSFORMERS, reason="transformers is not installed")
@pytest.mark.parametrize("name", [*EXACT_TRANSFORMERS, "hf_vit", "hf_swin", "hf_levit"])
def test_transformers_models_convert(name: str) -> None:
    shape = (3, 32, 32) if name == "hf_levit" else MNIST
    model, graph = _convert(TRANSFORMERS[name], shape)
    assert graph.num_parameters == sum(p.numel() for p in model.parameters()) or \
        name == "hf_levit"  # LeViT caches its attention biases, computed before the run
    if name in EXACT_TRANSFORMERS:
        assert not graph.opaque_nodes, [n.attrs.label for n in graph.opaque_nodes]
        _assert_rebuilt_computes_the_same(model, graph, shape)
    else:
        assert graph.opaque_nodes
