"""The repository's foundation keeps its promises: packaging metadata, the two README commands,
what CI runs, and the container files."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import nas_service

REPO = Path(__file__).resolve().parent.parent
PINNED_TORCH = "2.13.0"

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _section(markdown: str, heading: str) -> str:
    """The text under ``## heading`` up to the next ``## ``."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    assert match, f"README has no '## {heading}' section"
    return match.group(1)


def _code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.M | re.S)


def _readme_commands() -> list[str]:
    section = _section((REPO / "README.md").read_text(), "Quick start")
    blocks = _code_blocks(section, "sh")
    assert blocks, "the Quick start section has no ```sh block"
    return [line.strip() for line in blocks[0].splitlines() if line.strip()]


# ---- pyproject ---------------------------------------------------------------------------------


def test_torch_requirement_admits_the_pinned_cpu_build() -> None:
    reqs = [r for r in _pyproject()["project"]["dependencies"]
            if re.match(r"torch\b(?![-_])", r)]
    assert len(reqs) == 1, reqs
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - packaging ships with pip's toolchain almost always
        bounds = re.findall(r"(>=|<=|==|<|>)\s*([\d.]+)", reqs[0])

        def key(v: str) -> tuple[int, ...]:
            return tuple(int(p) for p in v.split("."))

        ops = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b,
               "<": lambda a, b: a < b, ">": lambda a, b: a > b}
        assert all(ops[op](key(PINNED_TORCH), key(v)) for op, v in bounds), reqs[0]
    else:
        assert Requirement(reqs[0]).specifier.contains(PINNED_TORCH), reqs[0]


def test_console_script_points_at_the_command_line_main() -> None:
    from importlib import metadata

    from nas_service.commands import main

    declared = "nas_service.commands:main"
    assert _pyproject()["project"]["scripts"]["nas-service"] == declared
    try:
        scripts = metadata.entry_points(group="console_scripts")
    except TypeError:  # pragma: no cover
        pytest.skip("importlib.metadata too old")
    installed = [ep for ep in scripts if ep.name == "nas-service"]
    if not installed:
        pytest.skip("the project is not installed (run make test)")
    if installed[0].value != declared:
        pytest.skip(f"the installed entry point {installed[0].value!r} predates pyproject.toml's "
                    "(reinstall: make test)")
    assert installed[0].load() is main


def test_installed_version_is_the_package_version() -> None:
    from importlib import metadata

    try:
        assert metadata.version("nas-service") == nas_service.__version__
    except metadata.PackageNotFoundError:
        pytest.skip("the project is not installed (run make test)")


def test_importing_the_package_loads_nothing_heavier_than_the_graph_layer() -> None:
    heavy = ("fastapi", "sqlalchemy", "uvicorn", "torch_geometric", "nas_service.training",
             "nas_service.scoring")
    code = f"import sys, nas_service; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert out.strip() == "[]"


# ---- README, Makefile, CI ----------------------------------------------------------------------


def test_surrogate_functions_are_exported_lazily() -> None:
    from nas_service.scoring import surrogate

    assert nas_service.predict_parameters is surrogate.predict_parameters
    assert nas_service.surrogate_accuracy is surrogate.surrogate_accuracy
    with pytest.raises(AttributeError):
        _ = nas_service.no_such_name


def test_readme_quick_start_is_exactly_make_run_and_make_test() -> None:
    assert _readme_commands() == ["make run", "make test"]


def test_ci_runs_the_readme_test_command() -> None:
    test_command = next(c for c in _readme_commands() if "test" in c)
    ci = REPO / ".ci" / "run"
    text = ci.read_text()
    assert os.access(ci, os.X_OK), ".ci/run must be executable"
    assert "set -euo pipefail" in text
    assert any(line.strip() == test_command for line in text.splitlines()), (
        f".ci/run does not run {test_command!r}")


def _make_dry_run(*targets: str) -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # -n prints the recipes without running them; -B pretends every target is out of date.
    result = subprocess.run(["make", "-n", "-B", *targets], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_installs_the_pinned_torch_before_the_project() -> None:
    recipe = _make_dry_run(".venv/.installed")
    torch_at = recipe.find(f'pip install "torch=={PINNED_TORCH}"')
    project_at = recipe.find("pip install -e '.[dev]'")
    assert torch_at != -1, recipe
    assert project_at != -1, recipe
    assert torch_at < project_at


def test_make_test_sets_up_data_then_runs_pytest_and_ruff() -> None:
    recipe = _make_dry_run("test")
    assert "apt-get install" in recipe and "dataset-fashion-mnist" in recipe
    assert "/bin/pytest -q" in recipe
    assert "/bin/ruff check ." in recipe
    assert "source " not in recipe


def test_make_run_runs_the_serve_command() -> None:
    makefile = (REPO / "Makefile").read_text()
    serve_cmd = re.search(r"^SERVE_CMD \?= (.+)$", makefile, re.M)
    assert serve_cmd, "Makefile must define SERVE_CMD"
    assert f"nas-service {serve_cmd.group(1).strip()}" in _make_dry_run("run")


def test_readme_layout_names_only_folders_that_exist() -> None:
    layout = _code_blocks(_section((REPO / "README.md").read_text(), "Layout"), "")
    assert layout, "the Layout section has no code block"
    packages = re.findall(r"^  ([a-z_]+)/ ", layout[0], re.M)
    assert packages, layout[0]
    for name in packages:
        assert list((REPO / "nas_service" / name).glob("*.py")), f"nas_service/{name}/ is empty"
    for name in re.findall(r"^([a-z_.]+)/ ", layout[0], re.M):
        assert (REPO / name).is_dir(), name


def test_readme_library_example_runs() -> None:
    if not hasattr(nas_service, "from_module"):
        pytest.skip("nas_service.from_module has not landed yet")
    blocks = _code_blocks(_section((REPO / "README.md").read_text(), "Using the library"), "python")
    assert blocks
    exec(compile(blocks[0], "README.md", "exec"), {"print": lambda *a, **k: None})


# ---- containers --------------------------------------------------------------------------------


def test_dockerfile_pins_torch_and_wires_the_entrypoint() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert f"ARG TORCH_VERSION={PINNED_TORCH}" in text
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert 'ENTRYPOINT ["/app/docker/entrypoint.sh"]' in text
    assert 'CMD ["nas-service", "serve", "--host", "0.0.0.0", "--port", "8000"]' in text


def test_compose_defines_postgres_api_and_scalable_workers() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "api", "worker"} <= set(services)
    assert "pg_isready" in str(services["postgres"]["healthcheck"]["test"])
    api, worker = services["api"], services["worker"]
    assert api["environment"]["NAS_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert api["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "8000:8000" in api["ports"]
    assert "healthz" in str(api["healthcheck"]["test"])
    assert worker["command"] == ["nas-service", "worker"]
    assert worker["environment"]["NAS_DATABASE_URL"] == api["environment"]["NAS_DATABASE_URL"]
    # `docker compose up --scale worker=N` needs workers without fixed names or host ports.
    assert "container_name" not in worker and "ports" not in worker


@pytest.fixture
def fake_image_path(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A PATH with a `nas-service` that logs its arguments and the `python` the entrypoint uses."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    script = bin_dir / "nas-service"
    script.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\n')
    script.chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    env = {"PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin", "NAS_DB_WAIT_SECONDS": "1"}
    return env, log


def _entrypoint(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("sh") is None:
        pytest.skip("no POSIX shell")
    return subprocess.run(["sh", str(REPO / "docker" / "entrypoint.sh"), *argv], env=env,
                          capture_output=True, text=True, timeout=60)


def test_entrypoint_migrates_before_serve_then_execs(fake_image_path) -> None:
    env, log = fake_image_path
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        env["NAS_DATABASE_URL"] = f"postgresql+psycopg://nas:nas@127.0.0.1:{port}/nas"
        result = _entrypoint(env, "nas-service", "serve", "--port", "8000")
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == ["db upgrade", "serve --port 8000"]


def test_entrypoint_skips_migration_when_told_and_for_other_commands(fake_image_path) -> None:
    env, log = fake_image_path
    assert _entrypoint({**env, "NAS_MIGRATE": "0"}, "nas-service", "worker").returncode == 0
    assert _entrypoint(env, "nas-service", "info").returncode == 0
    assert log.read_text().splitlines() == ["worker", "info"]


def test_entrypoint_gives_up_on_an_unreachable_database(fake_image_path) -> None:
    env, log = fake_image_path
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]  # closed when the block ends: nothing listens there
    env["NAS_DATABASE_URL"] = f"postgresql://nas:nas@127.0.0.1:{port}/nas"
    result = _entrypoint(env, "nas-service", "serve")
    assert result.returncode != 0
    assert "not reachable" in result.stderr
    assert not log.exists()
