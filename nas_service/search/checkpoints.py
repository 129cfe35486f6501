"""Content-addressed checkpoint files: safetensors of predicted weights, named by their SHA-256.

A candidate checkpoint holds ``to_module(graph).state_dict()`` (parameters and the recalibrated
batch-norm buffers) and, in the safetensors metadata, everything needed to use it without the
service (``docs/api.md``, "Checkpoints"):

=================  ============================================================================
``format``         ``"nas-checkpoint/1"``
``graph``          the ``nas-graph/1`` document (JSON): ``to_module(ArchitectureGraph.from_json(
                   metadata["graph"]))`` rebuilds the network the tensors fit
``content_hash``   the graph's content hash
``task``           the task the weights were predicted and scored for
``scores``         JSON: ``{"value", "name", "split", "images", "recalibration_images"}``
``ghn_version``    which GHN predicted them
=================  ============================================================================

Guarantees of :class:`CheckpointStore`:

- a file appears under its final name complete or not at all (written to a temporary file in the
  same folder, flushed to disk, then renamed over the final name);
- the name is the SHA-256 of the bytes, so the same bytes are stored once and a download can be
  checked against its name (the HTTP ``ETag``);
- paths stored in the database are relative to the store's root, so the API and workers on other
  machines find the files wherever the shared volume is mounted;
- :meth:`CheckpointStore.verify` tells whether a file still holds the bytes its name promises
  (a file altered or truncated on disk is never served under its old ETag); a file is hashed
  once per (inode, size, modification time).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from nas_service.graph import ArchitectureGraph

CHECKPOINT_FORMAT = "nas-checkpoint/1"
SUFFIX = ".safetensors"
VERIFIED_FILES = 4096
"""How many verified files the store remembers (their stat signatures) before hashing again."""


@dataclass(frozen=True)
class StoredCheckpoint:
    sha256: str
    relative_path: str  # what the database stores
    path: Path
    size_bytes: int


def checkpoint_metadata(graph: ArchitectureGraph, *, task: str, scores: Mapping[str, Any],
                        ghn_version: str) -> dict[str, str]:
    """The safetensors metadata of a candidate checkpoint (string values only, as the format
    requires)."""
    return {"format": CHECKPOINT_FORMAT, "graph": graph.to_json(),
            "content_hash": graph.content_hash(), "task": task,
            "scores": json.dumps(dict(scores), sort_keys=True), "ghn_version": ghn_version}


class CheckpointStore:
    """Files under ``root``, at ``<first two hex digits>/<sha256>.safetensors``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self._verified: OrderedDict[tuple[str, int, int, int], str] = OrderedDict()
        self._verified_lock = threading.Lock()

    def write(self, tensors: Mapping[str, torch.Tensor],
              metadata: Mapping[str, str]) -> StoredCheckpoint:
        """Serialises ``tensors`` with ``metadata`` and stores the file under its hash."""
        data = save({k: v.contiguous() for k, v in tensors.items()}, metadata=dict(metadata))
        sha = hashlib.sha256(data).hexdigest()
        relative = f"{sha[:2]}/{sha}{SUFFIX}"
        path = self.root / relative
        if not (path.is_file() and path.stat().st_size == len(data)):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{sha[:12]}-", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return StoredCheckpoint(sha, relative, path, len(data))

    def resolve(self, stored_path: str) -> Path | None:
        """The file a database row names, or ``None`` when it is not a file inside the store
        (missing, or a path that would escape the root)."""
        path = Path(stored_path)
        path = (path if path.is_absolute() else self.root / path).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            return None
        return path

    def verify(self, path: Path, sha256: str) -> bool:
        """Whether the file at ``path`` hashes to ``sha256`` (a file this store resolved)."""
        stat = path.stat()
        signature = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        with self._verified_lock:
            if self._verified.get(signature) == sha256:
                self._verified.move_to_end(signature)
                return True
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != sha256:
            return False
        with self._verified_lock:
            self._verified[signature] = sha256
            while len(self._verified) > VERIFIED_FILES:
                self._verified.popitem(last=False)
        return True
