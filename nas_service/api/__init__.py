"""The HTTP API: a FastAPI app with one router per resource, RFC 9457 problems for every error,
optional API keys, Prometheus metrics. Nothing imports this package; it imports everything.

::

    from nas_service.api import create_app
    app = create_app()            # settings from NAS_* variables; uvicorn.run(app)

``docs/api.md`` documents the endpoints.
"""

from .app import create_app, graph_limits, load_scorer
from .deps import ServiceState

__all__ = ["ServiceState", "create_app", "graph_limits", "load_scorer"]
