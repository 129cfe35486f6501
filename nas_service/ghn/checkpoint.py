"""GHN checkpoints: safetensors weights with the model config (JSON) in the metadata. No pickle.

Metadata keys: ``format`` (``"nas-ghn/1"``), ``config`` (:class:`GHNConfig` as JSON), ``task``
(the task it was trained on) and ``training`` (a JSON record of how it was trained).
"""

from __future__ import annotations

import json
import os
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .model import GHNConfig, GraphHyperNetwork

CHECKPOINT_FORMAT = "nas-ghn/1"
BUNDLED_CHECKPOINT = "ghn-fashion-mnist.safetensors"


class CheckpointError(ValueError):
    """A GHN checkpoint is missing, unreadable or not a nas-ghn/1 file."""


def save_ghn(ghn: GraphHyperNetwork, path: str | os.PathLike, *, task: str,
             training: dict[str, Any] | None = None) -> Path:
    """Writes atomically (temporary file, then rename) so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in ghn.state_dict().items()}
    meta = {"format": CHECKPOINT_FORMAT, "config": ghn.config.to_json(), "task": task,
            "training": json.dumps(training or {})}
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"cannot read GHN checkpoint {path}: {e}") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint "
                              f"(format={meta.get('format')!r})")
    return {"config": json.loads(meta["config"]), "task": meta.get("task"),
            "training": json.loads(meta.get("training", "{}"))}


def bundled_checkpoint_path() -> Path:
    return Path(str(resources.files("nas_service") / "assets" / BUNDLED_CHECKPOINT))


def load_ghn(path: str | os.PathLike | None = None, device: str | torch.device | None = None
             ) -> GraphHyperNetwork:
    """Loads a GHN (the bundled Fashion-MNIST one by default) in eval mode.

    ``device`` defaults to ``$NAS_DEVICE``, else ``cuda`` when available, else ``cpu``.
    The returned module has ``.task`` and ``.training_record`` attributes from the metadata.
    Ops appended to the vocabulary after the checkpoint was trained get embedding rows
    (:meth:`~nas_service.ghn.GraphHyperNetwork.extend_ops`), so the GHN predicts parameters for
    every graph; ``.added_ops`` names them.
    """
    path = Path(path) if path is not None else bundled_checkpoint_path()
    if not path.is_file():
        raise CheckpointError(f"GHN checkpoint not found: {path}")
    meta = read_metadata(path)
    ghn = GraphHyperNetwork(GHNConfig.from_json(json.dumps(meta["config"])))
    try:
        state = load_file(str(path))
        ghn.load_state_dict(state)
    except (OSError, SafetensorError, RuntimeError) as e:
        raise CheckpointError(f"cannot load GHN weights from {path}: {e}") from None
    ghn.added_ops = ghn.extend_ops()
    ghn.task = meta["task"]
    ghn.training_record = meta["training"]
    return ghn.to(resolve_device(device)).eval()


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The one place the device is chosen: argument, else ``$NAS_DEVICE``, else cuda/cpu."""
    if device is None:
        device = os.environ.get("NAS_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
