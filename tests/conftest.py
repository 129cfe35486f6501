"""Shared fixtures. Storage tests run every body on both databases the service supports.

- ``database_url``: a migrated database, one per backend (``sqlite``, ``postgresql``) per test
  session (per xdist worker), so tests that use it run twice.
- ``engine``: an engine on ``database_url`` whose tables were emptied before the test.
- ``empty_database_url``: a brand-new database with no schema, per test (migration tests).

PostgreSQL is ``$NAS_TEST_POSTGRES_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/
test``): each session creates its own uniquely named database from there and drops it at the end,
so parallel runs never meet. When that server is unreachable the PostgreSQL variants are skipped,
except under CI (``$CI`` set), where they fail: CI must not pass on SQLite alone.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from sqlalchemy import Engine

POSTGRES_URL_ENV = "NAS_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BACKENDS = ("sqlite", "postgresql")


def _postgres_admin_url() -> str:
    return os.environ.get(POSTGRES_URL_ENV) or DEFAULT_POSTGRES_URL


def _unavailable(reason: str) -> None:
    message = (f"PostgreSQL at {_postgres_admin_url()} is needed for the postgresql variant of "
               f"the storage tests: {reason} (set {POSTGRES_URL_ENV}, or start the server: "
               ".ci/run does)")
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@contextmanager
def _new_postgres_database() -> Iterator[str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    admin_url = make_url(_postgres_admin_url())
    try:
        # CREATE/DROP DATABASE cannot run inside a transaction.
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT",
                              connect_args={"connect_timeout": 3})
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except (SQLAlchemyError, ImportError) as e:
        _unavailable(str(e).splitlines()[0])
    name = f"nas_test_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            # FORCE: a test that leaked a connection must not leak the database too.
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def _new_database(backend: str, folder: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{folder / 'nas.db'}"
    else:
        with _new_postgres_database() as url:
            yield url


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a migrated database (at head), shared by this session's tests of a backend."""
    from nas_service.db import migrate

    with _new_database(request.param, tmp_path_factory.mktemp("db")) as url:
        migrate.upgrade(url)
        yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on ``database_url``, all tables empty at the start of the test."""
    from sqlalchemy import text

    from nas_service.db import Base, make_engine

    engine = make_engine(database_url)
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(tables)}"))
        else:
            for table in tables:
                conn.execute(text(f"DELETE FROM {table}"))
    yield engine
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new database with no tables at all, dropped after the test."""
    with _new_database(request.param, tmp_path) as url:
        yield url
