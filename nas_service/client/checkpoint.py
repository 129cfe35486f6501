"""A checkpoint downloaded by :mod:`nas_service.client`: a ``nas-checkpoint/1`` safetensors file.

:class:`CheckpointFile` holds the verified bytes (the client checks their SHA-256 against the
``ETag`` and the metadata's format) and rebuilds the network from the graph JSON in the
metadata with ``to_module`` and ``load_state_dict(strict=True)``. :func:`safetensors_metadata`
reads the header without torch or safetensors, so a file is checked before anything loads it.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas_service.client.errors import InvalidCheckpoint

if TYPE_CHECKING:
    import torch

    from nas_service.graph import ArchitectureGraph, GraphNetwork

CHECKPOINT_FORMAT = "nas-checkpoint/1"  # nas_service.search.checkpoints, without importing it


@dataclass(frozen=True)
class CheckpointFile:
    """A downloaded checkpoint: the safetensors bytes, their SHA-256 (checked against the
    ``ETag``), the metadata (``format``, ``graph``, ``content_hash``, ``task``, ``scores``,
    ``ghn_version``; all strings) and where it came from."""

    data: bytes = field(repr=False)
    sha256: str
    metadata: dict[str, str]
    url: str

    @property
    def graph(self) -> ArchitectureGraph:
        from nas_service.graph import ArchitectureGraph

        return ArchitectureGraph.from_json(self.metadata["graph"])

    @property
    def scores(self) -> dict[str, Any]:
        return json.loads(self.metadata.get("scores") or "{}")

    def state_dict(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load

        return load(self.data)

    def module(self) -> GraphNetwork:
        """``to_module(graph)`` with these weights loaded (strict), in eval mode: the predicted
        parameters and recalibrated batch-norm statistics are what the score was measured with."""
        from nas_service.graph import to_module

        net = to_module(self.graph, initialize=False)
        net.load_state_dict(self.state_dict(), strict=True)
        return net.eval()

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> CheckpointFile:
        """A checkpoint saved before (``nas-service download``, :meth:`save`); raises
        :class:`InvalidCheckpoint` when the file is not a ``nas-checkpoint/1`` file."""
        import hashlib

        data = Path(path).read_bytes()
        metadata = safetensors_metadata(data)
        if metadata.get("format") != CHECKPOINT_FORMAT or "graph" not in metadata:
            raise InvalidCheckpoint(f"{path}: not a {CHECKPOINT_FORMAT} file "
                                    f"(format {metadata.get('format')!r})")
        return cls(data=data, sha256=hashlib.sha256(data).hexdigest(), metadata=metadata,
                   url=Path(path).resolve().as_uri())

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Writes the file (complete or not at all: a temporary file renamed over ``path``)."""
        target = Path(path)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            tmp.write_bytes(self.data)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return target


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file: an 8-byte little-endian header length, then
    the JSON header. Raises :class:`InvalidCheckpoint` for anything else."""
    if len(data) < 8:
        raise InvalidCheckpoint("not a safetensors file: shorter than its header length")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise InvalidCheckpoint("not a safetensors file: the header is cut off")
    try:
        header = json.loads(data[8:8 + size])
    except ValueError:
        raise InvalidCheckpoint("not a safetensors file: the header is not JSON") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in (metadata or {}).items()}
