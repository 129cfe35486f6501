"""The files of a GHN adapted to added tasks: its weights, one small safetensors file per task
embedding, and a manifest that names the set being served.

A folder (``NAS_ADAPTED_GHN_DIR``) holds::

    served.json                       {"format": "nas-ghn-served/1", "generation": 3,
                                       "ghn": "ghn-0003.safetensors",
                                       "tasks": {"my-task": "tasks/my-task-0003.safetensors"},
                                       "base": "<SHA-256 of the checkpoint it was adapted from>"}
    ghn-0003.safetensors              the adapted weights (a nas-ghn/1 checkpoint)
    tasks/my-task-0003.safetensors    the task's embedding (``nas-ghn-task/1``: one tensor,
                                      ``embedding``, with the task's name in the metadata)

Every generation writes new files and then replaces ``served.json`` atomically, so a reader sees
either the old set or the new one, never a mix; the bundled checkpoint is never written.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .checkpoint import CheckpointError, load_ghn, save_ghn
from .model import GraphHyperNetwork

TASK_EMBEDDING_FORMAT = "nas-ghn-task/1"
SERVED_FORMAT = "nas-ghn-served/1"
MANIFEST = "served.json"


def save_task_embedding(path: str | os.PathLike[str], task: str, embedding: torch.Tensor,
                        record: dict[str, Any] | None = None) -> Path:
    """Write one task's embedding (atomically: a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": TASK_EMBEDDING_FORMAT, "task": task, "record": json.dumps(record or {})}
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file({"embedding": embedding.detach().float().cpu().contiguous()}, tmp,
                  metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_task_embedding(path: str | os.PathLike[str]) -> tuple[str, torch.Tensor]:
    """``(task name, embedding)`` of a file :func:`save_task_embedding` wrote."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"cannot read task embedding {path}: {e}") from None
    if meta.get("format") != TASK_EMBEDDING_FORMAT or "embedding" not in tensors:
        raise CheckpointError(f"{path} is not a {TASK_EMBEDDING_FORMAT} file")
    return meta["task"], tensors["embedding"]


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The served set of ``folder``; ``None`` when nothing was adapted there yet."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != SERVED_FORMAT:
        raise CheckpointError(f"{path} is not a {SERVED_FORMAT} manifest")
    return manifest


def load_served(folder: str | os.PathLike[str], device: str | torch.device | None = None
                ) -> tuple[GraphHyperNetwork, dict[str, Any]] | None:
    """The adapted GHN of ``folder`` with every served task's embedding added, and its
    manifest; ``None`` when the folder serves nothing yet."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    ghn = load_ghn(folder / manifest["ghn"], device)
    for name, file in manifest.get("tasks", {}).items():
        stored, embedding = load_task_embedding(folder / file)
        if stored != name:
            raise CheckpointError(f"{folder / file} holds the embedding of {stored!r}, the "
                                  f"manifest says {name!r}")
        ghn.add_task(name, embedding)
    return ghn, manifest


def save_served(folder: str | os.PathLike[str], ghn: GraphHyperNetwork, *, base: str,
                training: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``ghn`` and every embedding it holds as the next generation of ``folder`` and
    serve it (``served.json`` replaced last). ``base``: the SHA-256 of the checkpoint the
    adaptation started from. Returns the new manifest."""
    folder = Path(folder)
    previous = read_manifest(folder)
    generation = (previous or {}).get("generation", 0) + 1
    ghn_file = f"ghn-{generation:04d}.safetensors"
    save_ghn(ghn, folder / ghn_file, task=getattr(ghn, "task", None) or "",
             training=training)
    tasks = {}
    for name, embedding in ghn.task_embeddings.items():
        file = f"tasks/{name}-{generation:04d}.safetensors"
        save_task_embedding(folder / file, name, embedding)
        tasks[name] = file
    manifest = {"format": SERVED_FORMAT, "generation": generation, "ghn": ghn_file,
                "tasks": tasks, "base": base}
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(manifest, f, indent=2)
        os.replace(tmp, folder / MANIFEST)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _prune(folder, [manifest, previous])
    return manifest


def _prune(folder: Path, keep: list[dict[str, Any] | None]) -> None:
    """Delete the files of generations older than the two newest (a reader may still be
    loading the previous one)."""
    kept = {folder / m["ghn"] for m in keep if m} | {
        folder / file for m in keep if m for file in m.get("tasks", {}).values()}
    for path in [*folder.glob("ghn-*.safetensors"), *folder.glob("tasks/*.safetensors")]:
        if path not in kept:
            path.unlink(missing_ok=True)
