"""GHN evaluation and surrogate ranking: rank correlations, the resumable ground-truth cache, the
per-architecture scores, the reference-model set, and the report with its hand-made PNG."""

from __future__ import annotations

import copy
import itertools
import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nas_service.data import DatasetError, load_task
from nas_service.ghn import GHNConfig, GraphHyperNetwork
from nas_service.graph import ArchitectureGraph, GraphBuilder, from_module, to_module
from nas_service.scoring.evaluation import (
    _logistic_regression,
    accuracy,
    classifier_of,
    default_layout_accuracy,
    fit_readout,
    normalize_activations,
    recalibrate,
    recalibrate_batch_norm,
)
from nas_service.scoring.metrics import (
    average_ranks,
    compare_scores,
    kendall_tau,
    spearman_rho,
)
from nas_service.spaces import get_space
from nas_service.training.evaluate import (
    SCORES,
    evaluate_architecture,
    evaluate_ghn,
    sgd_train,
    training_config_of,
)
from nas_service.training.ranking import (
    GroundTruthCache,
    ground_truth,
    rank_surrogates,
    train_ground_truth,
)
from nas_service.training.report import encode_png, text_mask, write_report
from nas_service.zoo import evaluation_models

TINY = GHNConfig(hidden=16, layers=2, code=8, block_out=8, block_in=8, vector=8)
# Small held-out architectures, so that the end-to-end tests stay fast on a CPU.
SMALL_TRAINING_RECORD = {"step": 7, "best_val_accuracy": 0.5,
                         "config": {"spaces": ["macro", "cells"], "max_parameters": 50_000,
                                    "max_flops": 2_000_000, "not_a_field": 1}}


@pytest.fixture(scope="module")
def fashion():
    try:
        return load_task("fashion-mnist", limit_train=1024)
    except DatasetError as e:
        pytest.skip(f"Fashion-MNIST is not installed: {e}")


@pytest.fixture
def tiny_ghn() -> GraphHyperNetwork:
    torch.manual_seed(0)
    ghn = GraphHyperNetwork(TINY).eval()
    ghn.task = "fashion-mnist"
    ghn.training_record = SMALL_TRAINING_RECORD
    return ghn


def tiny_graph(width: int = 4, name: str = "tiny") -> ArchitectureGraph:
    b = GraphBuilder((1, 28, 28), name=name)
    x = b.add("conv2d", b.input, out_channels=width, kernel_size=3, stride=2, padding=1)
    x = b.add("batch_norm", x)
    x = b.add("relu", x)
    x = b.add("global_avg_pool", x)
    return b.build(b.add("linear", x, out_features=10), num_classes=10)


# ------------------------------------------------------------------------------------------------
# Rank correlations
# ------------------------------------------------------------------------------------------------


def _brute_kendall_tau_b(x, y) -> float:
    concordant = discordant = ties_x = ties_y = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        ties_x += dx == 0
        ties_y += dy == 0
        concordant += dx * dy > 0
        discordant += dx * dy < 0
    n0 = len(x) * (len(x) - 1) / 2
    return (concordant - discordant) / math.sqrt((n0 - ties_x) * (n0 - ties_y))


def test_rank_correlations_are_one_for_agreement_and_minus_one_for_reversal():
    x = [0.1, 0.5, 0.3, 0.9, 0.7]
    assert kendall_tau(x, x) == pytest.approx(1.0)
    assert spearman_rho(x, x) == pytest.approx(1.0)
    assert kendall_tau(x, [-v for v in x]) == pytest.approx(-1.0)
    assert spearman_rho(x, [-v for v in x]) == pytest.approx(-1.0)
    # Monotone transforms change nothing: only ranks matter.
    assert kendall_tau(x, [math.exp(10 * v) for v in x]) == pytest.approx(1.0)


def test_kendall_tau_matches_hand_counted_pairs():
    # Pairs of (1,2,3) vs (1,3,2): (0,1) and (0,2) concordant, (1,2) discordant -> 1/3.
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    # Textbook tau-b with ties in both (scipy's kendalltau example): 2 concordant, 6 discordant,
    # 2 pairs tied in x and 1 in y, out of 10 -> (2 - 6) / sqrt(8 * 9).
    tau = kendall_tau([12, 2, 1, 12, 2], [1, 4, 7, 1, 0])
    assert tau == pytest.approx(-4 / math.sqrt(72))
    assert tau == pytest.approx(-0.47140452079103173)


@pytest.mark.parametrize("n", [2, 9, 600])  # 600 crosses the 512-row blocks
def test_kendall_tau_b_equals_brute_force_counting_with_many_ties(n: int):
    rng = np.random.default_rng(n)
    x, y = rng.integers(0, 6, n).astype(float), rng.integers(0, 4, n).astype(float)
    if len(set(x)) == 1 or len(set(y)) == 1:
        x[0], y[0] = 10.0, 10.0
    assert kendall_tau(x, y) == pytest.approx(_brute_kendall_tau_b(x, y), abs=1e-12)


def test_average_ranks_share_the_mean_rank_of_ties():
    assert average_ranks([10, 20, 20, 30]).tolist() == [1, 2.5, 2.5, 4]
    assert average_ranks([3, 1, 3, 3]).tolist() == [3, 1, 3, 3]


def test_spearman_rho_with_ties_matches_the_textbook_value():
    # Ranks (1..5) vs (1, 2, 3.5, 5, 3.5): covariance 8, variances 10 and 9.5.
    rho = spearman_rho([1, 2, 3, 4, 5], [5, 6, 7, 8, 7])
    assert rho == pytest.approx(8 / math.sqrt(95))
    assert rho == pytest.approx(0.8207826816681233)


def test_spearman_rho_without_ties_is_the_classic_formula():
    rng = np.random.default_rng(1)
    x, y = rng.permutation(20), rng.permutation(20)
    d = x - y
    assert spearman_rho(x, y) == pytest.approx(1 - 6 * (d ** 2).sum() / (20 * (20 ** 2 - 1)))


def test_rank_correlations_are_nan_when_undefined_and_refuse_bad_input():
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    assert math.isnan(spearman_rho([1, 2, 3], [4, 4, 4]))
    assert math.isnan(kendall_tau([1], [2]))
    with pytest.raises(ValueError):
        kendall_tau([1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        spearman_rho([1, float("nan")], [1, 2])


def test_compare_scores_locates_the_favourite_of_a_score_in_the_true_ranking():
    truth = [0.9, 0.5, 0.7, 0.7]
    r = compare_scores(truth, [1, 4, 3, 2])  # favours index 1, the worst trained
    assert r["top1_rank"] == 4 and r["top1_regret"] == pytest.approx(0.4)
    r = compare_scores(truth, [0, 0, 5, 1])  # index 2 ties with index 3 for second place
    assert r["top1_rank"] == 2 and r["top1_ties"] == 1
    assert compare_scores(truth, [1, 1, 1, 1])["kendall_tau"] is None


# ------------------------------------------------------------------------------------------------
# Training and the ground-truth cache
# ------------------------------------------------------------------------------------------------


def test_sgd_train_is_reproducible_and_zero_epochs_is_the_seeded_initialisation(fashion):
    graph = tiny_graph()
    a = sgd_train(graph, fashion, epochs=0.5, max_images=64, batch_size=16, seed=3)
    b = sgd_train(graph, fashion, epochs=0.5, max_images=64, batch_size=16, seed=3)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    torch.manual_seed(3)
    init = to_module(graph)
    untrained = sgd_train(graph, fashion, epochs=0, seed=3)
    assert all(torch.equal(v, init.state_dict()[k]) for k, v in untrained.state_dict().items())
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), init.parameters(),
                                                      strict=True))
    assert not a.training


def test_sgd_train_never_steps_on_an_odd_batch(fashion, monkeypatch):
    """torch 2.13's CPU backward pass corrupted the heap at odd batch sizes: 63 images in
    batches of up to 128 train in batches of 62."""
    seen = []
    real = F.cross_entropy
    monkeypatch.setattr(F, "cross_entropy",
                        lambda logits, y, *a, **k: seen.append(len(y)) or real(logits, y, *a, **k))
    sgd_train(tiny_graph(), fashion, epochs=2, max_images=63, seed=0)
    assert seen == [62, 62]
    seen.clear()
    sgd_train(tiny_graph(), fashion, epochs=1, max_images=64, batch_size=16, seed=0)
    assert seen == [16] * 4


def test_sgd_train_leaves_the_callers_random_state_alone(fashion):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    sgd_train(tiny_graph(), fashion, epochs=0.1, max_images=32, seed=0)
    assert torch.equal(torch.rand(3), expected)


class Interrupted(Exception):
    pass


def test_ground_truth_cache_resumes_an_interrupted_run(fashion, tmp_path: Path):
    graphs = [tiny_graph(4, "a"), tiny_graph(6, "b")]
    path = tmp_path / "cache" / "truth.json"

    def stop(i: int, record: dict) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        ground_truth(graphs, fashion, 1, max_images=64, cache=GroundTruthCache(path),
                     eval_images=128, on_trained=stop)
    saved = json.loads(path.read_text())
    assert len(saved) == 1
    (key, first), = saved.items()
    assert key == GroundTruthCache.key(graphs[0], fashion, 1, 64, 0, eval_images=128)
    assert key.startswith(graphs[0].content_hash() + "|fashion-mnist/1024|1|64|0")
    assert 0 <= first["accuracy"] <= 1 and first["seconds"] >= 0

    trained: list[int] = []
    accs = ground_truth(graphs, fashion, 1.0, max_images=64, cache=GroundTruthCache(path),
                        eval_images=128, on_trained=lambda i, r: trained.append(i))
    assert trained == [1]  # only the second architecture is trained
    assert accs[0] == first["accuracy"] and 0 <= accs[1] <= 1
    assert len(json.loads(path.read_text())) == 2
    # No temporary files left behind; the writers' lock file stays (an empty file).
    assert sorted(p.name for p in path.parent.iterdir()) == ["truth.json", "truth.json.lock"]

    again: list[int] = []
    assert ground_truth(graphs, fashion, 1, max_images=64, cache=GroundTruthCache(path),
                        eval_images=128, on_trained=lambda i, r: again.append(i)) == accs
    assert again == []


def test_ground_truth_cache_refuses_a_file_that_is_not_a_json_object(tmp_path: Path):
    path = tmp_path / "truth.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a JSON object"):
        GroundTruthCache(path)
    path.write_text("{broken")
    with pytest.raises(ValueError, match="unreadable"):
        GroundTruthCache(path)


# ------------------------------------------------------------------------------------------------
# Scoring architectures and whole GHNs
# ------------------------------------------------------------------------------------------------


def test_evaluate_architecture_returns_every_score_as_an_accuracy(tiny_ghn, fashion):
    r = evaluate_architecture(tiny_ghn, tiny_graph(), fashion, eval_images=64,
                              sgd_epochs=0.5, sgd_max_images=64)
    for key in SCORES:
        assert 0 <= r[key] <= 1, key
    assert r["name"] == "tiny" and r["eval_images"] == 64 and r["split"] == "test"
    assert r["parameters"] == tiny_graph().num_parameters and r["flops"] == tiny_graph().flops
    assert r["predict_seconds"] >= 0 and r["sgd_seconds"] >= 0
    assert set(r["seconds"]) == set(SCORES)
    json.dumps(r)  # JSON-ready


def test_evaluate_architecture_leaves_out_what_is_not_asked_and_takes_modules(tiny_ghn, fashion):
    module = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))
    r = evaluate_architecture(tiny_ghn, module, fashion, modes=("recalibrated",),
                              random_init=False, sgd_epochs=None, split="val", eval_images=32)
    assert r["predicted_batch"] is None and r["random_init"] is None
    assert r["sgd_1_epoch"] is None and r["sgd_seconds"] is None
    assert 0 <= r["predicted_recalibrated"] <= 1 and r["split"] == "val"
    assert r["parameters"] == 784 * 16 + 16 + 16 * 10 + 10


class _Tokens(nn.Module):
    """(B, C, H, W) -> (B, H*W, C): a linear layer then sees channels last, as in a ViT."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


def _bn_free_net() -> nn.Module:
    """Badly scaled on purpose: weights far from any initialisation, a bias-free layer, a dead
    channel, and a linear layer on tokens."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(6, 8, 3, stride=2, bias=False), nn.ReLU(),
                        _Tokens(), nn.Linear(8, 12), nn.GELU(), nn.Flatten(1),
                        nn.Linear(12 * 36, 10))
    with torch.no_grad():
        net[0].weight.mul_(40.0)
        net[0].bias.add_(25.0)
        net[2].weight[3].zero_()  # dead channel
        net[5].weight.mul_(0.001)
    return net


def _layer_outputs(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    outs: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda m, i, o: outs.append(o.detach()))
             for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return outs


def test_normalize_activations_folds_per_channel_centring_and_scaling_into_the_weights():
    net, x = _bn_free_net(), torch.randn(64, 1, 14, 14)
    normalize_activations(net, x)
    assert not net.training
    conv1, conv2, tokens, logits = _layer_outputs(net, x)  # measured after the fact, no hooks
    for out, dims, channels in ((conv1, (0, 2, 3), 6), (tokens, (0, 1), 12), (logits, (0,), 10)):
        assert out.mean(dims).abs().max() < 1e-3
        assert torch.allclose(out.std(dims), torch.ones(channels), atol=1e-3)
    # Bias-free: scaled only (not centred; ReLU inputs keep their sign). Dead: left at zero.
    live = [c for c in range(8) if c != 3]
    assert torch.allclose(conv2.std((0, 2, 3))[live], torch.ones(7), atol=1e-3)
    assert conv2[:, 3].abs().max() == 0 and net[2].bias is None
    assert all(torch.isfinite(p).all() for p in net.parameters())
    # A plain network afterwards: no hooks left behind, same outputs on other inputs each time.
    other = torch.randn(8, 1, 14, 14)
    assert torch.equal(net(other), net(other))
    assert not any(m._forward_hooks for m in net.modules())


def test_normalize_activations_reads_a_patch_embeddings_channels_off_its_tokens():
    from nas_service.graph.ops import PatchEmbed

    # 14x14 images in 2x2 patches: 49 tokens of 49 channels, so the shape alone is ambiguous.
    embed = PatchEmbed(1, 49, kernel_size=2, stride=2)
    with torch.no_grad():
        embed.weight.mul_(30.0)
        embed.bias.add_(5.0)
    net, x = nn.Sequential(embed, nn.GELU(), nn.Flatten(1), nn.Linear(49 * 49, 10)), torch.randn(
        64, 1, 14, 14)
    normalize_activations(net, x)
    tokens, _ = _layer_outputs(net, x)
    assert tokens.shape == (64, 49, 49)
    assert tokens.mean((0, 1)).abs().max() < 1e-3  # per channel (last dim), over images and tokens
    assert torch.allclose(tokens.std((0, 1)), torch.ones(49), atol=1e-3)


def test_recalibrate_normalizes_activations_only_without_batch_norm(fashion):
    x = fashion.tensors("train")[0][:32]
    with_bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                            nn.Linear(4 * 26 * 26, 10))
    before = {k: v.clone() for k, v in with_bn.state_dict().items()}
    recalibrate(with_bn, [x])
    after = with_bn.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before
               if "running" not in k and "num_batches" not in k)  # weights untouched
    assert not torch.equal(before["1.running_mean"], after["1.running_mean"])

    bn_free = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    weight = bn_free[0].weight.clone()
    recalibrate(bn_free, [x])
    assert not torch.equal(weight, bn_free[0].weight) and not bn_free.training


def _separable(n: int = 256, d: int = 6, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, d) * 4
    return centres[labels] + torch.randn(n, d), labels


@pytest.mark.parametrize("bias", [True, False])
def test_fit_readout_refits_the_classifier_from_labels(bias):
    x, y = _separable()
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3, bias=bias))
    hidden = net[0].weight.clone()
    with torch.no_grad():
        net[3].weight.zero_()  # a classifier that knows nothing
    assert fit_readout(net, x, y)
    assert torch.equal(net[0].weight, hidden)  # only the classifier changes
    assert (net(x).argmax(1) == y).float().mean() > 0.9
    x2, y2 = _separable()
    assert (net(x2).argmax(1) == y2).float().mean() > 0.9


def test_fit_readout_uses_the_dual_form_for_wide_features():
    x, y = _separable(n=64)
    wide = nn.Sequential(nn.Linear(6, 1000), nn.Tanh(), nn.Linear(1000, 3))  # d > n
    assert fit_readout(wide, x, y)
    assert (wide(x).argmax(1) == y).float().mean() > 0.9
    assert torch.isfinite(wide[2].weight).all()


def test_the_readouts_kernel_form_finds_the_same_classifier_as_its_primal_form():
    # The representer theorem: with more features than images the L2-regularised minimiser lies
    # in the span of the images, so optimising over N coefficients per class instead of d
    # weights must reach the same objective (to the fixed L-BFGS budget's precision) and the
    # same predictions.
    torch.manual_seed(0)
    z = torch.randn(40, 60, dtype=torch.float64)
    y = torch.arange(40) % 4
    w_dual, b_dual = _logistic_regression(z, y, 4, l2=1e-2, bias=True)
    w_primal, b_primal = _logistic_regression(z, y, 4, l2=1e-2, bias=True, kernel_form=False)

    def objective(w, b):
        return F.cross_entropy(z @ w + b, y) + 1e-2 * (w * w).sum()

    dual, primal = objective(w_dual, b_dual), objective(w_primal, b_primal)
    assert abs(dual - primal) <= 1e-3 * primal
    assert torch.equal((z @ w_dual + b_dual).argmax(1), (z @ w_primal + b_primal).argmax(1))


def test_fit_readout_is_deterministic():
    # A score must reproduce exactly: the same features give the same classifier, bit for bit.
    x, y = _separable(n=200, d=30, classes=5)
    nets = [nn.Sequential(nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 5)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    for net in nets:
        fit_readout(net, x, y)
    assert torch.equal(nets[0][2].weight, nets[1][2].weight)
    assert torch.equal(nets[0][2].bias, nets[1][2].bias)


def test_fit_readout_leaves_networks_without_a_linear_classifier_alone():
    x, y = _separable()
    pooled = nn.Sequential(nn.Linear(6, 3), nn.Softmax(dim=1))  # logits transformed after
    before = pooled[0].weight.clone()
    assert not fit_readout(pooled, x, y)
    assert torch.equal(before, pooled[0].weight)
    twice = nn.Linear(6, 6)
    looped = nn.Sequential(twice, nn.ReLU(), twice)  # one layer called twice per pass
    assert classifier_of(looped, x) is None


def test_recalibrate_with_labels_refits_the_readout(fashion):
    x, y = fashion.tensors("train")
    x, y = x[:256], y[:256]
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 26 * 26, 10))
    classifier = net[4].weight.clone()
    recalibrate(net, [x[:128], x[128:]])
    assert torch.equal(classifier, net[4].weight)
    recalibrate(net, [x[:128], x[128:]], [y[:128], y[128:]])
    assert not torch.equal(classifier, net[4].weight)
    assert accuracy(net, x, y) > 0.6


def _readout_nets() -> list[nn.Module]:
    torch.manual_seed(0)
    with_bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Dropout(0.5),
                            nn.Linear(64, 10))
    bn_free = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                            nn.Linear(64, 10))
    return [with_bn, bn_free]


@pytest.mark.parametrize("which", [0, 1], ids=["batch-norm", "bn-free"])
def test_one_pass_recalibration_reads_the_readout_features_off_the_recalibration_pass(
        fashion, which):
    x, y = fashion.tensors("train")
    x, y = x[:128], y[:128]
    two_pass = _readout_nets()[which]
    one_pass = _readout_nets()[which]
    calls = []
    one_pass[0].register_forward_hook(lambda *_: calls.append(1))
    recalibrate(two_pass, [x], [y])
    recalibrate(one_pass, [x], [y], one_pass=True)
    assert len(calls) == 1 and not one_pass.training  # one forward pass, left in eval mode
    before, after = two_pass.state_dict(), one_pass.state_dict()
    for key in before:
        # Batch statistics are the recalibrated ones (up to the unbiased variance); dropout is
        # off in the pass, or the refitted classifier would be far from the two-pass one. The
        # weakly regularised logistic readout has large weights: compared relative to them.
        scale = max(1.0, before[key].float().abs().max().item())
        assert (before[key].float() - after[key].float()).abs().max() <= 0.02 * scale, key
    val_x, val_y = fashion.tensors("val")
    with torch.no_grad():
        agree = (one_pass(val_x[:500]).argmax(1) == two_pass(val_x[:500]).argmax(1)).float()
    assert agree.mean() >= 0.99
    assert abs(accuracy(one_pass, val_x[:500], val_y[:500])
               - accuracy(two_pass, val_x[:500], val_y[:500])) <= 0.01


@pytest.mark.parametrize("which", [0, 1], ids=["batch-norm", "bn-free"])
def test_one_pass_over_several_batches_makes_one_pass_per_batch(fashion, which):
    x, y = fashion.tensors("train")
    # The service's recalibration: four batches of 128.
    batches = [x[i:i + 128] for i in range(0, 512, 128)]
    labels = [y[i:i + 128] for i in range(0, 512, 128)]
    two_pass, one_pass = _readout_nets()[which], _readout_nets()[which]
    calls = []
    one_pass[0].register_forward_hook(lambda *_: calls.append(1))
    recalibrate(two_pass, batches, labels)
    recalibrate(one_pass, batches, labels, one_pass=True)
    assert len(calls) == len(batches) and not one_pass.training
    if which == 0:  # the statistics are the same average over the same batches
        assert torch.equal(one_pass[1].running_mean, two_pass[1].running_mean)
        assert torch.equal(one_pass[1].running_var, two_pass[1].running_var)
        assert one_pass[1].num_batches_tracked == len(batches)
    val_x, val_y = fashion.tensors("val")
    with torch.no_grad():
        agree = (one_pass(val_x[:500]).argmax(1) == two_pass(val_x[:500]).argmax(1)).float()
    # Without batch norm the features are eval mode's up to rounding; with it, each batch's own
    # statistics stand in for their average: a few predictions may move.
    assert agree.mean() >= (1.0 if which == 1 else 0.97)
    assert abs(accuracy(one_pass, val_x[:500], val_y[:500])
               - accuracy(two_pass, val_x[:500], val_y[:500])) <= 0.02


def test_one_pass_needs_labels(fashion):
    x, _ = fashion.tensors("train")
    unlabelled = _readout_nets()[0]
    classifier = unlabelled[6].weight.clone()
    recalibrate(unlabelled, [x[:64], x[64:128]], one_pass=True)
    assert torch.equal(classifier, unlabelled[6].weight)  # no labels: no readout
    reference = _readout_nets()[0]
    recalibrate(reference, [x[:64], x[64:128]])
    assert all(torch.equal(a, b) for a, b in zip(unlabelled.state_dict().values(),
                                                 reference.state_dict().values(), strict=True))


def test_one_pass_without_a_classifier_still_recalibrates_on_every_batch(fashion):
    x, y = fashion.tensors("train")
    pooled = nn.Sequential(nn.Conv2d(1, 10, 3), nn.BatchNorm2d(10), nn.AdaptiveAvgPool2d(1),
                           nn.Flatten())  # logits not from a linear layer: nothing to refit
    reference = copy.deepcopy(pooled)
    batches, labels = [x[:64], x[64:128], x[128:192]], [y[:64], y[64:128], y[128:192]]
    recalibrate(pooled, batches, labels, one_pass=True)
    recalibrate_batch_norm(reference, batches)
    assert torch.equal(pooled[1].running_mean, reference[1].running_mean)
    assert pooled[1].num_batches_tracked == 3


def _conv_classifier(seed: int, classes: int = 10, channels: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
                         nn.Conv2d(24, 24, 3, padding=2, dilation=2, groups=4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, classes)).eval()


@pytest.mark.parametrize("channels", [1, 3])
def test_default_layout_accuracy_is_the_plain_accuracy_of_the_same_weights(channels) -> None:
    images = torch.randn(300, channels, 12, 12)
    for seed in range(3):
        net = _conv_classifier(seed, channels=channels)
        labels = net(images).argmax(1).roll(seed)  # some right, some wrong
        expected = accuracy(net, images, labels, batch_size=1000)
        got, again = default_layout_accuracy(net, images.contiguous(
            memory_format=torch.channels_last), labels, batch_size=64)
        assert got == expected and 0 <= again < len(images)
        # Left in the default layout, as the state a checkpoint stores.
        assert all(p.is_contiguous() for p in net.parameters())


def test_default_layout_accuracy_evaluates_near_ties_again_in_the_default_layout() -> None:
    images = torch.randn(200, 1, 12, 12)
    net = _conv_classifier(0, classes=2)
    head = net[-1]
    with torch.no_grad():  # two classes whose logits differ by ~1e-7 of their size: all ties
        head.weight[1] = head.weight[0] * (1 + 1e-7)
        head.bias[1] = head.bias[0]
    labels = torch.randint(0, 2, (200,), generator=torch.Generator().manual_seed(0))
    got, again = default_layout_accuracy(net, images, labels, batch_size=50)
    assert again == len(images)
    assert got == accuracy(net, images, labels)
    # A network with non-finite outputs: every image is evaluated again, none raises.
    with torch.no_grad():
        head.bias[0] = float("nan")
    got, again = default_layout_accuracy(net, images, labels, batch_size=50)
    assert again == len(images) and got == accuracy(net, images, labels)


def test_held_out_set_follows_the_ghns_recorded_training_config(tiny_ghn):
    cfg = training_config_of(tiny_ghn)
    assert cfg.spaces == ("macro", "cells") and cfg.max_parameters == 50_000
    # Other spaces, the recorded limits: GHNs trained on different spaces compared on one set.
    other = training_config_of(tiny_ghn, ["cells"])
    assert other.spaces == ("cells",) and other.max_parameters == 50_000
    tiny_ghn.training_record = {}
    assert training_config_of(tiny_ghn).max_parameters == 1_000_000  # TrainingConfig default


def test_evaluate_ghn_scores_held_out_architectures_and_reports_a_summary(tiny_ghn, fashion):
    seen: list[tuple[str, str]] = []
    result = evaluate_ghn(tiny_ghn, fashion, held_out=2, zoo=False, sgd_epochs=0.25,
                          sgd_max_images=64, eval_images=64, progress=False,
                          on_result=lambda section, r: seen.append((section, r["name"])))
    assert [r["name"] for r in result["held_out"]] == ["macro/seed=0", "cells/seed=1"]
    assert seen == [("held_out", "macro/seed=0"), ("held_out", "cells/seed=1")]
    assert all(r["parameters"] <= 50_000 for r in result["held_out"])
    assert result["zoo"] == [] and result["ghn"]["step"] == 7
    summary = result["summary"]["held_out"]
    for key in SCORES:
        assert summary[key]["count"] == 2
        assert 0 <= summary[key]["min"] <= summary[key]["median"] <= summary[key]["max"] <= 1
    # Split by batch norm: every held-out architecture on exactly one side.
    with_bn = [r["batch_norm"] for r in result["held_out"]]
    by_bn = result["summary"]["held_out_by_batch_norm"]
    for side, flag in (("with", True), ("without", False)):
        st = by_bn[side]["predicted_recalibrated"]
        assert (st["count"] if st else 0) == with_bn.count(flag)
    json.dumps(result)


# ------------------------------------------------------------------------------------------------
# Reference models
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "classes"), [((1, 28, 28), 7), ((3, 32, 32), 10)])
def test_reference_models_build_and_convert_at_the_tasks_shape(shape, classes):
    factories, skipped = evaluation_models(shape, classes)
    expected = ["ResNet-18", "ResNet-50", "MobileNetV2", "VGG-11-BN", "DenseNet-BC",
                "ViT (small)", "MLP"]
    if shape[1] == 28:
        assert "VGG-11-BN" in skipped and "32x32" in skipped["VGG-11-BN"]
        expected.remove("VGG-11-BN")
    else:
        assert skipped == {}
    assert list(factories) == expected
    for name, make in factories.items():
        graph = from_module(make().eval(), shape, name=name, num_classes=classes)
        assert graph.input_shape == shape and graph.num_classes == classes, name


def test_tests_zoo_re_exports_the_package_zoo():
    import zoo

    import nas_service.zoo as package_zoo

    assert zoo.resnet18 is package_zoo.resnet18 and zoo.darts_like is package_zoo.darts_like
    assert set(zoo.__all__) == set(package_zoo.__all__)


# ------------------------------------------------------------------------------------------------
# Ranking end to end, and the report
# ------------------------------------------------------------------------------------------------


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        chunks.append((kind, body))
        pos += 12 + length
    assert pos == len(data)
    return chunks


def assert_valid_png(data: bytes) -> tuple[int, int]:
    chunks = _png_chunks(data)
    assert chunks[0][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    w, h, depth, color, *_ = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, color) == (8, 2)
    idat = [body for kind, body in chunks if kind == b"IDAT"]
    assert idat
    for body in idat:  # each IDAT here is a whole zlib stream
        zlib.decompressobj().decompress(body)
    raw = zlib.decompress(b"".join(idat))
    assert len(raw) == h * (1 + 3 * w)
    return w, h


def test_encode_png_round_trips_pixels():
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    data = encode_png(pixels)
    assert assert_valid_png(data) == (7, 5)
    raw = zlib.decompress(b"".join(b for k, b in _png_chunks(data) if k == b"IDAT"))
    rows = np.frombuffer(raw, np.uint8).reshape(5, 1 + 21)
    assert (rows[:, 0] == 0).all()
    assert np.array_equal(rows[:, 1:].reshape(5, 7, 3), pixels)


def test_the_bitmap_font_covers_what_the_plot_writes():
    ink = text_mask("TAU 0.55 (RECAL., VAL)", scale=2)
    assert ink.shape == (14, 2 * (22 * 6 - 1)) and ink.any()
    assert not text_mask(" ").any()


def test_rank_surrogates_then_report_writes_three_valid_files(tiny_ghn, fashion, tmp_path):
    cache = tmp_path / "truth.json"
    kwargs = dict(held_out=3, epochs=0.5, max_images=64, cache_path=cache,
                  sgd_epochs_baseline=0.25, sgd_max_images=64, eval_images=64,
                  truth_eval_images=64, progress=False)
    ranking = rank_surrogates(tiny_ghn, fashion, **kwargs)
    assert len(ranking["architectures"]) == 3 and ranking["excluded"] == []
    assert set(ranking["scores"]) == {"predicted_batch", "predicted_recalibrated",
                                      "predicted_readout", "parameters", "flops", "sgd_1_epoch",
                                      "random_init"}
    assert ranking["ranking_head"] is None  # 3 architectures: too few to fit one
    for name, s in ranking["scores"].items():
        for corr in ("kendall_tau", "spearman_rho"):
            assert s[corr] is None or -1 <= s[corr] <= 1, name
        assert 1 <= s["top1_rank"] <= 3 and s["seconds_per_architecture"] >= 0, name
    assert len(json.loads(cache.read_text())) == 6  # 3 ground truths + 3 SGD baselines
    again = rank_surrogates(tiny_ghn, fashion, **kwargs)  # from the cache: nothing trained
    assert [a["trained_accuracy"] for a in again["architectures"]] == \
        [a["trained_accuracy"] for a in ranking["architectures"]]

    evaluation = evaluate_ghn(tiny_ghn, fashion, held_out=2, zoo=False, sgd_epochs=0.25,
                              sgd_max_images=64, eval_images=64, progress=False)
    evaluation["zoo"] = [{"name": "ResNet-18", "parameters": 11_000_000, "flops": 500_000_000,
                          "predicted_batch": 0.5, "predicted_recalibrated": 0.6,
                          "random_init": 0.1, "sgd_1_epoch": 0.7, "predict_seconds": 0.2},
                         {"name": "Broken", "error": "no"}]
    evaluation["zoo_skipped"] = {"VGG-11-BN": "needs 32x32 inputs"}
    paths = write_report({"evaluation": evaluation, "ranking": ranking}, tmp_path / "out")
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"result.json", "report.md",
                                                              "scatter.png"}
    assert json.loads(paths["json"].read_text())["ranking"]["task"] == "fashion-mnist"
    md = paths["markdown"].read_text()
    for heading in ("Held-out architectures", "Reference models", "Ranking", "Kendall tau",
                    "ResNet-18", "VGG-11-BN skipped", "scatter.png"):
        assert heading in md
    png = paths["scatter"].read_bytes()
    assert assert_valid_png(png) == (640, 520)

    # The evaluation alone still gets a plot (against the SGD baseline).
    alone = write_report(evaluation, tmp_path / "alone")
    assert_valid_png(alone["scatter"].read_bytes())


def test_ground_truth_shards_fill_one_cache_that_rank_surrogates_then_reuses(
        tiny_ghn, fashion, tmp_path, monkeypatch):
    kwargs = dict(held_out=3, epochs=0.25, max_images=64, cache_path=tmp_path / "truth.json",
                  sgd_epochs_baseline=0.25, sgd_max_images=64, eval_images=64,
                  truth_eval_images=64)
    done = [train_ground_truth(tiny_ghn, fashion, shard=(k, 2), progress=False, **kwargs)
            for k in range(2)]
    # Architectures 0 and 2 in shard 0, architecture 1 in shard 1; truth + baseline for each.
    assert [(d["architectures"], d["trained"]) for d in done] == [(2, 4), (1, 2)]
    assert len(json.loads((tmp_path / "truth.json").read_text())) == 6

    def no_training(*args, **kw):
        raise AssertionError("rank_surrogates trained although every shard was done")

    monkeypatch.setattr("nas_service.training.ranking.sgd_train", no_training)
    ranking = rank_surrogates(tiny_ghn, fashion, progress=False, **kwargs)
    assert len(ranking["architectures"]) == 3
    with pytest.raises(ValueError, match="shard"):
        train_ground_truth(tiny_ghn, fashion, shard=(2, 2), progress=False, **kwargs)


def test_report_png_opens_with_pillow_when_it_is_installed(tmp_path: Path):
    image_module = pytest.importorskip("PIL.Image")
    result = {"kind": "ranking", "task": "t", "ghn": {}, "protocol": {"epochs": 1},
              "architectures": [{"trained_accuracy": 0.5, "predicted_recalibrated": 0.4}],
              "scores": {}, "ground_truth": {}}
    paths = write_report(result, tmp_path)
    with image_module.open(paths["scatter"]) as im:
        im.load()
        assert im.size == (640, 520) and im.mode == "RGB"


def test_report_refuses_something_that_is_not_a_result(tmp_path: Path):
    with pytest.raises(ValueError):
        write_report({"foo": 1}, tmp_path)


class _ConvReadTwice(nn.Module):
    """A convolution whose output a batch norm and an addition both read: not foldable."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.head(self.bn(y) + y)


def _with_statistics(net: nn.Module, shape: tuple[int, ...], seed: int) -> nn.Module:
    """``net`` with batch-norm running statistics of random batches, in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(32, *shape, generator=generator) * 2 + 0.5)
    return net.eval()


def _folded_batch_norms(net: nn.Module) -> int:
    """How many of ``net``'s batch norms its folded view skips."""
    return sum(isinstance(ours, nn.BatchNorm2d) and theirs is not ours
               for (ours, _, _), (theirs, _, _) in zip(net._plan,
                                                       net.with_batch_norm_folded()._plan,
                                                       strict=True))


@pytest.mark.parametrize("space,seed", [("cells", 0), ("macro", 1), ("families", 2),
                                        ("families", 5), ("families", 9)])
def test_batch_norm_folded_network_computes_the_same_function(space, seed) -> None:
    graph = get_space(space).sample(seed, (3, 16, 16), 10)
    net = _with_statistics(to_module(graph), (3, 16, 16), seed)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    images = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    folded = net.with_batch_norm_folded()
    with torch.no_grad():
        expected, got = net(images), folded(images)
    scale = expected.abs().amax(1, keepdim=True).clamp_min(1e-6)
    assert ((got - expected).abs() / scale).max() < 1e-4
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # untouched
    assert not folded.state_dict()  # a view for one evaluation: nothing registered
    # Scores on it are the plain network's, exactly.
    labels = expected.argmax(1).roll(seed)
    assert default_layout_accuracy(net, images, labels, batch_size=16)[0] == \
        accuracy(net, images, labels)


def test_batch_norm_is_folded_only_where_it_is_the_convolutions_only_reader() -> None:
    sample = get_space("cells").sample(0, (1, 12, 12), 10)
    assert _folded_batch_norms(_with_statistics(to_module(sample), (1, 12, 12), 0)) > 0
    graph = from_module(_ConvReadTwice().eval(), (1, 12, 12))
    net = _with_statistics(to_module(graph), (1, 12, 12), 0)
    assert _folded_batch_norms(net) == 0
    # Batch norm in training mode normalises by each batch's statistics: nothing to fold.
    assert _folded_batch_norms(to_module(sample).train()) == 0
