"""The one representation of an architecture: ``nas-graph/1`` documents, validation, shape
inference, parameter/MAC counting, and conversion to and from ``torch.nn.Module``."""

from .architecture import FORMAT, ArchitectureGraph, GraphNode
from .builder import GraphBuilder
from .errors import GraphProblem, GraphValidationError
from .limits import DEFAULT_LIMITS, GraphLimits
from .network import GraphNetwork, materialize, meta_network, to_module
from .ops import ACTIVATIONS, OP_NAMES, OPS, OpSpec
from .tracing import UnsupportedModuleError, from_module, map_state_dict

__all__ = [
    "ACTIVATIONS",
    "DEFAULT_LIMITS",
    "FORMAT",
    "OPS",
    "OP_NAMES",
    "ArchitectureGraph",
    "GraphBuilder",
    "GraphLimits",
    "GraphNetwork",
    "GraphNode",
    "GraphProblem",
    "GraphValidationError",
    "OpSpec",
    "UnsupportedModuleError",
    "from_module",
    "map_state_dict",
    "materialize",
    "meta_network",
    "to_module",
]
