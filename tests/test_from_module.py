"""``from_module``: what it recognises, what it refuses, and what it promises about the module."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
import torch.nn.functional as F
import zoo
from torch import nn

from nas_service.graph import GraphBuilder, GraphValidationError, to_module
from nas_service.graph.tracing import UnsupportedModuleError, from_module, map_state_dict

CIFAR = (3, 32, 32)


def _assert_same_function(original: nn.Module, shape: tuple[int, ...]) -> None:
    """Rebuilds the graph of ``original``, copies its weights by name and compares outputs."""
    graph = from_module(original, shape)
    rebuilt = to_module(graph).eval()
    rebuilt.load_state_dict(map_state_dict(graph, original.state_dict()), strict=True)
    x = torch.randn(3, *shape)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), original.eval()(x), rtol=1e-4, atol=1e-5)


def _ops(module: nn.Module, shape: tuple[int, ...] = CIFAR) -> list[str]:
    return [n.op for n in from_module(module, shape)]


# ---- functional code ----------------------------------------------------------------------------


class FunctionalNet(nn.Module):
    """Layers called through torch.nn.functional, operators and tensor methods."""

    def __init__(self, c_in: int = 3):
        super().__init__()
        self.a = nn.Conv2d(c_in, 8, 3, padding=1)
        self.b = nn.Conv2d(c_in, 8, 1)
        self.c = nn.Conv2d(16, 16, 3, padding="same", groups=2, bias=False)
        self.d = nn.Conv2d(16, 16, 3, padding="valid", dilation=1)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.a(x))
        b = torch.sigmoid(self.b(x))
        y = torch.cat([a, a * b], 1)
        y = y + self.c(y)
        y += F.leaky_relu(y, 0.2)
        y = F.max_pool2d(y, 2)
        y = F.avg_pool2d(y, kernel_size=2, stride=2, padding=0)
        y = F.adaptive_avg_pool2d(F.gelu(self.d(y)), 4)
        y = y.view(y.size(0), -1)
        y = F.dropout(torch.tanh(self.fc1(y)), p=0.1, training=self.training)
        return self.fc2(y.reshape(y.shape[0], -1))


def test_functional_model_converts_and_computes_the_same() -> None:
    torch.manual_seed(0)
    model = FunctionalNet()
    ops = _ops(model)
    for op in ("relu", "sigmoid", "mul", "concat", "add", "leaky_relu", "max_pool", "avg_pool",
               "gelu", "adaptive_avg_pool", "flatten", "tanh", "dropout"):
        assert op in ops, op
    _assert_same_function(model, CIFAR)
    _assert_same_function(FunctionalNet(1), (1, 28, 28))


class Pooling(nn.Module):
    def __init__(self, style: str):
        super().__init__()
        self.style = style
        self.conv = nn.Conv2d(3, 10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.style == "mean":
            return x.mean((2, 3))
        if self.style == "mean_keepdim":
            return torch.flatten(x.mean(dim=[-2, -1], keepdim=True), 1)
        if self.style == "amax":
            return x.amax(dim=(2, 3))
        if self.style == "squeeze":
            return F.adaptive_max_pool2d(x, 1).squeeze(-1).squeeze(-1)
        return nn.functional.adaptive_avg_pool2d(x, (1, 1)).flatten(1)


@pytest.mark.parametrize(("style", "op"), [
    ("mean", "global_avg_pool"), ("mean_keepdim", "global_avg_pool"),
    ("amax", "global_max_pool"), ("squeeze", "global_max_pool"),
    ("adaptive", "global_avg_pool")])
def test_global_pooling_spellings(style: str, op: str) -> None:
    model = Pooling(style)
    assert op in _ops(model)
    _assert_same_function(model, CIFAR)


class ChannelsLastNorm(nn.Module):
    """ConvNeXt's LayerNorm over channels through a channels-last permute."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 4, stride=4)
        self.norm = nn.LayerNorm(16, eps=1e-6)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x).permute(0, 2, 3, 1)
        x = F.gelu(self.norm(x)).permute(0, 3, 1, 2)
        return self.head(x.mean((2, 3)))


def test_layer_norm_over_channels_through_permutes() -> None:
    torch.manual_seed(0)
    model = ChannelsLastNorm()
    graph = from_module(model, CIFAR)
    norm = next(n for n in graph if n.op == "layer_norm")
    assert norm.shape == (16, 8, 8)
    assert norm.attrs.eps == 1e-6
    _assert_same_function(model, CIFAR)


class TokensFromMap(nn.Module):
    """Attention over the positions of a CNN map (not a patch embedding: the conv overlaps)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.conv(x).flatten(2).transpose(1, 2)
        t = self.attn(t, t, t)[0]
        return self.head(t.mean(1))


def test_positions_of_a_map_become_tokens() -> None:
    torch.manual_seed(0)
    assert _ops(TokensFromMap())[1:4] == ["conv2d", "to_tokens", "self_attention"]
    _assert_same_function(TokensFromMap(), CIFAR)


def test_vector_input_model() -> None:
    model = nn.Sequential(nn.Linear(20, 16), nn.BatchNorm1d(16), nn.SiLU(), nn.Linear(16, 3))
    graph = from_module(model, (20,))
    assert [n.op for n in graph] == ["input", "linear", "batch_norm", "silu", "linear", "output"]
    assert graph.num_classes == 3
    _assert_same_function(model, (20,))


@pytest.mark.parametrize("layer", [nn.ReLU6(), nn.ELU(0.5), nn.Mish(), nn.Hardswish(),
                                   nn.Hardsigmoid(), nn.LeakyReLU(0.1), nn.GELU("tanh"),
                                   nn.SiLU(), nn.Sigmoid(), nn.GroupNorm(4, 8), nn.Dropout(0.5),
                                   nn.Dropout2d(0.3), nn.Identity(), nn.AdaptiveMaxPool2d(1),
                                   nn.AvgPool2d(3, 1, 1, count_include_pad=False),
                                   nn.MaxPool2d(3, 2, 1, ceil_mode=True)],
                         ids=lambda layer: type(layer).__name__)
def test_layer_kinds_round_trip(layer: nn.Module) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), layer, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 5))
    _assert_same_function(model, CIFAR)


class MethodStyle(nn.Module):
    """The same operations spelled as torch functions and tensor methods."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.a(x).relu(), torch.relu(self.b(x))
        s = torch.add(a, b).mul(b.sigmoid())
        y = torch.concat((s, F.relu6(F.silu(a))), dim=-3)
        y = F.adaptive_avg_pool2d(y, output_size=1).squeeze()
        return self.head(y)


def test_torch_functions_and_tensor_methods() -> None:
    torch.manual_seed(0)
    ops = _ops(MethodStyle())
    assert ops[1:] == ["conv2d", "relu", "conv2d", "relu", "add", "sigmoid", "mul", "silu",
                       "relu6", "concat", "global_avg_pool", "flatten", "linear", "output"]
    _assert_same_function(MethodStyle(), CIFAR)


# ---- what the graph says ----------------------------------------------------------------------


def _small_cnn(activation: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), activation, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 10))


def test_activations_are_distinguishable() -> None:
    relu = from_module(_small_cnn(nn.ReLU()), CIFAR)
    tanh = from_module(_small_cnn(nn.Tanh()), CIFAR)
    assert [n.op for n in relu][2] == "relu"
    assert [n.op for n in tanh][2] == "tanh"
    assert relu.content_hash() != tanh.content_hash()
    assert relu.content_hash() == from_module(_small_cnn(nn.ReLU()), CIFAR).content_hash()


class AuxiliaryHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        self.aux = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(8, 4, 1))
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x)
        self.aux(x)  # computed, never used: dead code for the logits
        return self.head(x.mean((2, 3)))


def test_dead_branch_is_pruned_even_when_unsupported() -> None:
    graph = from_module(AuxiliaryHead(), CIFAR)
    assert [n.op for n in graph] == ["input", "conv2d", "global_avg_pool", "linear", "output"]
    assert not any(src.startswith("aux.") for src in graph.parameter_sources.values())


def test_num_classes_is_inferred_or_checked() -> None:
    model = _small_cnn(nn.ReLU())
    assert from_module(model, CIFAR).num_classes == 10
    assert from_module(model, CIFAR, num_classes=10, name="tiny").name == "tiny"
    with pytest.raises(GraphValidationError, match="num_classes=7"):
        from_module(model, CIFAR, num_classes=7)


def test_limits_apply() -> None:
    from nas_service.graph import GraphLimits
    with pytest.raises(GraphValidationError, match="limit"):
        from_module(zoo.resnet18(), CIFAR, limits=GraphLimits(max_parameters=1000))


def test_graph_network_converts_back_to_its_own_graph() -> None:
    b = GraphBuilder(CIFAR)
    x = b.add("conv2d", b.input, out_channels=8, kernel_size=3)
    x = b.add("global_avg_pool", b.add("relu", x))
    graph = b.build(b.add("linear", x, out_features=10), num_classes=10)
    net = to_module(graph)
    again = from_module(net, CIFAR)
    assert again == graph
    assert map_state_dict(again, net.state_dict()).keys() == net.state_dict().keys()


# ---- what it promises about the module -------------------------------------------------------------


def _snapshot(module: nn.Module) -> tuple:
    return (
        {k: v.clone() for k, v in module.state_dict().items()},
        {name: (m.training, sorted(vars(m))) for name, m in module.named_modules()},
        [p.requires_grad for p in module.parameters()],
    )


class WithConstant(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv(x) * torch.ones(1)).mean((2, 3))


@pytest.mark.parametrize("make", [zoo.resnet18, zoo.small_vit, WithConstant])
def test_module_is_not_modified(make: type) -> None:
    model = make().train()
    before = _snapshot(model)
    # WithConstant: multiplying by a tensor constant is not in the vocabulary.
    with contextlib.suppress(UnsupportedModuleError):
        from_module(model, CIFAR)
    after = _snapshot(model)
    assert before[1] == after[1] and before[2] == after[2]
    assert before[0].keys() == after[0].keys()
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])


def test_works_under_no_grad_and_inference_mode() -> None:
    model = zoo.resnet18()
    expected = from_module(model, CIFAR)
    with torch.no_grad():
        assert from_module(model, CIFAR) == expected
    with torch.inference_mode():
        assert from_module(model, CIFAR) == expected


# ---- what it refuses ----------------------------------------------------------------------------


class Unsupported(nn.Module):
    """Calls that nas-graph/1 has no op for: a local response norm, a softmax, a sort."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.lrn = nn.LocalResponseNorm(2)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lrn(self.conv(x))
        x = F.softmax(x, dim=1)
        x = torch.sort(x, dim=-1).values
        return self.head(x.mean((2, 3)))


def test_with_exact_every_unsupported_layer_is_listed_at_once() -> None:
    with pytest.raises(UnsupportedModuleError) as info:
        from_module(Unsupported(), CIFAR, exact=True)
    listed = info.value.unsupported
    # Each names the call and the layer it is in.
    assert listed == [
        "F.local_response_norm in lrn (LocalResponseNorm): not supported by nas-graph/1",
        "F.softmax in Unsupported.forward: not supported by nas-graph/1",
        "torch.sort in Unsupported.forward: not supported by nas-graph/1"]
    assert "skip_unsupported" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_without_exact_unsupported_calls_become_one_opaque_node() -> None:
    model = Unsupported()
    graph = from_module(model, CIFAR)
    (opaque,) = graph.opaque_nodes
    assert opaque.shape == (8, 30, 30)
    assert opaque.attrs.label == ("F.local_response_norm in lrn (LocalResponseNorm); "
                                  "F.softmax in Unsupported.forward; "
                                  "torch.sort in Unsupported.forward")
    assert graph.num_parameters == sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="opaque"):
        to_module(graph)


def test_skip_unsupported_replaces_shape_preserving_layers_by_identity() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.LocalResponseNorm(2), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 10), nn.Softmax(dim=1))
    with pytest.raises(UnsupportedModuleError, match="LocalResponseNorm"):
        from_module(model, CIFAR, exact=True)
    with pytest.warns(UserWarning, match=r"replaced 2 unsupported.*LocalResponseNorm.*Softmax"):
        graph = from_module(model, CIFAR, skip_unsupported=True)
    assert [n.op for n in graph].count("identity") == 2
    assert graph.num_parameters == sum(p.numel() for p in model.parameters())


def test_skip_unsupported_still_refuses_layers_that_change_the_shape() -> None:
    class Sorted(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.topk(x, 8, dim=-1).values)

    with pytest.raises(UnsupportedModuleError) as info:
        from_module(Sorted(), (16,), skip_unsupported=True, exact=True)
    assert [u.split(":")[0] for u in info.value.unsupported] == ["torch.topk in Sorted.forward"]


def test_unsupported_configurations_of_supported_layers() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding_mode="reflect", padding=1),
                          nn.Conv2d(8, 8, 2, padding="same"),
                          nn.BatchNorm2d(8, track_running_stats=False),
                          nn.Flatten(), nn.Linear(8 * 32 * 32, 10))
    with pytest.raises(UnsupportedModuleError) as info:
        from_module(model, CIFAR, exact=True)
    text = "\n".join(info.value.unsupported)
    assert "padding_mode='reflect'" in text
    assert "padding='same' with an even" in text
    assert "track_running_stats=False" in text


class CrossAttention(nn.Module):
    def __init__(self, masked: bool = False):
        super().__init__()
        self.masked = masked
        self.q = nn.Linear(8, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.masked:
            y = self.attn(x, x, x, attn_mask=torch.zeros(4, 4, dtype=torch.bool))[0]
        else:
            y = self.attn(self.q(x), x, x)[0]
        return self.head(y[:, 0])


@pytest.mark.parametrize(("masked", "message"), [(False, "cross-attention"),
                                                 (True, "attention masks")])
def test_attention_other_than_plain_self_attention_is_refused(masked: bool,
                                                              message: str) -> None:
    with pytest.raises(UnsupportedModuleError, match=message):
        from_module(CrossAttention(masked), (4, 8), exact=True)
    assert from_module(CrossAttention(masked), (4, 8)).opaque_nodes


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            x = -x
        return self.fc(x)


def test_control_flow_on_values_is_decided_by_a_recorded_run() -> None:
    with pytest.raises(UnsupportedModuleError, match="torch.fx cannot trace DataDependent"):
        from_module(DataDependent(), (4,), trace="symbolic")
    graph = from_module(DataDependent(), (4,))
    assert [n.op for n in graph] == ["input", "linear", "output"]


def test_output_must_be_logits() -> None:
    with pytest.raises(UnsupportedModuleError, match="num_classes"):
        from_module(nn.Conv2d(3, 4, 3), CIFAR)

    class TwoOutputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.fc(x), x

    with pytest.raises(UnsupportedModuleError, match="returns tuple"):
        from_module(TwoOutputs(), (4,))


def test_map_state_dict_names_missing_tensors() -> None:
    model = _small_cnn(nn.ReLU())
    graph = from_module(model, CIFAR)
    state = model.state_dict()
    del state["0.weight"]
    with pytest.raises(KeyError, match="0.weight"):
        map_state_dict(graph, state)


def test_no_warning_when_everything_is_supported() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_module(zoo.se_net(), CIFAR)
