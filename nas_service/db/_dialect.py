"""``INSERT ... ON CONFLICT DO NOTHING`` on both databases, which the at-most-once writes of
:mod:`~nas_service.db.queue` and the insert-or-get of :mod:`~nas_service.db.catalog` are built
on: SQLAlchemy's generic ``insert`` has no ``on_conflict_do_nothing``, each dialect's own has."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session


def _dialect_name(bind: Session | Connection) -> str:
    return bind.get_bind().dialect.name if isinstance(bind, Session) else bind.dialect.name


def dialect_insert(bind: Session | Connection) -> Callable[..., Any]:
    """The dialect's ``insert`` (both support ``on_conflict_do_nothing``)."""
    name = _dialect_name(bind)
    if name == "postgresql":
        return postgresql.insert
    if name == "sqlite":
        return sqlite.insert
    raise ValueError(f"unsupported database {name!r}")
