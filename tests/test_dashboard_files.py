"""The dashboard's files and routes, without a browser: every file ships in the wheel, every
reference between them resolves, and the page, its configuration and its files are served as
the browser needs them (tests/test_dashboard_browser.py drives the pages themselves)."""

from __future__ import annotations

import glob
import json
import re
import sys
from pathlib import Path

import pytest

pytest.register_assert_rewrite("service_support")

from service_support import assert_problem  # noqa: E402

from nas_service.api.dashboard import STATIC_DIR, _script_json, static_files  # noqa: E402
from nas_service.spaces import SPACES  # noqa: E402

pytest_plugins = ("service_support",)
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "nas_service"

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

# Static imports (`from "./x.js"`), dynamic ones (`import("./x.js")`) and the page's references.
IMPORT = re.compile(r"""(?:\bfrom\s+|\bimport\s*\(\s*)["'](\.{1,2}/[^"']+)["']""")
PAGE_REFERENCE = re.compile(r"""(?:src|href)="/dashboard/([^"]+)\"""")


def test_every_dashboard_file_is_package_data() -> None:
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["package-data"]["nas_service"]
    shipped = {Path(PACKAGE, match).resolve()
               for pattern in patterns for match in glob.glob(pattern, root_dir=PACKAGE)}
    files = [p.resolve() for p in STATIC_DIR.rglob("*") if p.is_file()]
    assert len(files) >= 10
    missing = [str(p.relative_to(PACKAGE)) for p in files if p not in shipped]
    assert not missing, f"add these to [tool.setuptools.package-data]: {missing}"


def test_every_module_import_and_page_reference_resolves() -> None:
    served = static_files()
    scripts = [p for p in STATIC_DIR.rglob("*.js")]
    assert scripts
    for script in scripts:
        for target in IMPORT.findall(script.read_text()):
            resolved = (script.parent / target).resolve()
            assert resolved.is_file(), f"{script.name} imports {target}, which does not exist"
            assert resolved.relative_to(STATIC_DIR.resolve()).as_posix() in served
    references = PAGE_REFERENCE.findall((STATIC_DIR / "index.html").read_text())
    assert {"app.js", "style.css", "favicon.svg"} <= set(references)
    assert all(ref in served for ref in references), references


def test_script_json_cannot_close_its_script_element() -> None:
    value = {"name": "</script><script>alert(1)</script><!-- & -->"}
    text = _script_json(value)
    assert not set(text) & set("<>&")
    assert json.loads(text) == value


def test_the_page_embeds_its_configuration_under_a_strict_policy(make_client) -> None:
    client = make_client(api_keys=("dashboard-key-with-enough-entropy",))
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "unsafe" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    config = re.search(r'<script type="application/json" id="nas-config">(.*?)</script>',
                       page.text, re.S)
    assert config, page.text
    assert json.loads(config.group(1)) == {
        "version": client.app.version, "spaces": sorted(SPACES),
        "strategies": ["random", "evolution"], "max_search_candidates": 10_000,
        "auth_required": True}
    # The page and its files need no key; the API still does.
    assert client.get("/dashboard/app.js").status_code == 200
    assert_problem(client.get("/v1/tasks"), 401, "unauthorized")
    assert "/" not in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize(("path", "media_type"), [
    ("app.js", "text/javascript; charset=utf-8"),
    ("pages/job.js", "text/javascript; charset=utf-8"),
    ("style.css", "text/css; charset=utf-8"),
    ("favicon.svg", "image/svg+xml"),
])
def test_files_are_served_with_the_type_a_browser_requires(client, path, media_type) -> None:
    response = client.get(f"/dashboard/{path}")
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert response.content == (STATIC_DIR / path).read_bytes()


@pytest.mark.parametrize("path", [
    "index.html",              # the page lives at / only (it needs its configuration)
    "nope.js",
    "../__init__.py",
    "..%2F__init__.py",
    "pages/../../__init__.py",
    "%00",
    "x" * 300,
])
def test_anything_else_under_dashboard_is_a_404_problem(client, path) -> None:
    response = client.get(f"/dashboard/{path}")
    assert_problem(response, 404)
    assert b"import" not in response.content  # no file's content, whatever the path
