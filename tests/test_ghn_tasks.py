"""Task-conditioned GHN: the trained task predicts exactly what the unconditioned GHN predicts,
an added task's embedding conditions every node, and the served files round-trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nas_service.ghn import GHNConfig, GraphHyperNetwork, UnsupportedTaskError
from nas_service.ghn.checkpoint import load_ghn, save_ghn
from nas_service.ghn.tasks import (
    load_served,
    load_task_embedding,
    read_manifest,
    save_served,
    save_task_embedding,
)
from nas_service.spaces import get_space

TINY = GHNConfig(hidden=16, layers=2, code=8, block_out=8, block_in=8, vector=8)


def graphs(n: int = 3) -> list:
    return [get_space("cells").sample(seed, (1, 12, 12), 3) for seed in range(n)]


def same(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> bool:
    return all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
               for x, y in zip(a, b, strict=True))


@torch.no_grad()
def test_the_bundled_task_predicts_exactly_as_before_and_a_new_task_starts_there() -> None:
    ghn = load_ghn(device="cpu")
    gs = graphs()
    before = ghn.predict(gs)
    ghn.add_task("new-task")
    assert same(ghn.predict(gs), before)
    assert same(ghn.predict(gs, task="fashion-mnist"), before)
    assert same(ghn.predict(gs, task="new-task"), before)  # zero embedding: the base task
    assert not ghn.state_dict().keys() - load_ghn(device="cpu").state_dict().keys()
    ghn.task_embeddings["new-task"].add_(torch.randn(ghn.config.hidden))
    changed = ghn.predict(gs, task="new-task")
    assert not same(changed, before)
    assert same(ghn.predict(gs), before)
    with pytest.raises(UnsupportedTaskError, match="no embedding of task 'other'"):
        ghn.predict(gs, task="other")


def test_embeddings_get_gradients_and_follow_the_module(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ghn = GraphHyperNetwork(TINY)
    embedding = ghn.add_task("t")
    out = ghn.predict(graphs(1), task="t")[0]
    sum(v.sum() for v in out.values()).backward()
    assert embedding.grad is not None and embedding.grad.abs().sum() > 0
    ghn.to(torch.float64)
    assert ghn.task_embeddings["t"].dtype == torch.float64
    with pytest.raises(ValueError, match="16 values"):
        ghn.add_task("bad", torch.zeros(3))


def test_embedding_files_and_the_served_set_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ghn = GraphHyperNetwork(TINY)
    ghn.task = "fashion-mnist"
    path = save_task_embedding(tmp_path / "e.safetensors", "t", torch.arange(16.0))
    assert load_task_embedding(path)[0] == "t"
    assert torch.equal(load_task_embedding(path)[1], torch.arange(16.0))

    served = tmp_path / "served"
    assert read_manifest(served) is None and load_served(served) is None
    ghn.add_task("a", torch.randn(16))
    first = save_served(served, ghn, base="abc")
    ghn.add_task("b", torch.randn(16))
    with torch.no_grad():
        ghn.op_embed.weight.add_(0.5)
    second = save_served(served, ghn, base="abc")
    assert (first["generation"], second["generation"]) == (1, 2)
    loaded, manifest = load_served(served, "cpu")
    assert manifest == second and sorted(loaded.task_embeddings) == ["a", "b"]
    gs = graphs(2)
    with torch.no_grad():
        assert same(loaded.predict(gs, task="b"), ghn.eval().predict(gs, task="b"))
        assert same(loaded.predict(gs), ghn.predict(gs))
    save_served(served, ghn, base="abc")  # generation 1's files are pruned, 2's kept
    assert not (served / first["ghn"]).exists() and (served / second["ghn"]).exists()
    # The GHN checkpoint itself holds no embedding.
    plain = save_ghn(ghn, tmp_path / "plain.safetensors", task="fashion-mnist")
    assert load_ghn(plain, "cpu").task_embeddings == {}
