"""The graph hypernetwork: featurisation, PyG message passing, decoder, checkpoint I/O."""

from .features import FeatureCache, ParameterRequest, featurize, parameter_requests
from .model import GHNConfig, GHNLayer, GraphHyperNetwork, UnsupportedArchitectureError

__all__ = [
    "FeatureCache",
    "GHNConfig",
    "GHNLayer",
    "GraphHyperNetwork",
    "ParameterRequest",
    "UnsupportedArchitectureError",
    "featurize",
    "parameter_requests",
]
