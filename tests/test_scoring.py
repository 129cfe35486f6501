"""The scorer's fast CPU path (channels-last tensors, small evaluation batches) changes how a score
is computed, not what it is: a user who rebuilds the network from the returned state and
evaluates it the plain way (contiguous tensors, the library's default batch size) gets the same
accuracy, and the state is an ordinary contiguous ``state_dict``."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.register_assert_rewrite("service_support")

import torch  # noqa: E402
from service_support import SMALL_FLOPS, requires_fashion_mnist  # noqa: E402

from nas_service.data import load_task  # noqa: E402
from nas_service.graph import to_module  # noqa: E402
from nas_service.scoring import ArchitectureScorer  # noqa: E402
from nas_service.scoring.evaluation import accuracy  # noqa: E402
from nas_service.scoring.scorer import CPU_EVAL_BATCH_SIZE, ScoredGraph  # noqa: E402
from nas_service.spaces import get_space  # noqa: E402

pytest_plugins = ("service_support",)
pytestmark = requires_fashion_mnist

# More than two evaluation batches on a CPU, so that batching is part of what is compared.
IMAGES = 2 * CPU_EVAL_BATCH_SIZE + 37


@pytest.fixture(scope="module")
def batched_scorer(tiny_ghn_path: Path) -> ArchitectureScorer:
    return ArchitectureScorer.load(tiny_ghn_path, device="cpu", eval_images=IMAGES,
                                   recalibration_batches=2, recalibration_batch_size=32)


@pytest.mark.parametrize("space", ["cells", "macro"])
def test_a_rebuilt_network_reproduces_the_score_the_plain_way(batched_scorer, space) -> None:
    graphs = [get_space(space).sample(seed, (1, 28, 28), 10, max_flops=SMALL_FLOPS)
              for seed in range(3)]
    results = batched_scorer.score(graphs, "fashion-mnist")
    x, y = load_task("fashion-mnist").tensors("val")
    for graph, result in zip(graphs, results, strict=True):
        assert isinstance(result, ScoredGraph), result
        assert result.images == IMAGES
        net = to_module(graph)
        assert result.state.keys() == net.state_dict().keys()
        assert all(t.is_contiguous() and t.device.type == "cpu" for t in result.state.values())
        net.load_state_dict(result.state, strict=True)
        with torch.no_grad():
            assert accuracy(net.eval(), x[:IMAGES], y[:IMAGES]) == result.accuracy


def test_a_network_without_batch_norm_is_scored_and_reproduced_with_its_normalised_weights(
        batched_scorer) -> None:
    samples = (get_space("cells").sample(seed, (1, 28, 28), 10, max_flops=SMALL_FLOPS)
               for seed in range(500))
    graph = next(g for g in samples if all(node.op != "batch_norm" for node in g.nodes))
    (result,) = batched_scorer.score([graph], "fashion-mnist")
    assert isinstance(result, ScoredGraph), result
    predicted = batched_scorer.ghn.predict([graph])[0]
    changed = [k for k, v in predicted.items() if not torch.equal(v, result.state[k])]
    assert changed  # the checkpoint holds the recalibrated weights, not the raw prediction
    net = to_module(graph)
    net.load_state_dict(result.state, strict=True)
    x, y = load_task("fashion-mnist").tensors("val")
    with torch.no_grad():
        assert accuracy(net.eval(), x[:IMAGES], y[:IMAGES]) == result.accuracy


def test_every_family_reproduces_the_score_the_plain_way(batched_scorer) -> None:
    # Attention, layer and group norm, concatenations, depthwise and grouped convolutions, MLPs:
    # each runs channels-last in the scorer and the default layout in the user's hands.
    space = get_space("families")
    # One seed of each family at these bounds: vgg, resnet, mlp, resnet_bottleneck,
    # preact_resnet, convmixer, inception, mobilenet, plain, resnext, vit, densenet.
    seeds = (0, 1, 2, 3, 4, 5, 9, 10, 24, 26, 27, 43)
    graphs = [space.sample(seed, (1, 28, 28), 10, max_parameters=200_000, max_flops=SMALL_FLOPS)
              for seed in seeds]
    assert len({g.name.split("/")[1] for g in graphs}) == len(seeds)
    results = batched_scorer.score(graphs, "fashion-mnist")
    x, y = load_task("fashion-mnist").tensors("val")
    scored = [(g, r) for g, r in zip(graphs, results, strict=True) if isinstance(r, ScoredGraph)]
    assert len(scored) == len(graphs), [r for r in results if not isinstance(r, ScoredGraph)]
    for graph, result in scored:
        net = to_module(graph)
        net.load_state_dict(result.state, strict=True)
        with torch.no_grad():
            assert accuracy(net.eval(), x[:IMAGES], y[:IMAGES]) == result.accuracy, graph.name


def test_scoring_twice_gives_the_same_score_and_state(batched_scorer) -> None:
    graph = get_space("cells").sample(7, (1, 28, 28), 10, max_flops=SMALL_FLOPS)
    (first,), (second,) = (batched_scorer.score([graph], "fashion-mnist") for _ in range(2))
    assert first.accuracy == second.accuracy
    assert all(torch.equal(first.state[k], second.state[k]) for k in first.state)
