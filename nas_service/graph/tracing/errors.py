"""How a conversion refuses: one error for the caller, one for a rule.

:class:`UnsupportedModuleError` is what :func:`~nas_service.graph.tracing.from_module` raises,
with every problem at once. :class:`_Unsupported` is what a conversion rule raises for the
one call it converts; the converter records its message against that node and goes on, so the
final :class:`UnsupportedModuleError` lists each problem that contributes to the output.
"""

from __future__ import annotations

from collections.abc import Sequence


class UnsupportedModuleError(ValueError):
    """The module uses layers or calls that ``nas-graph/1`` cannot express, or fx cannot trace it.

    ``unsupported`` lists every offending layer (``"<qualified name> (<type>): <reason>"``) or
    call, all at once, so a user fixes a model in one round trip.
    """

    def __init__(self, message: str, unsupported: Sequence[str] = ()):
        self.unsupported = list(unsupported)
        if self.unsupported:
            message += "".join(f"\n  - {u}" for u in self.unsupported)
        super().__init__(message)


class _Unsupported(Exception):
    """Raised by a conversion rule: this call cannot be expressed (the message says why)."""
