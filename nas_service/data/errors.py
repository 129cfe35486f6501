"""The single exception type raised for dataset problems."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DatasetError"]


class DatasetError(Exception):
    """A task could not be found, located or decoded.

    Every problem caused by the files on disk (missing, unreadable, truncated, corrupt,
    inconsistent) or by an unknown task name surfaces as this type, never as a raw
    ``OSError``/``EOFError``/``pickle.UnpicklingError``/``ValueError``. The message names
    the task, the folder, the offending file and the reason, so that it can be shown to an
    operator as is. The same facts are kept as attributes for programmatic use.

    Attributes:
        task: canonical task name, or ``None`` when the name itself was the problem.
        root: folder that was searched, when one was resolved.
        filename: file (relative to ``root`` where possible) that was missing or malformed.
        reason: the bare reason, without the task/folder/file prefix.
    """

    def __init__(
        self,
        reason: str,
        *,
        task: str | None = None,
        root: str | Path | None = None,
        filename: str | None = None,
    ) -> None:
        self.task = task
        self.root = Path(root) if root is not None else None
        self.filename = filename
        self.reason = reason
        super().__init__(self._compose())

    def _compose(self) -> str:
        parts: list[str] = []
        if self.task is not None:
            parts.append(f"task {self.task!r}")
        if self.root is not None:
            parts.append(f"folder {str(self.root)!r}")
        if self.filename is not None:
            parts.append(f"file {self.filename!r}")
        prefix = ", ".join(parts)
        return f"{prefix}: {self.reason}" if prefix else self.reason
