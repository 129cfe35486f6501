"""HTTP connections as ``nas-service serve`` accepts them: uvicorn's h11 protocol with a deadline
on reading each request's headers.

uvicorn closes an idle keep-alive connection after ``timeout_keep_alive`` seconds, but a
connection that sends part of a request line or of its headers and then stalls is not idle to
it, and stays open as long as the client likes: enough of them exhaust the server's sockets
(slowloris). :func:`http_protocol` arms a timer when a connection opens and whenever a new
request starts arriving, and cancels it once the request's headers are complete; when it fires,
the server answers ``408 Request Timeout`` and closes the connection. The body has its own
deadline in the app (:class:`nas_service.api.middleware.BodySizeLimit`), which can answer with a
problem document.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                     b"connection: close\r\ncontent-length: 41\r\n\r\n"
                     b"the request headers did not arrive in time")


def http_protocol(read_seconds: float) -> type[H11Protocol]:
    """The protocol class for ``uvicorn.run(..., http=...)``: h11 with a ``read_seconds``
    deadline on each request's line and headers."""

    class HeaderDeadlineProtocol(H11Protocol):
        header_seconds = read_seconds

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._header_deadline: asyncio.TimerHandle | None = None
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._header_deadline is None and self.conn.their_state is h11.IDLE:
                self._arm()  # the first bytes of the next request on a kept-alive connection
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()  # the headers are in: the app reads the body, or answered

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._disarm()  # idle now: uvicorn's keep-alive timeout governs

        def _arm(self) -> None:
            self._disarm()
            self._header_deadline = self.loop.call_later(self.header_seconds, self._too_slow)

        def _disarm(self) -> None:
            deadline: Any = getattr(self, "_header_deadline", None)
            if deadline is not None:
                deadline.cancel()
                self._header_deadline = None

        def _too_slow(self) -> None:
            self._header_deadline = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            if self.conn.trailing_data[0]:  # part of a request arrived: answer it
                self.transport.write(_TIMEOUT_RESPONSE)
            self.transport.close()

    return HeaderDeadlineProtocol
