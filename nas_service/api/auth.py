"""Optional API keys.

With ``NAS_API_KEYS`` empty, the API is open (the ``make run`` default; production refuses it
unless ``NAS_ALLOW_ANONYMOUS=true``, see :mod:`nas_service.settings`). With keys set, every
``/v1`` route requires one, as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; a request
without a valid key, or with any invalid one, gets a 401 problem. ``/healthz``, ``/readyz``,
``/metrics`` and the docs stay open.

Keys are kept only as SHA-256 digests and compared with :func:`hmac.compare_digest` against every
configured digest, so neither the comparison nor the number of keys checked depends on how much of
a guess was right.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from .errors import Problem

# auto_error=False: a missing key is our 401 problem, not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="An API key, as a bearer token")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class APIKeys:
    """The configured keys, as digests."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(_digest(k) for k in keys)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def accepts(self, key: str) -> bool:
        candidate = _digest(key)
        accepted = False
        for digest in self._digests:  # no early exit: the same work for every key
            accepted |= hmac.compare_digest(candidate, digest)
        return accepted


def require_api_key(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_header)],
) -> None:
    """The ``/v1`` router's dependency: passes when keys are off or a valid key was sent."""
    keys: APIKeys = request.app.state.service.api_keys
    if not keys.enabled:
        return
    offered = [k for k in (bearer.credentials if bearer else None, header_key) if k]
    # Every key sent must be valid: a wrong key is a 401 even beside a right one, so that a
    # client never believes a key works because another header carried a valid one.
    if not offered or not all(keys.accepts(k) for k in offered):
        raise Problem(401, "a valid API key is required: send 'Authorization: Bearer <key>' or "
                      "'X-API-Key: <key>'" if not offered else "the API key is not valid",
                      slug="unauthorized", headers={"WWW-Authenticate": "Bearer"})
