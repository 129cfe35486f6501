"""Checkpoint downloads, shared by architectures and candidates: ``ETag`` is the file's SHA-256,
``If-None-Match`` is honoured (304), the body is the safetensors file as stored, checked against
its SHA-256 before it is served: a file altered or truncated on disk is a 404
``checkpoint-damaged`` problem (and an error in the log), never its old ETag over other bytes."""

from __future__ import annotations

import logging

from fastapi import Response
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from nas_service.db import Architecture, catalog

from ..deps import ServiceState
from ..errors import Problem

log = logging.getLogger("nas_service.api")

MEDIA_TYPE = "application/octet-stream"
# The OpenAPI description of the ETag header of 200 and 304 answers.
ETAG = {"ETag": {"description": "the file's SHA-256, quoted", "schema": {"type": "string"}}}


def etag_of(sha256: str) -> str:
    return f'"{sha256}"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 13.1.2: ``*`` or any listed tag equal to ``etag`` under weak comparison."""
    if not if_none_match:
        return False
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


def checkpoint_response(session: Session, service: ServiceState, architecture: Architecture,
                        if_none_match: str | None, *, filename: str) -> Response:
    if architecture.checkpoint_id is None:
        raise Problem(404, f"architecture {architecture.id} has no checkpoint",
                      slug="no-checkpoint", title="No checkpoint")
    etag = etag_of(architecture.checkpoint_id)
    headers = {"ETag": etag, "Cache-Control": "private, max-age=31536000, immutable"}
    if etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    row = catalog.get_checkpoint(session, architecture.checkpoint_id)
    path = service.store.resolve(row.path) if row is not None else None
    if path is None:
        raise Problem(404, f"the checkpoint file of architecture {architecture.id} is missing "
                      f"from {service.store.root}", slug="checkpoint-missing",
                      title="Checkpoint file missing")
    try:
        intact = service.store.verify(path, architecture.checkpoint_id)
    except OSError:
        intact = False
    if not intact:
        log.error("checkpoint %s of architecture %s does not match its SHA-256: %s",
                  architecture.checkpoint_id, architecture.id, path)
        raise Problem(404, f"the checkpoint file of architecture {architecture.id} is damaged "
                      "(its content no longer matches its SHA-256)", slug="checkpoint-damaged",
                      title="Checkpoint file damaged")
    return FileResponse(path, media_type=MEDIA_TYPE, filename=filename, headers=headers)
