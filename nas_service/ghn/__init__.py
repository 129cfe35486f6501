"""The graph hypernetwork: featurisation, PyG message passing, decoder, checkpoint I/O."""

from .features import FeatureCache, ParameterRequest, featurize, parameter_requests
from .model import (
    GHNConfig,
    GHNLayer,
    GraphHyperNetwork,
    UnsupportedArchitectureError,
    UnsupportedTaskError,
)

__all__ = [
    "FeatureCache",
    "GHNConfig",
    "GHNLayer",
    "GraphHyperNetwork",
    "ParameterRequest",
    "UnsupportedArchitectureError",
    "UnsupportedTaskError",
    "featurize",
    "parameter_requests",
]
