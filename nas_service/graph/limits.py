"""Bounds that keep a hostile or mistaken graph from exhausting memory or time.

Every count is checked with Python integers during validation, before any tensor is allocated.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GraphLimits:
    max_nodes: int = 4096
    max_inputs_per_node: int = 64
    max_id_length: int = 128
    max_channels: int = 16384
    max_input_channels: int = 64
    max_input_size: int = 1024
    """Largest height/width (or token count) of the input."""
    max_kernel_size: int = 64
    max_activation_elements: int = 64 * 1024 * 1024
    """Largest number of elements of one node's output, per sample."""
    max_parameters: int = 200_000_000
    max_parameters_per_node: int = 100_000_000
    max_flops: int = 200_000_000_000
    """Multiply-accumulates of one forward pass of one sample."""


DEFAULT_LIMITS = GraphLimits()
