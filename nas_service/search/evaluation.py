"""Evaluating architectures for the service: the architecture cache, the GHN score, the
checkpoint file and the database rows, in that order. The workers (a batch per GHN forward pass)
go through :func:`evaluate_architectures`; the API, which answers a cache hit from its own read of
the cache, scores a miss with :func:`score_and_store`.

Guarantees:

- an architecture already stored for ``(content hash, task, GHN version)`` is returned as it is,
  without running the GHN (the first stored score wins, see
  :func:`nas_service.db.catalog.save_architecture`); a GHN of another version scores it anew;
- graphs repeated within one call are scored once;
- a stored architecture always has its checkpoint: the file is written (atomically) before the
  ``checkpoints`` and ``architectures`` rows, which are written in one transaction;
- the cache is read in one transaction per call, and each newly scored graph is stored in one
  transaction that also returns its checkpoint row: a cache miss costs two transactions.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from nas_service.data import TaskSpec
from nas_service.db import Architecture, Checkpoint, catalog, read_session, write_session
from nas_service.graph import ArchitectureGraph
from nas_service.scoring import ArchitectureScorer, ScoredGraph

from .checkpoints import CheckpointStore, checkpoint_metadata

Timings = Mapping[str, float] | Sequence[Mapping[str, float]] | None
"""Extra timings stored with newly scored architectures: one mapping for all, or one per graph."""


@dataclass(frozen=True)
class Evaluation:
    """What became of one graph: its stored architecture, or the error that stopped it."""

    graph: ArchitectureGraph
    architecture: Architecture | None
    created: bool  # scored by this call (False: found in the cache, or it failed)
    error: Exception | None = None
    seconds: float = 0.0  # this graph's share of the time spent
    checkpoint: Checkpoint | None = None
    """The architecture's checkpoint row, when this call stored the architecture."""


def find_stored_architecture(session: Session, graph: ArchitectureGraph, task: str,
                             ghn_version: str) -> Architecture | None:
    """The architecture the GHN ``ghn_version`` stored for ``graph`` on ``task``, if any: the
    cache lookup, by content hash."""
    return catalog.get_architecture_by_hash(session, graph.content_hash(), task, ghn_version)


def evaluate_architectures(engine: Engine, scorer: ArchitectureScorer, store: CheckpointStore,
                           graphs: Sequence[ArchitectureGraph], spec: TaskSpec, *,
                           extra_timings: Timings = None) -> list[Evaluation]:
    """One :class:`Evaluation` per graph, in order: the stored architecture of each graph the
    cache holds, the others scored and stored. ``spec`` is the task as
    :meth:`ArchitectureScorer.check_task` returned it. ``extra_timings`` (e.g. the time the API
    spent validating the graph) are stored with newly scored architectures: one mapping for
    all, or one per graph."""
    found: dict[str, Architecture | None] = {}
    with read_session(engine) as session:
        for graph in graphs:
            key = graph.content_hash()
            if key not in found:
                found[key] = find_stored_architecture(session, graph, spec.name,
                                                      scorer.ghn_version)
    per_graph = _per_graph(extra_timings, len(graphs))
    missing: dict[str, tuple[ArchitectureGraph, Mapping[str, float]]] = {}
    for graph, timings in zip(graphs, per_graph, strict=True):
        if found[graph.content_hash()] is None:
            missing.setdefault(graph.content_hash(), (graph, timings))
    to_score = [graph for graph, _ in missing.values()]
    outcomes = {graph.content_hash(): evaluation for graph, evaluation in zip(
        to_score, score_and_store(engine, scorer, store, to_score, spec,
                                  extra_timings=[t for _, t in missing.values()]),
        strict=True)}
    return [outcomes.get(graph.content_hash())
            or Evaluation(graph, found[graph.content_hash()], False) for graph in graphs]


def score_and_store(engine: Engine, scorer: ArchitectureScorer, store: CheckpointStore,
                    graphs: Sequence[ArchitectureGraph], spec: TaskSpec, *,
                    extra_timings: Timings = None) -> list[Evaluation]:
    """Scores ``graphs`` (distinct, known to be missing from the cache) and stores each: one
    :class:`Evaluation` per graph, in order, carrying its checkpoint row. A graph stored
    meanwhile by another process comes back as that stored row (``created`` is False)."""
    if not graphs:
        return []
    evaluations = []
    for graph, result, timings in zip(graphs, scorer.score(graphs, spec),
                                      _per_graph(extra_timings, len(graphs)), strict=True):
        if isinstance(result, Exception):
            evaluations.append(Evaluation(graph, None, False, result))
            continue
        try:
            evaluations.append(_store(engine, scorer, store, result, spec.name, timings))
        except Exception as e:  # noqa: BLE001 - this graph's failure, reported by the caller
            evaluations.append(Evaluation(graph, None, False, e))
    return evaluations


def _per_graph(timings: Timings, count: int) -> list[Mapping[str, float]]:
    if timings is None or isinstance(timings, Mapping):
        return [timings or {}] * count
    if len(timings) != count:
        raise ValueError(f"{len(timings)} timings for {count} graphs")
    return list(timings)


def _store(engine: Engine, scorer: ArchitectureScorer, store: CheckpointStore,
           result: ScoredGraph, task: str, extra_timings: Mapping[str, float]) -> Evaluation:
    started = time.perf_counter()
    scores = result.score_record(scorer.recalibration_images)
    graph = result.graph
    stored = store.write(result.state, checkpoint_metadata(
        graph, task=task, scores=scores, ghn_version=scorer.ghn_version))
    timings = {**extra_timings, **result.timings}
    with write_session(engine) as session:
        checkpoint, _ = catalog.save_checkpoint(session, sha256=stored.sha256,
                                                path=stored.relative_path,
                                                size_bytes=stored.size_bytes)
        timings["store"] = time.perf_counter() - started
        architecture, created = catalog.save_architecture(
            session, content_hash=graph.content_hash(), task=task, graph=graph.to_json(),
            name=_storable_name(graph.name), num_parameters=graph.num_parameters,
            flops=graph.flops, scores=scores, ghn_version=scorer.ghn_version,
            checkpoint_id=stored.sha256, timings=timings)
        if architecture.checkpoint_id != checkpoint.id:
            # Another process stored this architecture first, with its own checkpoint.
            checkpoint = (catalog.get_checkpoint(session, architecture.checkpoint_id)
                          if architecture.checkpoint_id else None)
    return Evaluation(graph, architecture, created, None, sum(result.timings.values()),
                      checkpoint)


def _storable_name(name: str | None) -> str | None:
    """The graph's name for the ``architectures.name`` column: control characters dropped
    (PostgreSQL refuses NUL in text), at most 128 characters. The graph JSON keeps it whole."""
    if not name:
        return None
    cleaned = "".join(ch for ch in name if ch.isprintable())[:128]
    return cleaned or None
