"""The web dashboard: a single page served at ``/``, its files under ``/dashboard/``.

The dashboard is plain HTML, CSS and JavaScript modules in ``static/`` (no build step, nothing
fetched from elsewhere, so it works offline). It is a client of the ``/v1`` API like any other:
it holds no privileges, and when API keys are on the user pastes one, which the browser keeps
and sends. The page and its files are therefore never behind a key themselves.

Only the files present in ``static/`` when the app is built are served, looked up by exact name:
a request path never reaches the file system, and the metrics see one route template
(``/dashboard/{path}``) however many files there are. The page gets a strict Content Security
Policy: scripts, styles and requests from this origin only, no inline script, so an API string
that slipped past the dashboard's escaping still could not run.
"""

from __future__ import annotations

import json
import mimetypes
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse

from nas_service.spaces import SPACES
from nas_service.version import __version__

from ..deps import ServiceDep, ServiceState
from ..errors import Problem

STATIC_DIR = Path(__file__).parent / "static"
CONFIG_PLACEHOLDER = "{{NAS_DASHBOARD_CONFIG}}"

# mimetypes reads /etc/mime.types, which differs between machines: the types that matter to a
# browser (a module script must be served as JavaScript) are fixed here.
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml",
               ".json": "application/json"}

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self' data: blob:",
    "connect-src 'self'", "base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'",
])
COMMON_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                  # Revalidated on every load: an upgraded service never runs yesterday's script.
                  "Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False, tags=["dashboard"])


@lru_cache(maxsize=1)
def static_files() -> dict[str, Path]:
    """``{"pages/job.js": <path>, ...}``: every file the dashboard serves, by its URL path."""
    return {p.relative_to(STATIC_DIR).as_posix(): p
            for p in sorted(STATIC_DIR.rglob("*")) if p.is_file() and p.name != "index.html"}


def dashboard_config(state: ServiceState) -> dict[str, Any]:
    """What the page needs before its first API call: the choices of the forms, and whether it
    must ask for a key."""
    return {"version": __version__, "spaces": sorted(SPACES),
            "strategies": ["random", "evolution"],
            "max_search_candidates": state.settings.max_search_candidates,
            "auth_required": state.api_keys.enabled}


def _script_json(value: Any) -> str:
    """JSON safe inside a ``<script type="application/json">`` element: no ``</script>``, no
    ``<!--``, whatever the strings hold."""
    return (json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("&", "\\u0026"))


@lru_cache(maxsize=1)
def _index_template() -> str:
    return (STATIC_DIR / "index.html").read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse)
def index(service: ServiceDep) -> HTMLResponse:
    """The dashboard's single page; it routes on the URL's fragment (``#/jobs/<id>``)."""
    page = _index_template().replace(CONFIG_PLACEHOLDER, _script_json(dashboard_config(service)))
    return HTMLResponse(page, headers={**COMMON_HEADERS,
                                       "Content-Security-Policy": CONTENT_SECURITY_POLICY})


@router.get("/dashboard/{path:path}")
def static_file(path: str) -> FileResponse:
    """One of the dashboard's files (scripts, styles, icon), by exact name."""
    file = static_files().get(path)
    if file is None:
        shown = path if len(path) <= 64 else path[:64] + "..."
        raise Problem(404, f"no dashboard file {shown!r}", slug="not-found", title="Not found")
    media_type = MEDIA_TYPES.get(file.suffix) or mimetypes.guess_type(file.name)[0]
    return FileResponse(file, media_type=media_type or "application/octet-stream",
                        headers=COMMON_HEADERS)
