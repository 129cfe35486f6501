"""Migrations create exactly the schema the models describe, on SQLite and PostgreSQL, and the
service refuses to run on a database at the wrong revision."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

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
    known = migrate._known_revisions()
    monkeypatch.setattr(migrate, "head_revision", lambda: "9999_pretend")
    monkeypatch.setattr(migrate, "_known_revisions", lambda: known | {"9999_pretend"})
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
    assert migrate.head_revision() == "0005_job_ranking"


def _architecture_rows(engine) -> list[tuple[str, str | None]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(
            "SELECT id, ghn_version FROM architectures ORDER BY id"))]


def _insert_architecture(conn, ident: str, ghn_version: str | None, created_at: str) -> None:
    conn.execute(text(
        "INSERT INTO architectures (id, content_hash, task, graph, num_parameters, flops, scores, "
        "ghn_version, timings, created_at) VALUES (:id, :hash, 'mnist', '{}', 1, 1, '{}', :ghn, "
        "'{}', :at)"), {"id": ident, "hash": "h" * 64, "ghn": ghn_version, "at": created_at})


def test_0002_keys_the_cache_by_ghn_version_and_keeps_existing_rows(
        empty_database_url: str) -> None:
    """Upgrading a 0001 database with cached architectures: a row without a GHN version gets
    'unknown' (never served from the cache again); afterwards one graph and task holds a row
    per GHN version. Downgrading keeps the newest row of each graph and task, and repoints the
    candidates of the others to it."""
    migrate.upgrade(empty_database_url, "0001_initial")
    engine = make_engine(empty_database_url)
    try:
        with engine.begin() as conn:
            _insert_architecture(conn, "a" * 32, None, "2026-01-01 00:00:00+00:00")
        migrate.upgrade(empty_database_url)
        assert _architecture_rows(engine) == [("a" * 32, "unknown")]

        with engine.begin() as conn:
            _insert_architecture(conn, "b" * 32, "ghn-2", "2026-01-02 00:00:00+00:00")
            conn.execute(text(
                "INSERT INTO search_jobs (id, status, space, task, strategy, seed, "
                "budget_candidates, constraints, progress_done, progress_total, "
                "cancel_requested, attempts, created_at) VALUES ('j', 'succeeded', 'cells', "
                "'mnist', 'random', 0, 1, '{}', 1, 1, false, 1, '2026-01-01 00:00:00+00:00')"))
            conn.execute(text(
                "INSERT INTO candidates (id, job_id, \"index\", architecture_id, status, "
                "created_at) VALUES ('c', 'j', 0, :old, 'scored', '2026-01-01 00:00:00+00:00')"),
                {"old": "a" * 32})
        with pytest.raises(IntegrityError), engine.begin() as conn:
            _insert_architecture(conn, "c" * 32, "ghn-2", "2026-01-03 00:00:00+00:00")
        assert _architecture_rows(engine) == [("a" * 32, "unknown"), ("b" * 32, "ghn-2")]

        migrate.downgrade(empty_database_url, "0001_initial")
        assert _architecture_rows(engine) == [("b" * 32, "ghn-2")]
        with engine.connect() as conn:
            assert conn.execute(text("SELECT architecture_id FROM candidates")).scalar_one() == (
                "b" * 32)
        migrate.upgrade(empty_database_url)
        assert migrate.schema_differences(engine) == []
    finally:
        engine.dispose()
