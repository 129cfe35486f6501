"""The container deployment against the code it runs: ``docker-compose.yml``, the ``Dockerfile``
and ``docker/entrypoint.sh`` checked without a Docker engine.

A compose file is only read when someone runs ``docker compose up``, so a renamed CLI option, a
misspelt ``NAS_*`` variable or a health check on a route that does not exist would go unnoticed
until then. Here every command the containers run is parsed by the real ``nas-service`` argument
parser, every ``NAS_*`` variable is a :class:`~nas_service.settings.Settings` field (or one the
entry point or the data layer reads) whose value the settings accept, health checks probe routes
the API serves on the port the command binds, and the topology is the one the issue asks for:
PostgreSQL with a health check, an API and workers that ``--scale``, state on named volumes.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from nas_service.commands import build_parser
from nas_service.settings import Settings

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
NAS_SERVICES = ("api", "worker")  # the services that run the nas-service image
# NAS_* variables that are not Settings fields, and who reads them.
NON_SETTINGS_VARIABLES = {
    "NAS_MIGRATE": ENTRYPOINT,
    "NAS_DB_WAIT_SECONDS": ENTRYPOINT,
    "NAS_DATASETS_DIR": REPO / "nas_service" / "data" / "tasks.py",
}
_URL = re.compile(r"https?://[^/:'\"\s]+:(\d+)(/[\w/-]*)")


# ---- reading the files -------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    # PyYAML resolves the anchors and `<<` merge keys the file uses, as compose does.
    return yaml.safe_load(COMPOSE.read_text())


def _service(name: str) -> dict[str, Any]:
    return _compose()["services"][name]


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, rest = pending.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    return instructions


def _dockerfile(keyword: str) -> list[str]:
    return [rest for key, rest in _dockerfile_instructions() if key == keyword]


def _dockerfile_exec_form(keyword: str) -> list[str]:
    (value,) = _dockerfile(keyword)[-1:]  # the last one counts
    parsed = json.loads(value)
    assert isinstance(parsed, list), f"{keyword} must be in exec form (a JSON array)"
    return parsed


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in _dockerfile("ENV"):
        for item in shlex.split(rest):
            name, sep, value = item.partition("=")
            assert sep, f"ENV {rest!r}: use the NAME=value form"
            env[name] = value
    return env


def _command(service: dict[str, Any]) -> list[str]:
    """What the container runs after the entry point: the service's command, else CMD."""
    command = service.get("command")
    if command is None:
        return _dockerfile_exec_form("CMD")
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _cli(argv: list[str]) -> argparse.Namespace:
    """``argv`` (``nas-service ...``) as the real parser reads it; fails on anything it refuses."""
    assert argv and PurePosixPath(argv[0]).name == "nas-service", argv
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit as e:
        pytest.fail(f"`{shlex.join(argv)}` is refused by the nas-service CLI (exit {e.code})")
    assert getattr(args, "handler", None) is not None, f"`{shlex.join(argv)}` runs no command"
    return args


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the ["NAME=value", ...] form
        env = dict(item.split("=", 1) for item in env)
    return {name: "" if value is None else str(value) for name, value in env.items()}


def _healthcheck_url(test: list[str] | str) -> tuple[int, str]:
    match = _URL.search(test if isinstance(test, str) else " ".join(test))
    assert match, f"no http://host:port/path in the health check {test!r}"
    return int(match.group(1)), match.group(2)


def _api_routes() -> set[str]:
    from nas_service.api.routers import health

    return {route.path for route in health.router.routes}  # type: ignore[attr-defined]


# ---- commands ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAS_SERVICES)
def test_each_service_runs_a_command_the_cli_accepts(name: str) -> None:
    args = _cli(_command(_service(name)))
    assert args.handler.__name__ == {"api": "_serve", "worker": "_worker"}[name]


def test_the_image_defaults_and_the_entrypoint_run_commands_the_cli_accepts() -> None:
    assert _cli(_dockerfile_exec_form("CMD")).handler.__name__ == "_serve"
    assert _dockerfile_exec_form("ENTRYPOINT") == ["/app/docker/entrypoint.sh"]
    assert ENTRYPOINT.is_file()
    script = ENTRYPOINT.read_text()
    assert script.startswith("#!/bin/sh")
    invoked = re.findall(r"^\s*(nas-service [^\n;|&]+)$", script, re.M)
    assert invoked, "the entry point runs no nas-service command (migrations?)"
    for line in invoked:
        _cli(shlex.split(line))
    # The entry point hands over to the command with exec, so that it gets the signals.
    assert script.rstrip().endswith('exec "$@"')


def test_the_api_binds_the_port_it_publishes_and_probes() -> None:
    api = _service("api")
    args = _cli(_command(api))
    assert args.host == "0.0.0.0", "bound to loopback, the API is unreachable from outside"
    # "8000:8000", "127.0.0.1:8000:8000/tcp": the container port is the last number.
    published = {int(str(mapping).split("/")[0].rsplit(":", 1)[-1])
                 for mapping in api.get("ports", [])}
    assert published == {args.port}
    assert str(args.port) in _dockerfile("EXPOSE")[0].split()
    port, _ = _healthcheck_url(api["healthcheck"]["test"])
    assert port == args.port


# ---- health checks -----------------------------------------------------------------------------


def test_health_checks_probe_routes_the_api_serves() -> None:
    routes = _api_routes()
    assert {"/healthz", "/readyz"} <= routes
    _, path = _healthcheck_url(_service("api")["healthcheck"]["test"])
    assert path in routes
    (image_check,) = _dockerfile("HEALTHCHECK")
    image_port, image_path = _healthcheck_url(image_check)
    assert image_path in routes
    assert image_port == _cli(_dockerfile_exec_form("CMD")).port


def test_the_worker_does_not_inherit_the_http_health_check() -> None:
    # The image's HEALTHCHECK probes the API port, which a worker never opens: it would be
    # reported unhealthy for ever.
    assert _service("worker").get("healthcheck") == {"disable": True}


def test_postgres_has_a_health_check_and_keeps_its_data_on_a_volume() -> None:
    postgres = _service("postgres")
    assert str(postgres["image"]).startswith("postgres:")
    test = postgres["healthcheck"]["test"]
    assert "pg_isready" in (" ".join(test) if isinstance(test, list) else test)
    data_volumes = [str(v) for v in postgres.get("volumes", [])
                    if str(v).endswith(":/var/lib/postgresql/data")]
    assert data_volumes and data_volumes[0].split(":")[0] in _compose()["volumes"]


# ---- dependencies and scaling ------------------------------------------------------------------


@pytest.mark.parametrize("name", NAS_SERVICES)
def test_services_wait_for_a_healthy_database(name: str) -> None:
    depends_on = _service(name)["depends_on"]
    assert isinstance(depends_on, dict), "the list form of depends_on waits for nothing"
    assert depends_on["postgres"]["condition"] == "service_healthy"


def test_workers_start_after_the_api_migrated_and_do_not_migrate_themselves() -> None:
    worker = _service("worker")
    assert worker["depends_on"]["api"]["condition"] == "service_healthy"
    assert _environment(worker).get("NAS_MIGRATE") == "0"
    assert _environment(_service("api")).get("NAS_MIGRATE", "1") != "0"


def test_the_worker_scales() -> None:
    """``docker compose up --scale worker=N`` starts N identical containers: a fixed name or a
    fixed host port would make the second one fail."""
    worker = _service("worker")
    assert "container_name" not in worker and "hostname" not in worker
    for mapping in worker.get("ports", []):
        assert ":" not in str(mapping), f"fixed host port {mapping!r}"
    assert "deploy" not in worker or worker["deploy"].get("replicas", 1) >= 1


# ---- environment -------------------------------------------------------------------------------


def _all_nas_variables() -> dict[str, dict[str, str]]:
    """Every NAS_* variable the containers get, per place it is set."""
    places = {"Dockerfile ENV": _dockerfile_env()}
    for name in NAS_SERVICES:
        places[f"compose {name}"] = _environment(_service(name))
    return {place: {k: v for k, v in env.items() if k.startswith("NAS_")}
            for place, env in places.items()}


def test_every_nas_variable_is_a_setting_or_read_by_the_entrypoint() -> None:
    fields = {f"NAS_{name.upper()}" for name in Settings.model_fields}
    for place, env in _all_nas_variables().items():
        for name in env:
            if name in fields:
                continue
            reader = NON_SETTINGS_VARIABLES.get(name)
            assert reader is not None, f"{place}: {name} is no setting (misspelt?)"
            assert name in reader.read_text(), f"{name} is not read by {reader}"


@pytest.mark.parametrize("name", NAS_SERVICES)
def test_each_service_environment_makes_valid_settings(name: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for variable in [k for k in os.environ if k.startswith("NAS_")]:
        monkeypatch.delenv(variable)
    env = {**_dockerfile_env(), **_environment(_service(name))}
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    settings = Settings()  # raises on a value a setting refuses
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert str(settings.data_dir) == _dockerfile_env()["NAS_DATA_DIR"]


def test_the_database_url_matches_the_postgres_service() -> None:
    from sqlalchemy.engine import make_url

    postgres_env = _environment(_service("postgres"))
    for name in NAS_SERVICES:
        url = make_url(_environment(_service(name))["NAS_DATABASE_URL"])
        assert url.host == "postgres" and (url.port or 5432) == 5432
        assert url.username == postgres_env["POSTGRES_USER"]
        assert url.password == postgres_env["POSTGRES_PASSWORD"]
        assert url.database == postgres_env["POSTGRES_DB"]


# ---- volumes -----------------------------------------------------------------------------------


def _named_mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> named volume."""
    declared = _compose().get("volumes") or {}
    mounts = {}
    for volume in service.get("volumes", []):
        source, _, target = str(volume).partition(":")
        target = target.split(":")[0]
        if source in declared:
            mounts[target] = source
    return mounts


def _volume_holding(mounts: dict[str, str], path: PurePosixPath) -> str | None:
    for target, volume in mounts.items():
        if path == PurePosixPath(target) or PurePosixPath(target) in path.parents:
            return volume
    return None


def test_data_and_checkpoints_live_on_one_named_volume_shared_by_api_and_workers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers write checkpoints that the API serves: both must see the same folder, and it must
    outlive the containers (a named volume, not the container's own layer)."""
    import os

    for variable in [k for k in os.environ if k.startswith("NAS_")]:
        monkeypatch.delenv(variable)
    holders = {}
    for name in NAS_SERVICES:
        service = _service(name)
        with monkeypatch.context() as m:
            for variable, value in {**_dockerfile_env(), **_environment(service)}.items():
                m.setenv(variable, value)
            settings = Settings()
        assert settings.checkpoint_dir is not None
        mounts = _named_mounts(service)
        data = _volume_holding(mounts, PurePosixPath(settings.data_dir))
        checkpoints = _volume_holding(mounts, PurePosixPath(settings.checkpoint_dir))
        assert data is not None, f"{name}: {settings.data_dir} is on no named volume"
        assert checkpoints is not None, f"{name}: {settings.checkpoint_dir} is on no volume"
        holders[name] = checkpoints
    assert holders["api"] == holders["worker"]
    assert _dockerfile_env()["NAS_DATA_DIR"] in " ".join(_dockerfile("VOLUME"))
