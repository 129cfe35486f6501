"""Schema migrations: apply them, and check that a database is at the revision the code expects.

The Alembic scripts live inside the package (``nas_service/db/migrations``), so an installed
wheel migrates without a source checkout. Entry points:

- ``nas-service db upgrade`` calls :func:`upgrade` with the settings' ``database_url``; the
  container's entry point runs it before ``serve``.
- The API and the workers call :func:`check_schema` at start-up and refuse to run on a database
  that is not migrated, or migrated by a newer version of the code.

Concurrent upgrades are safe: on PostgreSQL the whole upgrade is one transaction holding an
advisory lock (DDL is transactional there), on SQLite one ``BEGIN IMMEDIATE`` transaction; the
second process waits, then finds the database already at head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL, Connection

from nas_service.db.engine import make_engine, writer
from nas_service.db.errors import SchemaError
from nas_service.db.models import Base

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
UPGRADE_HINT = "run `nas-service db upgrade`"

# pg_advisory_xact_lock key of schema upgrades: any fixed 64-bit number no other code uses.
_POSTGRES_UPGRADE_LOCK = 0x6E61735F6D696772  # b"nas_migr"


def alembic_config(url: str | URL | None = None) -> Config:
    """Alembic's configuration for the packaged migrations (no ``alembic.ini`` needed)."""
    config = Config()
    # Config values go through ConfigParser interpolation: a literal '%' must be doubled.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if url is not None:
        config.attributes["url"] = str(url) if isinstance(url, str) else url.render_as_string(
            hide_password=False)
    return config


def migration_engine(url: str | URL) -> Engine:
    """An engine for migrating ``url``: on SQLite, foreign keys are not enforced during the
    migration (SQLite's documented procedure: rebuilding a table in batch mode drops the old one,
    which would otherwise cascade into its children); :func:`upgrade` checks them afterwards."""
    return make_engine(url, sqlite_foreign_keys=False)


def head_revision() -> str:
    """The newest revision this version of the code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, f"no migrations found in {MIGRATIONS_DIR}"
    return head


def current_revision(bind: Engine | Connection) -> str | None:
    """The revision the database is at; ``None`` when it was never migrated."""
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            return current_revision(connection)
    return MigrationContext.configure(bind).get_current_revision()


def _known_revisions() -> set[str]:
    return {script.revision for script in ScriptDirectory.from_config(alembic_config())
            .walk_revisions()}


def _refuse_unknown(revision: str | None) -> None:
    if revision is not None and revision not in _known_revisions():
        raise SchemaError(f"the database is at revision {revision!r}, which this version of "
                          f"nas-service does not know (head: {head_revision()!r}): it was "
                          "migrated by a newer version; run that version, or restore a backup")


def check_schema(bind: Engine | Connection) -> None:
    """Raise :class:`SchemaError` unless the database is at :func:`head_revision`.

    The message says what to do: not migrated or behind, run ``nas-service db upgrade``; at an
    unknown revision, the database belongs to a newer version of the code.
    """
    revision = current_revision(bind)
    if revision is None:
        raise SchemaError(f"the database has no schema (it was never migrated): {UPGRADE_HINT}")
    _refuse_unknown(revision)
    head = head_revision()
    if revision != head:
        raise SchemaError(f"the database is at revision {revision!r}, older than this version's "
                          f"{head!r}: {UPGRADE_HINT}")


def upgrade(url: str | URL, revision: str = "head") -> tuple[str | None, str | None]:
    """Migrate the database at ``url`` to ``revision``; return (revision before, revision after).

    Idempotent: at head already, it changes nothing. Refuses (:class:`SchemaError`) a database
    at a revision newer than the code, rather than guess. The SQLite file's folder is created.
    """
    return _migrate(url, lambda config: command.upgrade(config, revision))


def downgrade(url: str | URL, revision: str) -> tuple[str | None, str | None]:
    """Migrate the database at ``url`` down to ``revision`` (``"base"``: drop every table)."""
    return _migrate(url, lambda config: command.downgrade(config, revision))


def _migrate(url: str | URL, run: Any) -> tuple[str | None, str | None]:
    engine = migration_engine(url)
    try:
        with writer(engine).begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                                   {"key": _POSTGRES_UPGRADE_LOCK})
            before = current_revision(connection)
            _refuse_unknown(before)
            config = alembic_config(url)
            config.attributes["connection"] = connection
            run(config)
            if connection.dialect.name == "sqlite":
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise SchemaError(f"migration left rows breaking foreign keys: {broken[:5]}")
            after = current_revision(connection)
    finally:
        engine.dispose()
    return before, after


def schema_differences(bind: Engine | Connection) -> list[Any]:
    """What Alembic's autogenerate would change to make the database match the models; empty
    when the migrations and :mod:`nas_service.db.models` agree."""
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            return schema_differences(connection)
    context = MigrationContext.configure(bind, opts={"compare_type": True,
                                                     "render_as_batch": True})
    return list(compare_metadata(context, Base.metadata))
