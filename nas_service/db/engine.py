"""Engines and sessions for SQLite and PostgreSQL.

What is atomic
--------------
Everything inside one :func:`write_session` (or one ``engine.begin()`` on the engine returned by
:func:`make_engine`) is one database transaction: it commits as a whole when the block ends and
rolls back as a whole when it raises.

- **SQLite**: write transactions start with ``BEGIN IMMEDIATE``, which takes the database's
  single write lock *before* the first read. Two writers therefore queue on ``busy_timeout``
  (30 s) instead of both reading, both trying to upgrade to a write lock, and one failing at once
  with "database is locked" (a deferred transaction that must upgrade cannot wait: SQLite gives
  up to avoid a deadlock). The journal is WAL, so readers never block the writer and the writer
  never blocks readers: a :func:`read_session` starts with a plain ``BEGIN`` and reads one
  consistent snapshot without taking any lock that a writer waits on.
- **PostgreSQL**: ``READ COMMITTED``, the server's default. Writes that must not race (claiming a
  job, recording a candidate) lock the rows they decide on (``SELECT ... FOR UPDATE``, ``SKIP
  LOCKED`` for the claim) inside their transaction; see :mod:`nas_service.db.queue`.

A :func:`read_session` is read-only: flushing anything in it raises, because on SQLite a write in
a deferred transaction is exactly the "database is locked" trap above.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.orm import Session, sessionmaker

from nas_service.db.storable import check_parameters, json_serializer

SQLITE_BUSY_TIMEOUT_SECONDS = 30.0
POSTGRES_POOL_SIZE = 5
POSTGRES_MAX_OVERFLOW = 5

#: Execution option read by the ``begin`` hook: how a SQLite transaction starts.
SQLITE_BEGIN_OPTION = "nas_sqlite_begin"


def make_engine(url: str | URL, *, sqlite_foreign_keys: bool = True, echo: bool = False) -> Engine:
    """An engine for ``url`` (``sqlite:///path`` or ``postgresql+psycopg://...``), set up for the
    service's concurrency.

    SQLite: WAL journal, ``busy_timeout`` of 30 s, foreign keys enforced (``sqlite_foreign_keys``;
    migrations switch them off, as SQLite's own procedure for altering tables requires),
    ``synchronous=NORMAL`` (in WAL mode a crash of the process or the OS never corrupts the file;
    a power cut may lose the last transactions, which the queue redoes), and transactions begun
    explicitly by the hook below: ``BEGIN`` for reads, ``BEGIN IMMEDIATE`` for connections from
    :func:`writer`. The parent folder of the database file is created if missing.

    PostgreSQL: a bounded pool (5 connections plus 5 overflow per process, so N workers and an
    API stay far below the server's ``max_connections``) and ``pool_pre_ping`` so a connection
    dropped by a server restart is replaced instead of failing the next request.

    Both: every statement's parameters are checked before they are sent, and JSON columns are
    written strictly (:mod:`nas_service.db.storable`), so no row holds a value that cannot be
    read back and served.
    """
    url = database_url(url)
    if url.get_backend_name() == "sqlite":
        return _storable_only(_make_sqlite_engine(url, foreign_keys=sqlite_foreign_keys,
                                                  echo=echo))
    if url.get_backend_name() == "postgresql":
        try:
            return _storable_only(create_engine(
                url, pool_size=POSTGRES_POOL_SIZE, max_overflow=POSTGRES_MAX_OVERFLOW,
                pool_pre_ping=True, echo=echo, json_serializer=json_serializer))
        except ModuleNotFoundError as e:
            raise ModuleNotFoundError(f"{e}: PostgreSQL needs the driver, "
                                      "pip install 'nas-service[postgres]'") from e
    raise ValueError(f"unsupported database {url.get_backend_name()!r}: nas-service runs on "
                     "SQLite (sqlite:///path) or PostgreSQL (postgresql+psycopg://...)")


def database_url(url: str | URL) -> URL:
    """``url`` parsed, with PostgreSQL pinned to the psycopg 3 driver: ``postgres://`` and
    ``postgresql://`` (what hosting providers and docker-compose files write) would otherwise
    mean psycopg2, which the service does not install."""
    url = make_url(url)
    if url.drivername in ("postgres", "postgresql"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def _make_sqlite_engine(url: URL, *, foreign_keys: bool, echo: bool) -> Engine:
    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        echo=echo,
        json_serializer=json_serializer,
        # Sessions move between threads (a web server's thread pool); the pool hands each
        # connection to one thread at a time.
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        # pysqlite would otherwise issue its own deferred BEGIN before the first write, after the
        # reads: the hook below begins every transaction itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_SECONDS * 1000)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(SQLITE_BEGIN_OPTION, "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _storable_only(engine: Engine) -> Engine:
    @event.listens_for(engine, "before_cursor_execute")
    def _check(_conn: Connection, _cursor: Any, _statement: str, parameters: Any,
               _context: Any, _executemany: bool) -> None:
        check_parameters(parameters)

    return engine


def writer(engine: Engine) -> Engine:
    """``engine`` for write transactions: on SQLite they begin with ``BEGIN IMMEDIATE``;
    on PostgreSQL it is the same engine. Shares ``engine``'s pool."""
    if engine.dialect.name != "sqlite":
        return engine
    return engine.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to ``engine``. Objects stay readable after commit (``expire_on_commit`` is
    off), so a query's results can be returned from a ``with`` block and serialised later."""
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=True)


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """One write transaction: commits when the block ends, rolls back if it raises.

    On SQLite the transaction holds the write lock from its first statement (``BEGIN
    IMMEDIATE``), so what it reads cannot change before it commits.
    """
    with session_factory(writer(engine))() as session, session.begin():
        yield session


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    """Read-only work; never commits. On SQLite the transaction is one consistent snapshot; on
    PostgreSQL (READ COMMITTED) each statement sees what was committed when it started.

    Flushing a change in it raises :class:`RuntimeError`: writes belong in
    :func:`write_session`.
    """
    with session_factory(engine)() as session:
        # Closing the session at the end of the block rolls its transaction back.
        event.listen(session, "before_flush", _refuse_flush)
        yield session


def _refuse_flush(session: Session, _context: Any, _instances: Any) -> None:
    if session.new or session.dirty or session.deleted:
        raise RuntimeError("read_session() is read-only: write in write_session()")
