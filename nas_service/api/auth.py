"""Optional API keys.

With ``NAS_API_KEYS`` empty, the API is open (the ``make run`` default; production refuses it
unless ``NAS_ALLOW_ANONYMOUS=true``, see :mod:`nas_service.settings`). With keys set, every
``/v1`` route requires one, as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; a request
without a valid key, or with any invalid one, gets a 401 problem. ``/healthz``, ``/readyz``,
``/metrics`` and the docs stay open.

Credentials must be unambiguous: every credential header present counts, and each must carry a
valid key. An empty ``X-API-Key``, an ``Authorization`` header of another scheme or with nothing
after ``Bearer``, or a credential header sent twice is a 401, even beside a valid key: a client
must never believe a header works because another one carried the key.

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
    # The raw headers, not the parsed dependencies: those drop an empty X-API-Key, a non-Bearer
    # Authorization and all but one of repeated headers, which is how ambiguity would slip in.
    authorizations = request.headers.getlist("authorization")
    api_keys = request.headers.getlist("x-api-key")
    if not authorizations and not api_keys:
        raise _unauthorized("a valid API key is required: send 'Authorization: Bearer <key>' or "
                            "'X-API-Key: <key>'")
    if len(authorizations) > 1 or len(api_keys) > 1:
        raise _unauthorized("send one credential header of each kind at most")
    offered = [k.strip() for k in api_keys]
    for value in authorizations:
        scheme, _, credentials = value.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise _unauthorized("the Authorization header must be 'Bearer <key>'")
        offered.append(credentials.strip())
    if not all(offered):
        raise _unauthorized("an empty API key is not valid")
    if not all(keys.accepts(k) for k in offered):
        raise _unauthorized("the API key is not valid")


def _unauthorized(detail: str) -> Problem:
    return Problem(401, detail, slug="unauthorized", headers={"WWW-Authenticate": "Bearer"})
