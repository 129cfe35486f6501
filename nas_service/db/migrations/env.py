"""Alembic environment of the service's database.

Called two ways:

- by :func:`nas_service.db.migrate.upgrade` (``nas-service db upgrade``), which opens the
  connection itself and passes it in ``config.attributes["connection"]``;
- by the ``alembic`` command, from the repository root (``alembic.ini`` there), for writing a new
  revision: the database is ``config.attributes["url"]``, else ``-x url=...``, else
  ``NAS_DATABASE_URL`` (the service's settings).

``render_as_batch=True``: SQLite alters a table only by copying it, and batch mode writes every
operation so that it works on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from nas_service.db.models import Base

config = context.config
target_metadata = Base.metadata

# Only the alembic command has an ini file; nas-service leaves the application's logging alone.
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
    if url:
        return url
    from nas_service.settings import get_settings

    return get_settings().database_url


def _configure(**kwargs: object) -> None:
    context.configure(target_metadata=target_metadata, render_as_batch=True, compare_type=True,
                      **kwargs)


def run_migrations_offline() -> None:
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    from nas_service.db.migrate import migration_engine

    engine = migration_engine(_url())
    try:
        with engine.begin() as connection:
            _run_on(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
