"""The architecture catalogue: insert-or-get per (content hash, task, GHN version), the first
stored scores win, checkpoints, and candidates that point to their architecture. Each test body
runs on SQLite and PostgreSQL."""

from __future__ import annotations

import json

from sqlalchemy import Engine

from nas_service.db import catalog, listings, queue, read_session, write_session

GRAPH = {"format": "nas-graph/1", "nodes": [{"id": "x", "op": "input", "inputs": [],
                                              "shape": [4]}]}


def test_save_architecture_is_insert_or_get_per_hash_task_and_ghn(engine: Engine) -> None:
    with write_session(engine) as session:
        checkpoint, created = catalog.save_checkpoint(session, sha256="c" * 64,
                                                      path="/data/checkpoints/c.safetensors",
                                                      size_bytes=1234)
        assert created
        first, created = catalog.save_architecture(
            session, content_hash="h" * 64, task="mnist", graph=GRAPH, num_parameters=10**10,
            flops=3 * 10**10, name="tiny", scores={"surrogate_accuracy": 0.61},
            ghn_version="ghn-1", checkpoint_id=checkpoint.id, timings={"predict": 0.1})
        assert created
    with write_session(engine) as session:
        again, created_again = catalog.save_architecture(
            session, content_hash="h" * 64, task="mnist", ghn_version="ghn-1", graph=GRAPH,
            num_parameters=1, flops=1, scores={"surrogate_accuracy": 0.99})
        other_task, created_other = catalog.save_architecture(
            session, content_hash="h" * 64, task="cifar10", ghn_version="ghn-1",
            graph=json.dumps(GRAPH), num_parameters=1, flops=1)
        other_ghn, created_other_ghn = catalog.save_architecture(
            session, content_hash="h" * 64, task="mnist", ghn_version="ghn-2", graph=GRAPH,
            num_parameters=1, flops=1, scores={"surrogate_accuracy": 0.7})
        assert catalog.save_checkpoint(session, sha256="c" * 64, path="elsewhere",
                                       size_bytes=1)[1] is False

    assert not created_again and again.id == first.id
    assert again.scores == {"surrogate_accuracy": 0.61}  # the first stored scores win
    assert created_other and other_task.id != first.id
    # Another GHN's score is its own row: the cache never answers with a stale GHN's score.
    assert created_other_ghn and other_ghn.id not in (first.id, other_task.id)
    with read_session(engine) as session:
        found = catalog.get_architecture_by_hash(session, "h" * 64, "mnist", "ghn-1")
        assert found is not None and found.id == first.id
        by_ghn_2 = catalog.get_architecture_by_hash(session, "h" * 64, "mnist", "ghn-2")
        assert by_ghn_2 is not None and by_ghn_2.scores == {"surrogate_accuracy": 0.7}
        assert catalog.get_architecture_by_hash(session, "h" * 64, "mnist", "ghn-3") is None
        assert json.loads(found.graph) == GRAPH
        assert found.num_parameters == 10**10  # BigInteger
        assert found.checkpoint_id == "c" * 64 and found.timings == {"predict": 0.1}
        assert catalog.get_architecture_by_hash(session, "h" * 64, "fashion-mnist",
                                                "ghn-1") is None
        stored = catalog.get_checkpoint(session, "c" * 64)
        assert stored is not None and stored.path.endswith("c.safetensors")


def test_candidates_link_to_their_architecture(engine: Engine) -> None:
    with write_session(engine) as session:
        job_id = queue.create_job(session, space="cells", task="mnist", strategy="evolution",
                                  seed=0, budget_candidates=30)[0].id
    claimed = queue.claim_next_job(engine, "w", 30.0)
    assert claimed is not None
    with write_session(engine) as session:
        arch, _ = catalog.save_architecture(session, content_hash="a" * 64, task="mnist",
                                            ghn_version="ghn-1", graph=GRAPH, num_parameters=5,
                                            flops=7)
    queue.record_candidate(engine, job_id, claimed.lease_token, 0, status="scored", score=0.3,
                           architecture_id=arch.id)
    with read_session(engine) as session:
        (candidate,) = listings.list_candidates(session, job_id).items
    assert candidate.architecture_id == arch.id
