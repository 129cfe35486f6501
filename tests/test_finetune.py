"""Fine-tuning from predicted weights against random initialisation: the library's report and
``nas-service finetune`` on a checkpoint file, on the real Fashion-MNIST with tiny budgets."""

from __future__ import annotations

import json

import pytest

pytest.register_assert_rewrite("service_support")

from service_support import SMALL_FLOPS, requires_fashion_mnist  # noqa: E402

from nas_service.client.checkpoint import CheckpointFile  # noqa: E402
from nas_service.commands import main  # noqa: E402
from nas_service.data import load_task  # noqa: E402
from nas_service.graph import GraphBuilder  # noqa: E402
from nas_service.scoring import accuracy  # noqa: E402
from nas_service.search import CheckpointStore  # noqa: E402
from nas_service.search.checkpoints import checkpoint_metadata  # noqa: E402
from nas_service.spaces import get_space  # noqa: E402
from nas_service.training.evaluate import evaluation_tensors, sgd_train  # noqa: E402
from nas_service.training.finetune import finetune_against_random_init  # noqa: E402

pytest_plugins = ("service_support",)
pytestmark = requires_fashion_mnist


def _graph():
    return get_space("cells").sample(4, (1, 28, 28), 10, max_flops=SMALL_FLOPS)


def _conv_flatten_graph():
    """conv -> batch norm -> relu -> flatten -> linear: learns Fashion-MNIST in a few steps."""
    b = GraphBuilder((1, 28, 28), name="conv-flatten")
    x = b.add("conv2d", b.input, id="conv", out_channels=8, kernel_size=3, stride=2, padding=1)
    x = b.add("relu", b.add("batch_norm", x, id="bn"), id="act")
    x = b.add("flatten", x, id="flat")
    return b.build(b.add("linear", x, id="fc", out_features=10), num_classes=10)


def test_a_good_start_keeps_its_lead_over_random_init_and_every_epoch_is_scored() -> None:
    data = load_task("fashion-mnist")
    graph = _conv_flatten_graph()
    # A start that already classifies: the same network after some SGD (a stand-in for good
    # predicted weights, which a tiny test GHN does not give).
    start = sgd_train(graph, data, epochs=1, max_images=2048, seed=1)
    report = finetune_against_random_init(start, graph, data, epochs=2, max_images=128,
                                          eval_images=300, seed=0)
    assert len(report.predicted) == len(report.random_init) == 3  # before, after 1, after 2
    x, y = evaluation_tensors(data, "val", 300, next(start.parameters()).device)
    assert report.predicted[0] == accuracy(start, x, y)
    assert report.random_init[0] < 0.3  # an untrained network is near chance (10 classes)
    assert report.predicted[0] > report.random_init[0] + 0.2
    assert report.predicted[-1] > report.random_init[-1]
    assert report.to_dict()["accuracy"]["predicted"] == report.predicted
    with pytest.raises(ValueError, match="epochs"):
        finetune_against_random_init(start, graph, data, epochs=0)


def test_finetune_trains_a_saved_checkpoint_and_prints_both_curves(scorer, tmp_path,
                                                                   capsys) -> None:
    spec = scorer.check_task("fashion-mnist")
    (scored,) = scorer.score([_graph()], spec)
    stored = CheckpointStore(tmp_path).write(scored.state, checkpoint_metadata(
        scored.graph, task="fashion-mnist", scores=scored.score_record(32),
        ghn_version=scorer.ghn_version))
    path = tmp_path / stored.relative_path
    status = main(["finetune", str(path), "--epochs", "1", "--max-images", "128",
                   "--eval-images", "200", "--no-progress", "--json"])
    out, err = capsys.readouterr()
    assert status == 0, err
    body = json.loads(out)
    assert body["task"] == "fashion-mnist" and body["epochs"] == 1
    assert len(body["accuracy"]["predicted"]) == len(body["accuracy"]["random_init"]) == 2
    # Epoch 0 of the predicted start is the checkpoint's own accuracy on those images.
    data = load_task("fashion-mnist")
    x, y = evaluation_tensors(data, "val", 200, scorer.device)
    assert body["accuracy"]["predicted"][0] == accuracy(CheckpointFile.read(path).module(), x, y)

    status = main(["finetune", str(path), "--max-images", "128", "--eval-images", "200",
                   "--no-progress"])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "from predicted" in out and "from random init" in out

    (tmp_path / "bogus.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    assert main(["finetune", str(tmp_path / "bogus.safetensors")]) == 1
    assert "not a nas-checkpoint/1 file" in capsys.readouterr().err
