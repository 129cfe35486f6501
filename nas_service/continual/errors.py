"""The one error type of the continual-learning layer."""

from __future__ import annotations

__all__ = ["ContinualError"]


class ContinualError(ValueError):
    """A bad configuration or argument: a non-positive size, an unknown task, a negative
    regularisation strength, tasks that do not fit the network. The message names the value."""
