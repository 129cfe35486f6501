"""Evaluating architectures for the service: the architecture cache, the GHN score, the
checkpoint file and the database rows, in that order. The API (one graph per request) and the
workers (a batch per GHN forward pass) both go through :func:`evaluate_architectures`.

Guarantees:

- an architecture already stored for ``(content hash, task, GHN version)`` is returned as it is,
  without running the GHN (the first stored score wins, see
  :func:`nas_service.db.catalog.save_architecture`); a GHN of another version scores it anew;
- graphs repeated within one call are scored once;
- a stored architecture always has its checkpoint: the file is written (atomically) before the
  ``checkpoints`` and ``architectures`` rows, which are written in one transaction.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine

from nas_service.db import Architecture, catalog, read_session, write_session
from nas_service.graph import ArchitectureGraph

from .checkpoints import CheckpointStore, checkpoint_metadata
from .scoring import ArchitectureScorer, ScoredGraph


@dataclass(frozen=True)
class Evaluation:
    """What became of one graph: its stored architecture, or the error that stopped it."""

    graph: ArchitectureGraph
    architecture: Architecture | None
    created: bool  # scored by this call (False: found in the cache, or it failed)
    error: Exception | None = None
    seconds: float = 0.0  # this graph's share of the time spent


def evaluate_architectures(engine: Engine, scorer: ArchitectureScorer, store: CheckpointStore,
                           graphs: Sequence[ArchitectureGraph], task: str, *,
                           extra_timings: Mapping[str, float] | None = None
                           ) -> list[Evaluation]:
    """One :class:`Evaluation` per graph, in order. ``task`` must be one the scorer supports
    (:meth:`ArchitectureScorer.check_task` raises otherwise). ``extra_timings`` (e.g. the time
    the API spent validating the graph) are stored with newly scored architectures."""
    spec = scorer.check_task(task)
    task = spec.name
    with read_session(engine) as session:
        found = {}
        for graph in graphs:
            key = graph.content_hash()
            if key not in found:
                found[key] = catalog.get_architecture_by_hash(session, key, task,
                                                              scorer.ghn_version)
    missing: dict[str, ArchitectureGraph] = {}
    for graph in graphs:
        if found[graph.content_hash()] is None:
            missing.setdefault(graph.content_hash(), graph)

    outcomes: dict[str, Evaluation] = {}
    if missing:
        results = scorer.score(list(missing.values()), task)
        for graph, result in zip(missing.values(), results, strict=True):
            if isinstance(result, Exception):
                outcomes[graph.content_hash()] = Evaluation(graph, None, False, result)
                continue
            try:
                outcomes[graph.content_hash()] = _store(engine, scorer, store, result, task,
                                                        extra_timings or {})
            except Exception as e:  # noqa: BLE001 - this graph's failure, reported by the caller
                outcomes[graph.content_hash()] = Evaluation(graph, None, False, e)

    evaluations = []
    for graph in graphs:
        key = graph.content_hash()
        if key in outcomes:
            evaluations.append(outcomes[key])
        else:
            evaluations.append(Evaluation(graph, found[key], False))
    return evaluations


def _store(engine: Engine, scorer: ArchitectureScorer, store: CheckpointStore,
           result: ScoredGraph, task: str, extra_timings: Mapping[str, float]) -> Evaluation:
    started = time.perf_counter()
    scores = result.score_record(scorer.recalibration_images)
    graph = result.graph
    stored = store.write(result.state, checkpoint_metadata(
        graph, task=task, scores=scores, ghn_version=scorer.ghn_version))
    timings = {**extra_timings, **result.timings}
    with write_session(engine) as session:
        catalog.save_checkpoint(session, sha256=stored.sha256, path=stored.relative_path,
                                size_bytes=stored.size_bytes)
        timings["store"] = time.perf_counter() - started
        architecture, created = catalog.save_architecture(
            session, content_hash=graph.content_hash(), task=task, graph=graph.to_json(),
            name=_storable_name(graph.name), num_parameters=graph.num_parameters,
            flops=graph.flops, scores=scores, ghn_version=scorer.ghn_version,
            checkpoint_id=stored.sha256, timings=timings)
    return Evaluation(graph, architecture, created, None, sum(result.timings.values()))


def _storable_name(name: str | None) -> str | None:
    """The graph's name for the ``architectures.name`` column: control characters dropped
    (PostgreSQL refuses NUL in text), at most 128 characters. The graph JSON keeps it whole."""
    if not name:
        return None
    cleaned = "".join(ch for ch in name if ch.isprintable())[:128]
    return cleaned or None
