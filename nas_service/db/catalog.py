"""The architecture catalogue: every architecture the service scored, cached per GHN, and the
checkpoint files that hold their predicted weights.

Guarantees
----------
- :func:`save_architecture` stores at most one row per (content hash, task, GHN version), even
  under concurrent saves of the same graph (``INSERT ... ON CONFLICT DO NOTHING`` on the unique
  key, then a read of the row): exactly one caller creates it, the others get that row back, and
  the first stored scores win. A GHN of another version never finds the row: it scores the graph
  anew, into a row of its own.
- :func:`save_checkpoint` stores at most one row per file, named by its content hash; the first
  stored path wins.

Both write in the caller's transaction, so an architecture and its checkpoint row can be
stored together or not at all (:mod:`nas_service.search.evaluation` does); their ``Session``
must come from :func:`nas_service.db.engine.write_session`. The getters accept a
``read_session`` too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from nas_service.db._dialect import dialect_insert
from nas_service.db.models import Architecture, Checkpoint, new_id


def get_architecture_by_hash(session: Session, content_hash: str, task: str,
                             ghn_version: str) -> Architecture | None:
    """The architecture cached for the graph ``content_hash`` on ``task``, as scored by the GHN
    ``ghn_version``; ``None`` when that GHN has not scored it."""
    return session.scalars(select(Architecture).where(
        Architecture.content_hash == content_hash, Architecture.task == task,
        Architecture.ghn_version == ghn_version)).one_or_none()


def get_architecture(session: Session, architecture_id: str) -> Architecture | None:
    return session.get(Architecture, architecture_id)


def save_architecture(
    session: Session,
    *,
    content_hash: str,
    task: str,
    ghn_version: str,
    graph: str | Mapping[str, Any],
    num_parameters: int,
    flops: int,
    name: str | None = None,
    scores: Mapping[str, Any] | None = None,
    checkpoint_id: str | None = None,
    timings: Mapping[str, Any] | None = None,
) -> tuple[Architecture, bool]:
    """Insert-or-get on ``(content_hash, task, ghn_version)``; return ``(architecture, created)``.

    Under concurrency exactly one caller creates the row; the others get it back unchanged (the
    first scores stored win). ``graph`` is the ``nas-graph/1`` document or its JSON text.
    """
    graph_text = graph if isinstance(graph, str) else json.dumps(graph, separators=(",", ":"))
    inserted = session.execute(
        dialect_insert(session)(Architecture)
        .values(id=new_id(), content_hash=content_hash, task=task, graph=graph_text, name=name,
                num_parameters=num_parameters, flops=flops, scores=dict(scores or {}),
                ghn_version=ghn_version, checkpoint_id=checkpoint_id,
                timings=dict(timings or {}))
        .on_conflict_do_nothing(index_elements=[Architecture.content_hash, Architecture.task,
                                                Architecture.ghn_version])
        .returning(Architecture.id)
    ).first()
    architecture = get_architecture_by_hash(session, content_hash, task, ghn_version)
    assert architecture is not None
    return architecture, inserted is not None


def get_checkpoint(session: Session, sha256: str) -> Checkpoint | None:
    return session.get(Checkpoint, sha256)


def save_checkpoint(session: Session, *, sha256: str, path: str,
                    size_bytes: int) -> tuple[Checkpoint, bool]:
    """Insert-or-get a checkpoint file named by its content hash; return ``(row, created)``."""
    inserted = session.execute(
        dialect_insert(session)(Checkpoint)
        .values(id=sha256, path=path, size_bytes=size_bytes)
        .on_conflict_do_nothing(index_elements=[Checkpoint.id])
        .returning(Checkpoint.id)
    ).first()
    checkpoint = session.get(Checkpoint, sha256)
    assert checkpoint is not None
    return checkpoint, inserted is not None
