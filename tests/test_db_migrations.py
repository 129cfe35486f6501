"""Migrations create exactly the schema the models describe, on SQLite and PostgreSQL, and the
service refuses to run on a database at the wrong revision."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

from nas_service.db import Base, SchemaError, make_engine, migrate


def test_upgrade_from_empty_creates_every_table_and_reaches_head(empty_database_url: str) -> None:
    before, after = migrate.upgrade(empty_database_url)

    assert (before, after) == (None, migrate.head_revision())
    engine = make_engine(empty_database_url)
    try:
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
        migrate.check_schema(engine)
    finally:
        engine.dispose()


def test_migrated_schema_matches_the_models(empty_database_url: str) -> None:
    migrate.upgrade(empty_database_url)
    engine = make_engine(empty_database_url)
    try:
        assert migrate.schema_differences(engine) == []
    finally:
        engine.dispose()


def test_upgrade_twice_changes_nothing_and_downgrade_removes_everything(
        empty_database_url: str) -> None:
    migrate.upgrade(empty_database_url)
    head = migrate.head_revision()
    assert migrate.upgrade(empty_database_url) == (head, head)

    assert migrate.downgrade(empty_database_url, "base") == (head, None)
    engine = make_engine(empty_database_url)
    try:
        assert not set(Base.metadata.tables) & set(inspect(engine).get_table_names())
        migrate.upgrade(empty_database_url)
        assert migrate.schema_differences(engine) == []
    finally:
        engine.dispose()


def test_check_schema_on_an_unmigrated_database_says_to_run_db_upgrade(
        empty_database_url: str) -> None:
    engine = make_engine(empty_database_url)
    try:
        assert migrate.current_revision(engine) is None
        with pytest.raises(SchemaError, match="nas-service db upgrade"):
            migrate.check_schema(engine)
    finally:
        engine.dispose()


def test_a_database_from_a_newer_version_is_refused(empty_database_url: str) -> None:
    migrate.upgrade(empty_database_url)
    engine = make_engine(empty_database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = 'ffff_from_the_future'"))
        with pytest.raises(SchemaError, match="newer version"):
            migrate.check_schema(engine)
        with pytest.raises(SchemaError, match="newer version"):
            migrate.upgrade(empty_database_url)
    finally:
        engine.dispose()


def test_a_database_behind_head_is_told_to_upgrade(empty_database_url: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    migrate.upgrade(empty_database_url)
    # Pretend the code has a newer revision than the database.
    monkeypatch.setattr(migrate, "head_revision", lambda: "0002_pretend")
    monkeypatch.setattr(migrate, "_known_revisions", lambda: {"0001_initial", "0002_pretend"})
    engine = make_engine(empty_database_url)
    try:
        with pytest.raises(SchemaError, match="older than .*nas-service db upgrade"):
            migrate.check_schema(engine)
    finally:
        engine.dispose()


def test_migrations_ship_inside_the_package() -> None:
    # A wheel has no top-level migrations/ folder: the scripts must sit in the package.
    import nas_service

    assert migrate.MIGRATIONS_DIR.is_relative_to(next(iter(nas_service.__path__)))
    assert (migrate.MIGRATIONS_DIR / "env.py").is_file()
    assert migrate.head_revision() == "0001_initial"
