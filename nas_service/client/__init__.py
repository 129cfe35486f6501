"""A Python client for the nas-service ``/v1`` API (sync, on httpx).

Scripts and notebooks talk to a running service without writing HTTP by hand: answers come back
as frozen dataclasses mirroring the API's JSON, problem+json errors as typed exceptions, and a
downloaded checkpoint as a runnable ``torch.nn.Module``::

    from nas_service.client import Client, NotFound

    with Client("http://127.0.0.1:8000", api_key="...") as nas:
        result = nas.predict(my_torch_model)          # or a graph, or {"space": "cells", "seed": 3}
        print(result.accuracy, result.num_parameters, result.cached)

        job = nas.submit_search(space="cells", candidates=200, max_flops=50_000_000)
        job = nas.wait(job)                           # tqdm bar: candidates done / total
        best = nas.candidates(job, top=5)             # best first
        net = nas.download_checkpoint(best[0], path="best.safetensors")

Requests that got no answer, and ``503``/``429`` answers, are retried with backoff; every request
the client sends is safe to repeat. The full guide is docs/client.md. The package is cut as
``connection`` (:class:`Client`: httpx, retries, waiting), ``results`` (the dataclasses),
``errors`` (:class:`ClientError` and the :class:`ApiError` family) and ``checkpoint``
(:class:`CheckpointFile`); import from here.
"""

from nas_service.client.checkpoint import CheckpointFile, safetensors_metadata
from nas_service.client.connection import API_KEY_ENV, DEFAULT_URL, URL_ENV, Client
from nas_service.client.errors import (
    ApiError,
    AuthenticationError,
    BadRequest,
    ClientError,
    Conflict,
    FieldError,
    Forbidden,
    InvalidCheckpoint,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    ServiceUnreachable,
    Unauthorized,
    ValidationError,
    WaitTimeout,
    error_from_response,
)
from nas_service.client.results import (
    Adaptation,
    Architecture,
    Budget,
    Candidate,
    CheckpointLink,
    Constraints,
    Hypernetwork,
    Job,
    Progress,
    Ranking,
    Score,
    Task,
)

__all__ = [
    "API_KEY_ENV",
    "Adaptation",
    "DEFAULT_URL",
    "URL_ENV",
    "ApiError",
    "Architecture",
    "AuthenticationError",
    "BadRequest",
    "Budget",
    "Candidate",
    "CheckpointFile",
    "CheckpointLink",
    "Client",
    "ClientError",
    "Conflict",
    "Constraints",
    "FieldError",
    "Forbidden",
    "Hypernetwork",
    "InvalidCheckpoint",
    "Job",
    "NotFound",
    "PayloadTooLarge",
    "Progress",
    "Ranking",
    "RateLimited",
    "Score",
    "ServerError",
    "ServiceUnavailable",
    "ServiceUnreachable",
    "Task",
    "Unauthorized",
    "ValidationError",
    "WaitTimeout",
    "error_from_response",
    "safetensors_metadata",
]
