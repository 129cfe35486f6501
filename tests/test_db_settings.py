"""The one settings object: NAS_* variables, derived paths, and refusals in production."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from nas_service.settings import Settings, get_settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("NAS_"):
            monkeypatch.delenv(name)


def test_every_path_derives_from_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "state")

    assert settings.data_dir == (tmp_path / "state").resolve()
    assert settings.checkpoint_dir == settings.data_dir / "checkpoints"
    assert settings.database_url == f"sqlite:///{settings.data_dir / 'nas.db'}"
    assert settings.is_sqlite


def test_relative_data_dir_is_made_absolute_against_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Settings().data_dir == tmp_path.resolve() / "data"


def test_environment_variables_with_the_nas_prefix_are_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAS_DATABASE_URL", "postgresql+psycopg://nas@db/nas")
    monkeypatch.setenv("NAS_API_KEYS", " key-one, key-two ,,")
    monkeypatch.setenv("NAS_LEASE_SECONDS", "60")
    monkeypatch.setenv("NAS_DEVICE", "cuda:1")
    monkeypatch.setenv("NAS_DATASETS_DIR", str(tmp_path))  # the data layer's, not ours: ignored
    get_settings.cache_clear()
    try:
        settings = get_settings()
        assert settings is get_settings()
    finally:
        get_settings.cache_clear()

    assert settings.database_url == "postgresql+psycopg://nas@db/nas"
    assert not settings.is_sqlite
    assert settings.api_keys == ("key-one", "key-two")
    assert settings.lease_seconds == 60
    assert settings.device == "cuda:1"


def test_defaults_are_the_documented_ones() -> None:
    settings = Settings()

    assert settings.environment == "development"
    assert settings.device is None
    assert settings.api_keys == ()
    assert settings.max_body_bytes == 2 * 1024 * 1024
    assert (settings.lease_seconds, settings.heartbeat_seconds, settings.max_attempts) == (30, 10, 3)
    assert settings.eval_images == 1000


@pytest.mark.parametrize(("value", "expected"), [("all", None), ("ALL ", None), ("", None),
                                                 ("250", 250)])
def test_eval_images_take_a_count_or_all(value: str, expected: int | None) -> None:
    assert Settings(eval_images=value).eval_images == expected


def test_api_keys_never_appear_in_repr() -> None:
    assert "s3cret" not in repr(Settings(api_keys="s3cret"))


def test_production_refuses_an_open_api_unless_anonymous_access_is_asked_for() -> None:
    with pytest.raises(ValidationError, match="NAS_API_KEYS is empty"):
        Settings(environment="production")

    assert Settings(environment="production", api_keys="k").api_keys == ("k",)
    assert Settings(environment="production", allow_anonymous=True).allow_anonymous


def test_production_refuses_an_in_memory_database() -> None:
    with pytest.raises(ValidationError, match="in-memory"):
        Settings(environment="production", api_keys="k", database_url="sqlite://")


def test_a_heartbeat_slower_than_the_lease_is_refused() -> None:
    with pytest.raises(ValidationError, match="heartbeat_seconds"):
        Settings(lease_seconds=10, heartbeat_seconds=10)


@pytest.mark.parametrize("field, value", [("max_attempts", 0), ("lease_seconds", 0),
                                          ("max_body_bytes", -1)])
def test_nonsense_numbers_are_refused(field: str, value: int) -> None:
    with pytest.raises(ValidationError):
        Settings(**{field: value})


@pytest.mark.parametrize("url", ["postgres://nas:pw@db/nas", "postgresql://nas:pw@db/nas",
                                 "postgresql+psycopg://nas:pw@db/nas"])
def test_postgres_urls_of_every_spelling_use_the_psycopg_driver(url: str) -> None:
    from nas_service.db.engine import database_url

    assert database_url(url).render_as_string(hide_password=False) == \
        "postgresql+psycopg://nas:pw@db/nas"
