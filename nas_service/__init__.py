"""nas-service: neural architecture search with graph hypernetworks.

The public facade of the library. Everything a user scripts against is importable from here::

    from nas_service import ArchitectureGraph, GraphBuilder, from_module, to_module
    from nas_service import load_ghn, predict_parameters, surrogate_accuracy

Importing this package loads the graph layer (and so torch) and nothing heavier: the surrogate
(``predict_parameters``, ``surrogate_accuracy``) is imported on first use, and the web and database
stack only by ``nas_service.api`` and ``nas_service.db``.
"""

import importlib
from typing import Any

from nas_service.graph import (
    ArchitectureGraph,
    GraphBuilder,
    GraphValidationError,
    UnsupportedModuleError,
    from_module,
    to_module,
)
from nas_service.version import __version__

__all__ = [
    "ArchitectureGraph",
    "GraphBuilder",
    "GraphValidationError",
    "UnsupportedModuleError",
    "__version__",
    "from_module",
    "load_ghn",
    "predict_parameters",
    "surrogate_accuracy",
    "to_module",
]

# Resolved on first use: the surrogate pulls in torch-geometric and the data layer, which a script
# that only builds or validates graphs should not pay for at import time.
_LAZY = {
    "load_ghn": "nas_service.scoring.surrogate",
    "predict_parameters": "nas_service.scoring.surrogate",
    "surrogate_accuracy": "nas_service.scoring.surrogate",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
