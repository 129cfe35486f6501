"""Time in the database: timezone-aware UTC columns and the database's own clock.

Leases are compared against one clock, the database's, never a worker's: workers on several
machines whose clocks disagree by seconds would otherwise steal each other's jobs or keep dead
ones. :class:`db_now` renders that clock in SQL, for both dialects:

- PostgreSQL: ``statement_timestamp()`` (fixed for one statement, unlike ``clock_timestamp()``;
  the start of *this* statement, unlike ``now()`` which is the start of the transaction).
- SQLite: ``strftime('%Y-%m-%d %H:%M:%f', 'now', ...)`` padded to microseconds, which is exactly
  the text SQLAlchemy writes for a ``datetime``, so stored times compare correctly as strings.
  SQLite keeps ``'now'`` fixed for one statement too.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import DateTime, Float, literal
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator

UTC = timezone.utc


class UTCDateTime(TypeDecorator[datetime]):
    """A ``timestamp with time zone`` that always comes back aware and in UTC.

    PostgreSQL stores an instant (``timestamptz``); SQLite has no time type, so the value is
    stored as naive UTC text (``YYYY-MM-DD HH:MM:SS.ffffff``) and made aware again when read.
    Naive datetimes are refused on the way in: a local time silently stored as UTC is the bug
    this type exists to prevent.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware datetime (UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class db_now(FunctionElement[datetime]):  # noqa: N801 - a SQL function, named like one
    """The database clock in UTC, plus ``offset_seconds`` (a number or a SQL expression).

    ``db_now()`` is "now"; ``db_now(30)`` is 30 seconds from now (a lease's expiry);
    ``db_now(-60)`` a minute ago.
    """

    type = UTCDateTime()
    inherit_cache = True
    name = "db_now"

    def __init__(self, offset_seconds: float | ColumnElement[Any] = 0.0) -> None:
        if not isinstance(offset_seconds, ColumnElement):
            offset_seconds = literal(float(offset_seconds), Float)
        super().__init__(offset_seconds)


def _offset(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    (offset,) = element.clauses
    return compiler.process(offset, **kw)


@compiles(db_now, "postgresql")
def _db_now_postgresql(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    return (f"(statement_timestamp() + make_interval(secs => "
            f"CAST({_offset(element, compiler, **kw)} AS double precision)))")


@compiles(db_now, "sqlite")
def _db_now_sqlite(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    # %f is SS.SSS: the '000' pads milliseconds to the microseconds SQLAlchemy writes, so that
    # text comparison of stored and computed times is chronological.
    return (f"(strftime('%Y-%m-%d %H:%M:%f', 'now', "
            f"printf('%+.3f seconds', {_offset(element, compiler, **kw)})) || '000')")


@compiles(db_now)
def _db_now_other(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    raise NotImplementedError(f"db_now() has no rendering for {compiler.dialect.name}: "
                              "nas-service supports SQLite and PostgreSQL")
