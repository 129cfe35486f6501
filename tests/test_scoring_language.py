"""The character task: the ``gcide-chars`` spec and corpus, bits per character on fixed
validation windows, the scorer's language-model path and the GHN training run for it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from char_task import write_toy_gcide
from torch import nn

from nas_service.data import DatasetError, get_task, load_task
from nas_service.data.characters import load_char_task
from nas_service.ghn import GHNConfig, GraphHyperNetwork
from nas_service.ghn.checkpoint import read_metadata
from nas_service.graph import GraphBuilder, to_module
from nas_service.scoring import ArchitectureScorer, GraphDoesNotFitTask
from nas_service.scoring.language import (
    BPC_NAME,
    bits_per_character,
    predicted_bpc,
    validation_windows,
)
from nas_service.spaces import get_space
from nas_service.training.char_ghn import train_char_ghn
from nas_service.training.config import TrainingConfig

TINY = GHNConfig(hidden=16, layers=2, code=8, block_out=8, block_in=8, vector=8)
SPEC = get_task("gcide-chars")


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_gcide(tmp_path_factory.mktemp("gcide"))


def test_the_character_task_is_a_language_model_scored_in_bits_per_character() -> None:
    assert SPEC.is_language_model and SPEC.metric == "bpc" and not SPEC.higher_is_better
    assert SPEC.input_shape == (64,) and SPEC.num_classes == len(SPEC.class_names) == 90
    assert get_task("fashion-mnist").higher_is_better
    with pytest.raises(DatasetError, match="character task"):
        load_task("gcide-chars")


def test_the_corpus_must_have_the_tasks_vocabulary(toy_root: Path, tmp_path: Path) -> None:
    corpus = load_char_task("gcide-chars", toy_root)
    assert corpus.vocabulary == "".join(SPEC.class_names)
    (tmp_path / "gcide.dict.dz").write_bytes((toy_root / "gcide.dict.dz").read_bytes()[:0])
    with pytest.raises(DatasetError):
        load_char_task("gcide-chars", tmp_path)  # empty: too short to split
    with pytest.raises(DatasetError, match="not a character task"):
        load_char_task("mnist")


def test_validation_windows_are_consecutive_and_shifted_by_one() -> None:
    tokens = torch.arange(23)
    x, y = validation_windows(tokens, 5, 10)
    assert x.shape == y.shape == (4, 5)  # (23 - 1) // 5 windows fit
    assert x[1].tolist() == [5, 6, 7, 8, 9] and y[1].tolist() == [6, 7, 8, 9, 10]
    with pytest.raises(ValueError, match="no window"):
        validation_windows(tokens[:3], 5, 1)


class _Uniform(nn.Module):
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*tokens.shape, 90)


def test_a_uniform_guess_scores_log2_of_the_vocabulary() -> None:
    x, y = validation_windows(torch.randint(0, 90, (1000,)), 64, 8)
    assert bits_per_character(_Uniform(), x, y, batch_size=3) == pytest.approx(math.log2(90))


def _language_model(seed: int = 1):
    return get_space("charlm").sample(seed, SPEC.input_shape, SPEC.num_classes,
                                      max_parameters=20_000)


def test_the_scorer_scores_a_language_model_in_bits_per_character(toy_root: Path) -> None:
    torch.manual_seed(0)
    ghn = GraphHyperNetwork(TINY).eval()
    ghn.task = "gcide-chars"
    scorer = ArchitectureScorer(ghn, ghn_version="test", data_root=str(toy_root))
    graph = _language_model()
    b = GraphBuilder((1, 28, 28))
    image_graph = b.build(b.add("linear", b.add("flatten", b.input), out_features=10), 10)
    scored, misfit = scorer.score([graph, image_graph], "gcide-chars")
    assert isinstance(misfit, GraphDoesNotFitTask)
    assert scored.name == BPC_NAME and 0 < scored.accuracy < 50
    assert scored.images == 14  # the toy validation split holds 14 windows of 64 + 1
    assert scored.score_record(0)["name"] == BPC_NAME
    # what a user gets from the checkpoint the plain way
    net = to_module(graph)
    net.load_state_dict(scored.state)
    x, y = scorer.task_tensors("gcide-chars").val_images, scorer.task_tensors(
        "gcide-chars").val_labels
    assert bits_per_character(net, x, y) == pytest.approx(scored.accuracy)
    assert predicted_bpc(ghn, [graph], x, y) == [pytest.approx(scored.accuracy)]


def test_a_short_ghn_training_run_on_language_models(toy_root: Path, tmp_path: Path) -> None:
    cfg = TrainingConfig(task="gcide-chars", data_root=str(toy_root), spaces=("charlm",),
                         steps=2, meta_batch=2, batch_size=4, warmup_steps=1,
                         max_parameters=20_000, validate_every=1, validation_architectures=2,
                         log_every=1, ghn={"hidden": 16, "layers": 2, "code": 8,
                                           "block_out": 8, "block_in": 8, "vector": 8})
    ghn = train_char_ghn(cfg, tmp_path, device="cpu", progress=False)
    assert ghn.task == "gcide-chars"
    meta = read_metadata(tmp_path / "ghn.safetensors")
    assert meta["task"] == "gcide-chars"
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "val_bpc" in r] == [1, 2]
    assert all(math.isfinite(r.get("val_bpc", r.get("train_bpc"))) for r in log)
